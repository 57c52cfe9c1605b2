"""The idle consumer's wake-up on Redis: the take rides behind the blocking wait.

When nothing is ready, ``fetch`` sends ``BLMOVE`` and the take script in one pipeline: the
message that ends the wait is taken by that script, with no second round trip, and its delivery
time is the server's clock when the wait ended (not the client's when it began waiting).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
DELAY = 0.4


def _message(body: str) -> RawMessage:
    return RawMessage(body=body.encode(), headers={"id": body}, properties={})


def _publish_later(prefix: str) -> None:
    def later() -> None:
        time.sleep(DELAY)  # the fetch is blocked by now; its deadline is far away
        publisher = RedisTransport(URL, options={"global_keyprefix": prefix})
        publisher.publish("q", _message("late"))
        publisher.close()

    threading.Thread(target=later, daemon=True).start()


def _delivered_at(client: Any, prefix: str, tag: str) -> float:
    score = client.zscore(f"{prefix}unacked_index", tag)
    assert score is not None
    return float(score)


def test_sync_wake_takes_in_the_same_round_trip(client: Any, prefix: str) -> None:
    transport = RedisTransport(URL, options={"global_keyprefix": prefix, "poll_interval": 10.0})
    evals: list[Any] = []
    plain_eval = transport._eval
    transport._eval = lambda call: evals.append(call[0]) or plain_eval(call)  # type: ignore[method-assign]
    try:
        start = time.time()
        _publish_later(prefix)
        [got] = transport.fetch(["q"], 1, 10.0)
        assert got.message.body == b"late"
        # the first take only: the second one went with the wait
        assert [name for name in evals if name == "take"] == ["take"]
        assert _delivered_at(client, prefix, got.tag) >= start + DELAY - 0.05
    finally:
        transport.close()


def test_async_wake_takes_in_the_same_round_trip(client: Any, prefix: str) -> None:
    async def main() -> None:
        options = {"global_keyprefix": prefix, "poll_interval": 10.0}
        transport = AsyncRedisTransport(URL, options=options)
        evals: list[Any] = []
        plain_eval = transport._eval

        async def counted(call: Any) -> Any:
            evals.append(call[0])
            return await plain_eval(call)

        transport._eval = counted  # type: ignore[method-assign]
        try:
            start = time.time()
            _publish_later(prefix)
            [got] = await transport.fetch(["q"], 1, 10.0)
            assert got.message.body == b"late"
            assert [name for name in evals if name == "take"] == ["take"]
            assert _delivered_at(client, prefix, got.tag) >= start + DELAY - 0.05
        finally:
            await transport.close()

    asyncio.run(main())
