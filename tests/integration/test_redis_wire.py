"""The lean asyncio Redis connection (``_internal.redis_wire``) and the worker driver over it.

Against a private ``redis-server`` started here with ``requirepass`` (never the shared one, so
SCRIPT FLUSH and CLIENT KILL touch nobody else): pipelined replies come back in order, error
replies become redis-py's exception types, AUTH/SELECT/CLIENT SETNAME on connect, a lost
connection fails every pending call with ``redis.ConnectionError`` and the next call connects
again, a silent server ends in ``redis.TimeoutError`` at the read deadline. Then the driver:
NOSCRIPT reloads, ``wake`` ends a wait at once, and the hot calls behave the same over the lean
connection and over redis.asyncio (``lean_connection: False``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server_support import RedisServer, free_port

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.redis import AsyncRedisTransport
from celeriac.transports.redis_commands import ClientCommands, LeanCommands, lean_endpoint
from celeriac.transports.redis_keys import Core

redis = pytest.importorskip("redis")
wire = pytest.importorskip("celeriac._internal.redis_wire")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

PASSWORD = "wire-s3cret"


class Server(RedisServer):
    """The private server: a TCP port and a unix socket, with a password."""

    def __init__(self, workdir: Path) -> None:
        self.sock = workdir / "redis.sock"
        super().__init__(
            workdir,
            *("--unixsocket", str(self.sock), "--unixsocketperm", "700"),
            *("--requirepass", PASSWORD),
        )

    def admin(self, db: int = 0) -> Any:
        return self.client(db)

    def url(self, db: int = 0, auth: str = f":{PASSWORD}@") -> str:
        return super().url(db, auth)

    def endpoint(self, **extra: Any) -> Any:
        return wire.Endpoint(port=self.port, password=PASSWORD, **extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("redis-wire"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _call(conn: Any, *commands: tuple[Any, ...], block: float = 0.0) -> list[Any]:
    result: list[Any] = await conn.execute(wire.pack(commands), len(commands), block=block)
    return result


# -- the connection ----------------------------------------------------------------------------
def test_pipelined_replies_come_back_in_order(server: Server) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint(db=1))
        try:
            replies = await _call(
                conn,
                ("DEL", "wire:n", "wire:l"),
                ("SET", "wire:k", "v"),
                ("GET", "wire:k"),
                ("INCRBY", "wire:n", 5),
                ("GET", "wire:missing"),
                ("RPUSH", "wire:l", b"a", "b", 3, 1.5),
                ("LRANGE", "wire:l", 0, -1),
            )
            assert replies[1:] == [b"OK", b"v", 5, None, 4, [b"a", b"b", b"3", b"1.5"]]
            # many callers at once share the connection: each gets its own reply
            got = await asyncio.gather(*[_call(conn, ("INCR", "wire:n")) for _ in range(300)])
            assert [r[0] for r in got] == list(range(6, 306))
            assert conn.client_id is not None
        finally:
            conn.close()

    _run(scenario())
    with server.admin(1) as admin:  # SELECT 1 on connect: the keys are in db 1, not 0
        assert admin.get("wire:n") == b"305"
    with server.admin(0) as admin:
        assert admin.get("wire:n") is None


def test_error_replies_are_redis_py_exceptions_in_place(server: Server) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint(db=2))
        try:
            ok, noscript, fine = await _call(
                conn, ("SET", "wire:s", "x"), ("EVALSHA", "0" * 40, 0), ("GET", "wire:s")
            )
            assert (ok, fine) == (b"OK", b"x")  # the replies around the error are in place
            assert isinstance(noscript, redis.exceptions.NoScriptError)
            [wrongtype] = await _call(conn, ("LPUSH", "wire:s", "y"))
            assert type(wrongtype) is redis.ResponseError
            assert "WRONGTYPE" in str(wrongtype)
            [syntax] = await _call(conn, ("NOSUCHCOMMAND",))
            assert type(syntax) is redis.ResponseError
            assert (await _call(conn, ("PING",))) == [b"PONG"]  # still in step
        finally:
            conn.close()

    _run(scenario())


def test_auth_select_and_client_name_on_connect(server: Server) -> None:
    async def scenario() -> int:
        conn = wire.Connection(server.endpoint(db=3, client_name="celeriac-wire-test"))
        try:
            await _call(conn, ("SET", "wire:auth", "yes"))
            assert conn.client_id is not None
            return conn.client_id
        finally:
            conn.close()

    client_id = _run(scenario())
    with server.admin(3) as admin:
        assert admin.get("wire:auth") == b"yes"
        assert all(c["id"] != str(client_id) for c in admin.client_list())  # closed

    async def unix_socket() -> list[Any]:
        conn = wire.Connection(wire.Endpoint(path=str(server.sock), password=PASSWORD, db=3))
        try:
            return await _call(conn, ("GET", "wire:auth"))
        finally:
            conn.close()

    assert _run(unix_socket()) == [b"yes"]

    async def bad_password() -> None:
        conn = wire.Connection(wire.Endpoint(port=server.port, password="nope"))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await _call(conn, ("PING",))

    _run(bad_password())

    async def no_password() -> None:
        conn = wire.Connection(wire.Endpoint(port=server.port))
        with pytest.raises(redis.exceptions.AuthenticationError):  # NOAUTH, on connect
            await _call(conn, ("GET", "x"))

    _run(no_password())


def test_client_name_is_visible_on_the_server(server: Server) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint(client_name="celeriac-wire-named"))
        try:
            await _call(conn, ("PING",))
            with server.admin() as admin:
                names = [c.get("name") for c in admin.client_list()]
            assert "celeriac-wire-named" in names
        finally:
            conn.close()

    _run(scenario())


def test_a_lost_connection_fails_pending_calls_and_the_next_call_reconnects(
    server: Server,
) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint(db=4))
        try:
            await _call(conn, ("DEL", "wire:empty"))
            first_id = conn.client_id
            # a wait and two calls behind it, all pending when the server drops the client
            blocked = asyncio.ensure_future(
                _call(conn, ("BLMOVE", "wire:empty", "wire:empty", "RIGHT", "RIGHT", 10), block=10)
            )
            behind = asyncio.ensure_future(_call(conn, ("PING",)))
            await asyncio.sleep(0.1)
            with server.admin() as admin:
                assert admin.client_kill_filter(_id=first_id) == 1
            for pending in (blocked, behind):
                with pytest.raises(redis.ConnectionError):
                    await asyncio.wait_for(pending, 5)
            assert await _call(conn, ("PING",)) == [b"PONG"]
            assert conn.client_id not in (None, first_id)
        finally:
            conn.close()

    _run(scenario())


def test_close_fails_pending_calls(server: Server) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint())
        await _call(conn, ("PING",))
        blocked = asyncio.ensure_future(_call(conn, ("BLPOP", "wire:never", 10), block=10))
        await asyncio.sleep(0.05)
        conn.close()
        with pytest.raises(redis.ConnectionError):
            await asyncio.wait_for(blocked, 5)

    _run(scenario())


def test_read_deadline_covers_the_block_and_fails_a_late_reply(server: Server) -> None:
    async def scenario() -> None:
        conn = wire.Connection(server.endpoint(timeout=0.3))
        try:
            start = time.monotonic()
            # a 1 s wait announced as such: its deadline is 1 s + 0.3 s, the nil reply is fine
            blocked = ("BLPOP", "wire:never", 1)
            assert await _call(conn, blocked, block=1.0) == [None]
            assert 0.9 < time.monotonic() - start < 5
            # the same wait not announced: later than the 0.3 s deadline
            start = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                await _call(conn, blocked)
            assert time.monotonic() - start < 0.9
            assert await _call(conn, ("PING",)) == [b"PONG"]  # a new connection
        finally:
            conn.close()

    _run(scenario())


def test_a_silent_server_times_out_connecting_and_reading() -> None:
    """A peer that accepts and never answers: the handshake's reply never comes."""

    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            await asyncio.sleep(30)

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            conn = wire.Connection(wire.Endpoint(port=port, connect_timeout=0.3, timeout=5))
            start = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                await _call(conn, ("PING",))
            assert time.monotonic() - start < 2
            refused = wire.Connection(wire.Endpoint(port=free_port(), connect_timeout=1))
            with pytest.raises(redis.ConnectionError):
                await _call(refused, ("PING",))
        finally:
            srv.close()

    _run(scenario())


# -- choosing the connection -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "options", "lean"),
    [
        ("redis://127.0.0.1:6379/9", {}, True),
        ("redis://u:p@h:1/2", {"client_name": "n", "socket_timeout": 2.5}, True),
        ("redis+socket:///tmp/r.sock?virtual_host=4", {}, True),
        ("redis://h/1", {"health_check_interval": 10, "max_connections": 5}, True),
        ("rediss://h/1", {}, False),
        ("sentinel://h:26379/0", {"master_name": "m"}, False),
        ("redis://h/1", {"ssl_ca_certs": "ca.pem"}, False),
        ("redis://h/1?socket_timeout=3", {}, False),
        ("redis://h/1", {"lean_connection": False}, False),
    ],
)
def test_which_urls_and_options_get_the_lean_connection(
    url: str, options: dict[str, Any], lean: bool
) -> None:
    transport = AsyncRedisTransport(url, options=options)
    assert isinstance(transport._commands, LeanCommands if lean else ClientCommands)


def test_without_hiredis_the_driver_keeps_redis_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "celeriac._internal.redis_wire", None)  # import fails
    transport = AsyncRedisTransport("redis://127.0.0.1:6379/9")
    assert isinstance(transport._commands, ClientCommands)


def test_the_endpoint_follows_the_url_and_options() -> None:
    core = Core("redis://bob:pw%40x@h:1234/2", 60.0, {})
    options = {"client_name": "n", "socket_timeout": 2.5, "socket_connect_timeout": 1.5}
    ep = lean_endpoint(core, options)
    assert ep is not None
    assert (ep.host, ep.port, ep.username, ep.password, ep.db) == ("h", 1234, "bob", "pw@x", 2)
    assert (ep.client_name, ep.timeout, ep.connect_timeout) == ("n", 2.5, 1.5)
    # no socket_timeout: the one redis-py's client gets (poll_interval + 4, at least 5 s)
    default = lean_endpoint(Core("redis+socket:///tmp/r.sock?virtual_host=4", 60.0, {}), {})
    assert default is not None
    assert (default.path, default.db, default.timeout) == ("/tmp/r.sock", 4, 5.0)


# -- the driver over it ------------------------------------------------------------------------
def _message(body: str) -> RawMessage:
    return RawMessage(body=body.encode(), headers={"id": body}, properties={})


def test_noscript_reloads_the_script_and_runs_the_call(server: Server) -> None:
    async def scenario() -> None:
        transport = AsyncRedisTransport(server.url(5), options={"global_keyprefix": "ns:"})
        try:
            await transport.publish_many([("q", _message(f"m{i}"), None) for i in range(3)])
            with server.admin() as admin:
                admin.script_flush()
            got = await transport.fetch(["q"], 1, 1.0)  # one take: ``_eval``
            assert [d.message.body for d in got] == [b"m0"]
            with server.admin() as admin:
                admin.script_flush()
            rest = await transport.fetch(["q"], 5, 1.0)
            with server.admin() as admin:
                admin.script_flush()
            await transport.ack(got + rest)  # ``_eval_many`` of one release call
            with server.admin() as admin:
                admin.script_flush()
            await asyncio.gather(transport.renew(rest), transport.qsize("q"))
            assert await transport.qsize("q") == 0
            with server.admin(5) as admin:
                assert admin.hlen("ns:unacked") == 0
        finally:
            await transport.close()

    _run(scenario())


def test_wake_ends_a_wait_at_once(server: Server) -> None:
    async def scenario() -> None:
        options = {"global_keyprefix": "wake:", "poll_interval": 20.0}
        transport = AsyncRedisTransport(server.url(6), options=options)
        try:
            assert await transport.fetch(["q"], 1, 0.05) == []
            fetching = asyncio.ensure_future(transport.fetch(["q"], 1, 20.0))
            deadline = time.monotonic() + 5
            while not isinstance(transport._commands, LeanCommands) or not (
                transport._commands.blocker.busy
            ):
                assert time.monotonic() < deadline, "the fetch never waited"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let BLMOVE reach the server
            start = time.monotonic()
            transport.wake()
            assert await asyncio.wait_for(fetching, 5) == []
            assert time.monotonic() - start < 1.0
        finally:
            await transport.close()

    _run(scenario())


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis.asyncio"])
def test_hot_calls_behave_the_same_on_both_paths(server: Server, lean: bool) -> None:
    prefix = f"hot-{lean}:"

    async def scenario() -> None:
        options = {"global_keyprefix": prefix, "lean_connection": lean, "poll_interval": 5.0}
        transport = AsyncRedisTransport(server.url(7), options=options)
        kind = LeanCommands if lean else ClientCommands
        assert isinstance(transport._commands, kind)
        try:
            waiting = asyncio.ensure_future(transport.fetch(["q"], 4, 5.0))
            await asyncio.sleep(0.1)
            items = [("q", _message(f"m{i}"), None) for i in range(4)]
            items.append(("q", _message("later"), time.time() + 0.3))
            await transport.publish_many(items)
            got = await waiting
            while len(got) < 4:
                got += await transport.fetch(["q"], 4 - len(got), 2.0)
            assert [d.message.body for d in got] == [b"m0", b"m1", b"m2", b"m3"]
            await transport.renew(got)
            await transport.requeue(got[3:])
            await transport.defer(got[2], time.time() + 60)
            await transport.dead_letter(got[1], "bad")
            keys = [f"{prefix}result-a"]
            assert await transport.ack_with_writes(got[:1], keys, ["", b"done"])
            [again] = await transport.fetch(["q"], 1, 2.0)
            assert (again.message.body, again.redelivered) == (b"m3", True)
            [later] = await transport.fetch(["q"], 1, 3.0)  # the eta message, when due
            assert later.message.body == b"later"
            await transport.ack([again, later])
            assert await transport.qsize("q") == 1  # the deferred one
        finally:
            await transport.close()

    _run(scenario())
    with server.admin(7) as admin:
        assert admin.get(f"{prefix}result-a") == b"done"
        assert admin.hlen(f"{prefix}celeriac.dead_letters") == 1
        assert admin.hlen(f"{prefix}unacked") == 0
        assert admin.zcard(f"{prefix}q\x06\x16celeriac.delayed") == 1  # the deferred one
