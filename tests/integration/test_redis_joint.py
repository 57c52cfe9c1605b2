"""Results and acks in one script call (``celeriac.worker.joint``) against a real Redis.

The Redis transport's ``ack_with_writes`` (``WRITE_ACK``) and the Redis store's
``set_publish_args``, as the worker's batch uses them when backend and broker are one Redis.
Same server and key-prefix rules as the other Redis integration tests.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from celeriac.backends.base import AsyncResultBackend, ResultBackend
from celeriac.backends.redis import AsyncRedisStore, RedisStore
from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.result_meta import ResultMeta
from celeriac.transports.redis import AsyncRedisTransport
from celeriac.worker.joint import JointWriter

pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def _message(task_id: str) -> RawMessage:
    return RawMessage(
        body=b"[[], {}, {}]", headers={"id": task_id}, properties={"correlation_id": task_id}
    )


def _backend(prefix: str, url: str = URL) -> AsyncResultBackend:
    sync = ResultBackend(RedisStore(url, options={"global_keyprefix": prefix}))
    return AsyncResultBackend(sync, AsyncRedisStore(url, options={"global_keyprefix": prefix}))


def test_results_are_written_and_published_then_their_messages_acked(
    prefix: str, client: Any
) -> None:
    async def main() -> tuple[int, Any]:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        backend = _backend(prefix)
        writer = JointWriter.find(transport, backend)
        assert writer is not None
        pubsub = client.pubsub()
        pubsub.subscribe(f"{prefix}celery-task-meta-t1")  # the prefix ends with ":"
        pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        try:
            await transport.publish_many([("q", _message("t1"), None)])
            [delivery] = await transport.fetch(["q"], 5, 1.0)
            meta = ResultMeta(task_id="t1", status="SUCCESS", result=5, children=[])
            assert await writer.store_and_ack([meta], [delivery])
            return await transport.qsize("q"), pubsub.get_message(timeout=1.0)
        finally:
            pubsub.close()
            await transport.close()
            assert backend.store is not None
            await backend.store.close()

    size, published = asyncio.run(main())
    assert size == 0  # acked: not in a list, not held
    assert client.hlen(f"{prefix}unacked") == 0
    assert client.pttl(f"{prefix}celery-task-meta-t1") > 0
    record = client.get(f"{prefix}celery-task-meta-t1")
    assert b'"status": "SUCCESS"' in record and b'"result": 5' in record
    assert published is not None and published["data"] == record


def test_a_write_that_fails_acks_nothing(prefix: str, client: Any) -> None:
    async def main() -> Any:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        try:
            await transport.publish_many([("q", _message("t2"), None)])
            [delivery] = await transport.fetch(["q"], 5, 1.0)
            key = f"{prefix}celery-task-meta-t2"
            with pytest.raises(Exception, match="expire"):
                await transport.ack_with_writes([delivery], [key], ["-5", b"{}"])  # bad PX
            return delivery
        finally:
            await transport.close()

    delivery = asyncio.run(main())
    assert client.hexists(f"{prefix}unacked", delivery.tag)  # still held: it comes back
    assert client.get(f"{prefix}celery-task-meta-t2") is None


def test_only_one_redis_server_and_db_is_joint(prefix: str) -> None:
    async def main() -> list[bool]:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        other_db = URL.rsplit("/", 1)[0] + "/8"
        found = []
        for backend in (_backend(prefix), _backend(prefix, other_db)):
            found.append(JointWriter.find(transport, backend) is not None)
            assert backend.store is not None
            await backend.store.close()
        found.append(JointWriter.find(transport, None) is not None)
        await transport.close()
        return found

    assert asyncio.run(main()) == [True, False, False]


def test_acks_across_takes_and_queues_skip_a_lease_no_longer_held(prefix: str, client: Any) -> None:
    async def main() -> list[Any]:
        transport = AsyncRedisTransport(URL, options={"global_keyprefix": prefix})
        try:
            items = [(q, _message(f"{q}-{i}"), None) for q in ("q1", "q2") for i in range(3)]
            await transport.publish_many(items)
            first = await transport.fetch(["q1", "q2"], 4, 1.0)  # one take, one lease
            second = await transport.fetch(["q1", "q2"], 4, 1.0)  # another
            got = first + second
            assert len(got) == 6
            stale = got[0]
            held_key = f"{prefix}{stale.queue}\x06\x16celeriac.held"
            client.hset(held_key, stale.tag, "someone-else")  # its lease ran out, re-handed
            key = f"{prefix}celery-task-meta-x"
            assert await transport.ack_with_writes(got, [key], ["", b"{}"])
            return got
        finally:
            await transport.close()

    got = asyncio.run(main())
    assert client.get(f"{prefix}celery-task-meta-x") == b"{}"
    assert [t.decode() for t in client.hkeys(f"{prefix}unacked")] == [got[0].tag]
