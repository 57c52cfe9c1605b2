"""Fan-out on Redis pub/sub, as kombu does it: our publishes reach a raw kombu-style PSUBSCRIBE,
and kombu-style publishes (Celery's own bytes, from the control-ping fixture) reach our
subscribers.

Redis URL from ``CELERIAC_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/9``); skipped when
unreachable, failed under ``CI=true``. Channels carry the test's own ``global_keyprefix``, so
nothing else on the server sees these messages (pub/sub channels are server-wide).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage, loads_envelope
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport
from celeriac.transports.redis_keys import parse_url

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
DB = parse_url(URL).db
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "celery-wire"
SOON = 5.0


def _ping_request() -> str:
    path = FIXTURES / "control-ping.json"
    if not path.exists():
        pytest.skip(f"fixture {path} not found")
    request: dict[str, Any] = json.loads(path.read_text())["request"]
    assert request["redis_command"] == "PUBLISH" and request["channel"] == "/0.celery.pidbox"
    raw: str = request["raw"]
    return raw


@pytest.fixture
def transport(prefix: str) -> Iterator[RedisTransport]:
    opened = RedisTransport(URL, options={"global_keyprefix": prefix})
    yield opened
    opened.close()


def raw_pubsub(client: Any, pattern: str) -> Any:
    """A kombu-style subscriber: PSUBSCRIBE ``pattern``, confirmed."""
    pubsub = client.pubsub()
    pubsub.psubscribe(pattern)
    deadline = time.monotonic() + SOON
    while (m := pubsub.get_message(timeout=0.1)) is None or m["type"] != "psubscribe":
        assert time.monotonic() < deadline, "PSUBSCRIBE not confirmed"
    return pubsub


def next_data(pubsub: Any) -> dict[str, Any]:
    deadline = time.monotonic() + SOON
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            return dict(message)
    raise AssertionError("no message within 5 s")


def untagged(message: RawMessage) -> RawMessage:
    properties = {k: v for k, v in message.properties.items() if k != "delivery_tag"}
    return RawMessage(
        message.body, message.content_type, message.content_encoding, message.headers, properties
    )


def test_our_publish_is_kombus_envelope_on_kombus_channel(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    raw = _ping_request()
    captured = loads_envelope(raw)
    pubsub = raw_pubsub(client, f"{prefix}/{DB}.celery.pidbox")
    try:
        receivers = transport.publish_fanout("celery.pidbox", "", captured.message)
        message = next_data(pubsub)
    finally:
        pubsub.close()
    assert receivers == 1
    assert message["channel"] == f"{prefix}/{DB}.celery.pidbox".encode()
    sent = json.loads(message["data"])
    expected = json.loads(raw)
    # a fresh delivery tag per publish, as kombu; everything else byte for byte
    assert sent["properties"].pop("delivery_tag") != expected["properties"].pop("delivery_tag")
    assert sent == expected
    assert list(sent) == list(expected) and list(sent["properties"]) == list(expected["properties"])


def test_celerys_publish_reaches_our_subscriber(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    raw = _ping_request()
    with transport.subscribe_fanout("celery.pidbox") as subscription:
        assert subscription.pattern == f"{prefix}/{DB}.celery.pidbox"  # kombu's PSUBSCRIBE
        assert client.publish(f"{prefix}/{DB}.celery.pidbox", raw) == 1
        received = subscription.get(SOON)
    assert received == loads_envelope(raw).message
    assert received is not None
    assert json.loads(received.body)["method"] == "ping"
    assert received.properties["delivery_info"] == {"exchange": "celery.pidbox", "routing_key": ""}


def test_routing_key_patterns_as_kombu(transport: RedisTransport, client: Any, prefix: str) -> None:
    event = RawMessage(body=b'{"type": "task-sent"}', headers={"hostname": "w1"})
    with (
        transport.subscribe_fanout("celeryev", "#") as everything,
        transport.subscribe_fanout("celeryev", "worker.#") as workers,
        transport.subscribe_fanout("celeryev") as bare,
    ):
        assert everything.pattern == f"{prefix}/{DB}.celeryev/*"
        assert workers.pattern == f"{prefix}/{DB}.celeryev/worker.*"
        pubsub = raw_pubsub(client, f"{prefix}/{DB}.celeryev/*")
        try:
            assert transport.publish_fanout("celeryev", "task.sent", event) == 2
            raw = next_data(pubsub)
        finally:
            pubsub.close()
        assert raw["channel"] == f"{prefix}/{DB}.celeryev/task.sent".encode()
        got = everything.get(SOON)
        assert got is not None and got.body == event.body
        assert got.properties["delivery_info"]["routing_key"] == "task.sent"
        assert workers.get(0.2) is None and bare.get(0) is None
        transport.publish_fanout("celeryev", "worker.heartbeat", event)
        assert workers.get(SOON) is not None and everything.get(SOON) is not None


def test_garbage_on_a_channel_is_skipped(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    raw = _ping_request()
    with transport.subscribe_fanout("celery.pidbox") as subscription:
        client.publish(f"{prefix}/{DB}.celery.pidbox", b"not json")
        client.publish(f"{prefix}/{DB}.celery.pidbox", raw)
        received = subscription.get(SOON)
    assert received == loads_envelope(raw).message


def test_async_fanout_both_ways(client: Any, prefix: str) -> None:
    raw = _ping_request()
    captured = loads_envelope(raw).message

    async def scenario() -> None:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        try:
            subscription = await transport.subscribe_fanout("celery.pidbox")
            async with subscription:
                assert client.publish(f"{prefix}/{DB}.celery.pidbox", raw) == 1
                assert await transport.publish_fanout("celery.pidbox", "", captured) == 1
                received = []
                async for message in subscription:
                    received.append(message)
                    if len(received) == 2:
                        break
            # the first as Celery sent it; ours the same but for a fresh delivery tag
            assert received[0] == captured
            assert untagged(received[1]) == untagged(captured)
        finally:
            await transport.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
