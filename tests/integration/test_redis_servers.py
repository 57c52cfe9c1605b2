"""The Redis drivers against redis-servers these tests start and stop themselves.

- Reconnect: a server with ``appendonly yes`` on a free port is stopped (SIGTERM, by PID) and
  started again on the same port and directory while clients publish, fetch, acknowledge and
  write results; they must recover on their own within 10 s, log the outage once, lose nothing
  acknowledged and drop nothing unacknowledged.
- Sentinel: a sentinel (``redis-server --sentinel``) monitors a private master with one
  replica; the drivers connect through ``sentinel://``, and when the master dies they follow
  the sentinel's failover to the promoted replica on their own.

Skipped when ``redis-server`` is not installed (failed under ``CI=true``). The shared Redis on
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server_support import RedisServer, wait_until
from thread_support import Background

from celeriac.backends.base import AsyncResultBackend, ResultBackend
from celeriac.backends.redis import AsyncRedisStore, RedisStore
from celeriac.exceptions import OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

#: a restarted server must be in use again within this many seconds
RECOVERY = 10.0
#: fast reconnect backoff for the tests (the defaults allow 2 s between attempts)
FAST = {"interval_start": 0.02, "interval_step": 0.1, "interval_max": 0.3}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    instance = RedisServer(tmp_path, appendonly=True)
    instance.start()
    yield instance
    instance.stop()


def msg(body: str) -> RawMessage:
    return RawMessage(body=body.encode(), headers={"id": body}, properties={})


def bodies(deliveries: list[Delivery]) -> list[str]:
    return [d.message.body.decode() for d in deliveries]


def outage_logs(caplog: pytest.LogCaptureFixture, where: str) -> tuple[int, int]:
    """(how many "unreachable", how many "reachable again") warnings name ``where``."""
    texts = [r.getMessage() for r in caplog.records if where in r.getMessage()]
    return (
        sum("unreachable" in t for t in texts),
        sum("reachable again" in t for t in texts),
    )


# -- reconnect: the sync driver ----------------------------------------------------------------
def test_sync_transport_rides_out_a_restart(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac")
    options = {"visibility_timeout": 60.0, **FAST}
    consumer = RedisTransport(server.url(), options=options)
    producer_url = f"redis://localhost:{server.port}/0"  # told apart in the logs
    producer = RedisTransport(producer_url, options=options)
    try:
        producer.publish_many([("q", msg(f"a{i}"), None) for i in range(6)])
        held = consumer.fetch(["q"], 4, 2.0)
        assert bodies(held) == ["a0", "a1", "a2", "a3"]
        consumer.ack(held[:2])  # acknowledged before the restart: never seen again
        late, kept = held[2], held[3]  # acked during the outage / held across it

        server.stop()
        acking = Background(lambda: consumer.ack([late]))
        publishing = Background(
            lambda: producer.publish_many([("q", msg(f"b{i}"), None) for i in range(5)])
        )
        fetching = Background(lambda: consumer.fetch(["q"], 10, 0.2))
        wait_until(lambda: producer._link.down_since is not None, 5, "producer saw the outage")
        wait_until(lambda: consumer._link.down_since is not None, 5, "consumer saw the outage")
        restarted = time.monotonic()
        server.start()
        for call in (acking, publishing, fetching):
            call.result(RECOVERY)
            assert call.ended is not None and call.ended - restarted < RECOVERY

        got = fetching.value
        while len(got) < 7 and time.monotonic() - restarted < RECOVERY:
            got += consumer.fetch(["q"], 10, 0.5)
        # everything not acknowledged is delivered exactly once, nothing acknowledged returns
        assert sorted(bodies(got)) == ["a4", "a5", "b0", "b1", "b2", "b3", "b4"]
        assert not any(d.redelivered for d in got)
        with server.client() as raw:  # what is held survived the restart, and only that
            assert set(raw.hkeys("unacked")) == {kept.tag.encode(), *(d.tag.encode() for d in got)}
        consumer.ack([kept, *got])
        assert consumer.qsize("q") == 0
        with server.client() as raw:
            assert raw.hlen("unacked") == 0 and raw.zcard("unacked_index") == 0
    finally:
        consumer.close()
        producer.close()
    assert outage_logs(caplog, f"127.0.0.1:{server.port}") == (1, 1)
    assert outage_logs(caplog, f"localhost:{server.port}") == (1, 1)


def test_sync_store_rides_out_a_restart(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac")
    store = RedisStore(server.url(), options=dict(FAST))
    try:
        store.set("before", b"1", 60)
        server.stop()
        writing = Background(lambda: store.set_many([("during", b"2", 60)]))
        wait_until(lambda: store._link.down_since is not None, 5, "store saw the outage")
        restarted = time.monotonic()
        server.start()
        writing.result(RECOVERY)
        assert writing.ended is not None and writing.ended - restarted < RECOVERY
        assert store.mget(["before", "during"]) == [b"1", b"2"]
    finally:
        store.close()
    assert outage_logs(caplog, f"127.0.0.1:{server.port}") == (1, 1)


def test_an_outage_longer_than_connect_retries_timeout_raises(server: RedisServer) -> None:
    transport = RedisTransport(server.url(), options={**FAST, "connect_retries_timeout": 0.5})
    try:
        transport.publish("q", msg("x"))
        server.stop()
        start = time.monotonic()
        with pytest.raises(OperationalError, match="unreachable for"):
            transport.publish("q", msg("y"))
        assert time.monotonic() - start < 5.0
        with pytest.raises(OperationalError):  # the outage is old: one attempt, then raise
            transport.qsize("q")
        server.start()
        assert transport.qsize("q") == 1  # "x" survived the restart; the failed "y" was not sent
    finally:
        transport.close()


# -- reconnect: the async driver and the async result store -------------------------------------
async def _await_down(link: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while link.down_since is None:
        assert time.monotonic() < deadline, "the outage was not noticed"
        await asyncio.sleep(0.01)


def test_async_transport_and_store_ride_out_a_restart(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac")
    options = {"visibility_timeout": 60.0, **FAST}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = AsyncRedisTransport(server.url(), options=options)
        sync_store = RedisStore(server.url())
        backend = AsyncResultBackend(ResultBackend(sync_store))
        assert isinstance(backend.store, AsyncRedisStore)
        try:
            await transport.publish_many([("q", msg(f"a{i}"), None) for i in range(3)])
            held = await transport.fetch(["q"], 2, 2.0)
            await transport.ack(held[:1])
            await loop.run_in_executor(None, server.stop)
            fetching = asyncio.ensure_future(transport.fetch(["q"], 10, 0.2))
            acking = asyncio.ensure_future(transport.ack(held[1:]))
            incr = asyncio.ensure_future(backend.incr("counter", 5))
            await _await_down(transport._link)
            assert isinstance(backend.store, AsyncRedisStore)
            await _await_down(backend.store._link)
            restarted = time.monotonic()
            await loop.run_in_executor(None, server.start)
            got = await asyncio.wait_for(fetching, RECOVERY)
            await asyncio.wait_for(acking, RECOVERY)
            assert await asyncio.wait_for(incr, RECOVERY) == 5
            assert time.monotonic() - restarted < RECOVERY
            assert bodies(got) == ["a2"]
            await transport.ack(got)
            assert await transport.qsize("q") == 0
        finally:
            await transport.close()
            await backend.close()
            sync_store.close()

    asyncio.run(scenario())
    assert outage_logs(caplog, f"127.0.0.1:{server.port}") == (2, 2)  # transport and store


# -- sentinel ----------------------------------------------------------------------------------
class Sentinel(RedisServer):
    """``redis-server --sentinel`` monitoring ``master`` as ``mymaster`` (quorum 1)."""

    def __init__(self, workdir: Path, master: RedisServer) -> None:
        super().__init__(workdir)
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 5000\n"
        )

    def command(self) -> list[str]:
        return [self.binary, str(self.config), "--sentinel"]

    def answers(self) -> bool:
        return self.master_port() is not None

    def master_port(self) -> int | None:
        try:
            with self.client(socket_connect_timeout=0.2) as client:
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def replicas_known(self) -> int:
        with self.client() as client:
            return len(client.execute_command("SENTINEL", "replicas", "mymaster"))


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, Sentinel]]:
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    started: list[RedisServer] = []  # each made once the one before listens: distinct ports

    def start(server: RedisServer) -> None:
        started.append(server)
        server.start()

    try:
        master = RedisServer(
            tmp_path / "master", "--repl-diskless-sync-delay", "0", appendonly=True
        )
        start(master)
        replica_of = ("--replicaof", "127.0.0.1", str(master.port))
        replica = RedisServer(tmp_path / "replica", *replica_of, appendonly=True)
        start(replica)
        sentinel = Sentinel(tmp_path, master)
        start(sentinel)
        yield master, replica, sentinel
    finally:
        for server in reversed(started):
            server.stop()


def test_sentinel_url_and_failover(
    sentinel_setup: tuple[RedisServer, RedisServer, Sentinel],
) -> None:
    master, replica, sentinel = sentinel_setup
    url = f"sentinel://127.0.0.1:{sentinel.port}/0"
    options = {"master_name": "mymaster", "visibility_timeout": 60.0, **FAST}
    transport = RedisTransport(url, options=options)
    store = RedisStore(url, options=options)
    try:
        transport.publish_many([("q", msg("a"), None), ("q", msg("b"), None)])
        [first] = transport.fetch(["q"], 1, 2.0)
        store.set("k", b"v", 60)
        with master.client() as raw:  # it went to the master the sentinel named
            assert raw.llen("q") == 1 and raw.get("k") == b"v"
            wait_until(lambda: sentinel.replicas_known() == 1, 10, "sentinel knows the replica")
            assert raw.execute_command("WAIT", 1, 5000) == 1  # the replica has every write

        master.stop()  # the master dies: the sentinel promotes the replica
        died = time.monotonic()
        acking = Background(lambda: transport.ack([first]))
        reading = Background(lambda: store.get("k"))
        acking.result(RECOVERY)
        assert reading.result(RECOVERY) == b"v"
        assert sentinel.master_port() == replica.port
        assert time.monotonic() - died < RECOVERY
        [second] = transport.fetch(["q"], 1, 5.0)
        assert second.message.body == b"b"
        transport.ack([second])
        with replica.client() as raw:  # settled on the new master
            assert raw.hlen("unacked") == 0 and raw.llen("q") == 0
    finally:
        transport.close()
        store.close()

    async def through_asyncio() -> None:
        transport = AsyncRedisTransport(url, options=options)
        store = AsyncRedisStore(url, options=options)
        try:
            await transport.publish("q", msg("c"))
            got = await transport.fetch(["q"], 1, 2.0)
            await transport.ack(got)
            await store.set("k2", b"w", 60)
            assert (bodies(got), await store.get("k2")) == (["c"], b"w")
        finally:
            await transport.close()
            await store.close()

    asyncio.run(through_asyncio())
