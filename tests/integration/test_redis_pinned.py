"""Single publishes on the Redis broker's kept connection (``_internal.redis_pinned``).

Against the test Redis, both kinds of kept connection (``raw``: a ``RawConnection``, taken for
plain TCP/Unix URLs; ``pool``: a connection of redis-py's pool, for the rest): a killed
connection is replaced without losing or doubling the message, threads that find it busy
publish through the pool, and a forked child uses its own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac._internal.redis_pinned import PinnedConnection
from celeriac._internal.redis_raw import RawConnection
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.redis import RedisTransport

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture(params=["raw", "pool"])
def transport(prefix: str, client: Any, request: pytest.FixtureRequest) -> Iterator[RedisTransport]:
    name = f"pinned-{uuid.uuid4().hex[:8]}"
    t = RedisTransport(URL, options={"global_keyprefix": prefix, "client_name": name})
    if request.param == "pool":
        t._pinned = PinnedConnection(t._client, raw=False)
    t.publish("q", msg("declare"))  # declares the queue: later publishes take the one-command path
    kept_id(t)
    assert isinstance(t._pinned._conn, RawConnection) == (request.param == "raw")
    yield t
    t.close()


def msg(body: str) -> RawMessage:
    return RawMessage(body=body.encode(), headers={"id": body}, properties={})


def bodies(client: Any, prefix: str) -> list[str]:
    import json

    raw = client.lrange(f"{prefix}q", 0, -1)
    return sorted(json.loads(item)["headers"]["id"] for item in raw)


def connections_named(client: Any, name: str) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("name") == name]


def kept_id(transport: RedisTransport) -> int:
    """The server's id of the kept connection (asked on that connection)."""
    return int(transport._pinned.execute("CLIENT", "ID"))


def test_a_killed_connection_is_replaced_and_the_message_sent_once(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    transport.publish("q", msg("before"))
    name = transport.options["client_name"]
    pinned = kept_id(transport)
    assert str(pinned) in [c["id"] for c in connections_named(client, name)]
    client.client_kill_filter(_id=pinned)
    transport.publish("q", msg("after"))
    assert bodies(client, prefix) == ["after", "before", "declare"]
    assert str(pinned) not in [c["id"] for c in connections_named(client, name)]


def test_threads_publishing_at_once_all_get_through(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    start = threading.Barrier(6)

    def send(n: int) -> None:
        start.wait()
        for i in range(100):
            transport.publish("q", msg(f"t{n}-{i:03}"))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = sorted(["declare"] + [f"t{n}-{i:03}" for n in range(6) for i in range(100)])
    assert bodies(client, prefix) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_publishes_on_its_own_connection(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    transport.publish("q", msg("parent-1"))
    name = transport.options["client_name"]
    before = kept_id(transport)
    pid = os.fork()
    if pid == 0:  # the child: publish, then leave without running the parent's cleanup
        code = 0
        try:
            transport.publish("q", msg("child"))
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    transport.publish("q", msg("parent-2"))
    assert bodies(client, prefix) == ["child", "declare", "parent-1", "parent-2"]
    assert kept_id(transport) == before
    assert str(before) in [c["id"] for c in connections_named(client, name)]


def test_close_never_waits_for_a_busy_or_inherited_lock(transport: RedisTransport) -> None:
    transport.publish("q", msg("kept"))
    pinned = transport._pinned
    assert pinned._lock.acquire()  # as if a publish were in flight, or the lock had leaked
    try:
        pid = os.fork() if hasattr(os, "fork") else None
        if pid == 0:  # the child inherits the held lock: closing must not block
            try:
                transport.close()
            finally:
                os._exit(0)
        closer = threading.Thread(target=pinned.close)
        closer.start()
        closer.join(5)
        assert not closer.is_alive()
        if pid is not None:
            deadline = time.monotonic() + 10
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
                assert time.monotonic() < deadline, "the forked child's close() hung"
                time.sleep(0.01)
            assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        pinned._lock.release()


def test_publish_many_goes_on_the_kept_connection_and_survives_its_kill(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    pinned = kept_id(transport)
    client.client_kill_filter(_id=pinned)
    transport.publish_many([("q", msg(f"bulk-{i:04}"), None) for i in range(1500)])
    expected = sorted(["declare"] + [f"bulk-{i:04}" for i in range(1500)])
    assert bodies(client, prefix) == expected
    assert kept_id(transport) != pinned  # a fresh kept connection took the batch


def test_execute_many_on_a_busy_connection_uses_the_pool(transport: RedisTransport) -> None:
    pinned = transport._pinned
    kept = kept_id(transport)
    assert pinned._lock.acquire()  # as if another thread were publishing on it
    try:
        replies = pinned.execute_many([("CLIENT", "ID"), ("PING",)])
    finally:
        pinned._lock.release()
    assert int(replies[0]) != kept
    assert replies[1] in (b"PONG", "PONG", True)


def test_execute_many_keeps_an_error_reply_in_its_place(
    transport: RedisTransport, client: Any, prefix: str
) -> None:
    import redis

    key = f"{prefix}not-a-list"
    client.set(key, "x")
    replies = transport._pinned.execute_many(
        [("LPUSH", key, "a"), ("LPUSH", f"{prefix}list", *["v"] * 100), ("LLEN", f"{prefix}list")]
    )
    assert isinstance(replies[0], redis.ResponseError)
    assert "WRONGTYPE" in str(replies[0])
    assert replies[1:] == [100, 100]
    assert kept_id(transport)  # still in step: the next command gets its own reply
