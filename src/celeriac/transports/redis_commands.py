"""How the worker's Redis driver sends its commands: the lean connection, or redis.asyncio.

``AsyncRedisTransport`` writes its logic once (scripts, arguments and parsing come from
``redis_keys.Core``) over one small interface, ``Commands``: ``pipe(commands, block=)`` sends
commands in one round trip and returns their replies, an error reply standing in its place as
the redis-py exception (NOSCRIPT is ``NoScriptError``), and raises ``redis.ConnectionError`` /
``redis.TimeoutError`` when the connection fails, for the ``Link`` policy. ``block`` is how
long a blocking command among them may wait.

``LeanCommands`` (``_internal.redis_wire``): two connections, ``main`` for every call and
``blocker`` for the fetch's wait (``BLMOVE`` with the take behind it), so acks and renewals never
queue behind a wait; ``unblock`` (from ``wake``) sends ``CLIENT UNBLOCK`` for the blocker on
``main``, so a wait ends at once.

``ClientCommands``: the same on redis.asyncio's client (pooled connections, redis-py's own
retries); the wait ends at its timeout (at most ``poll_interval``).

``commands_for`` picks the lean one unless the URL or the options need redis-py: Sentinel,
``rediss://`` (TLS), query options in the URL other than the db, ``ssl_*`` options, no hiredis,
or ``lean_connection: False`` in ``broker_transport_options``. ``health_check_interval``,
``retry_on_timeout`` and ``max_connections`` do not concern it: a connection the server closed
is noticed by the loop at once (the next call connects again), a timeout is retried by ``Link``,
and it holds two connections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import redis
import redis.asyncio as aioredis

from celeriac.transports.redis_keys import CLIENT_OPTIONS, Core, client_kwargs

if TYPE_CHECKING:
    from celeriac._internal.redis_endpoint import Endpoint

#: options the lean connection reads or has no use for (any other: redis.asyncio)
LEAN_OPTIONS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "client_name",
        "username",
        "password",
        "retry_on_timeout",
        "health_check_interval",
        "max_connections",
    }
)


class Commands(Protocol):
    """What ``AsyncRedisTransport`` sends its commands through (module docstring)."""

    async def pipe(self, commands: Sequence[Sequence[Any]], *, block: float = 0.0) -> list[Any]: ...

    def unblock(self) -> None: ...

    async def close(self) -> None: ...


class ClientCommands:
    """``Commands`` on redis.asyncio's client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def pipe(self, commands: Sequence[Sequence[Any]], *, block: float = 0.0) -> list[Any]:
        if len(commands) == 1:
            try:
                return [await self._client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
            except redis.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    def unblock(self) -> None:
        """Nothing: the wait ends at its timeout."""

    async def close(self) -> None:
        """Nothing: the transport closes the client."""


class LeanCommands:
    """``Commands`` on two lean connections (module docstring)."""

    def __init__(self, endpoint: Endpoint) -> None:
        from celeriac._internal.redis_wire import Connection

        self.main = Connection(endpoint)
        self.blocker = Connection(endpoint)

    async def pipe(self, commands: Sequence[Sequence[Any]], *, block: float = 0.0) -> list[Any]:
        from celeriac._internal.resp import pack

        conn = self.blocker if block else self.main
        return await conn.execute(pack(commands), len(commands), block=block)

    def unblock(self) -> None:
        from celeriac._internal.resp import pack

        client_id = self.blocker.client_id
        if client_id is not None and self.blocker.busy:
            self.main.send_nowait(pack([("CLIENT", "UNBLOCK", client_id)]), 1)

    async def close(self) -> None:
        self.main.close()
        self.blocker.close()


def lean_endpoint(core: Core, options: Mapping[str, Any]) -> Endpoint | None:
    """The lean connection's ``Endpoint`` for this URL and these options, or None when they
    need redis-py (see the module docstring)."""
    url = core.parsed.client_url
    if url is None or not options.get("lean_connection", True):
        return None
    try:
        import celeriac._internal.redis_wire  # noqa: F401  (needs hiredis)
    except ImportError:
        return None
    from celeriac._internal.redis_endpoint import Endpoint

    if not {k for k in options if k in CLIENT_OPTIONS} <= LEAN_OPTIONS:
        return None
    # the socket_timeout redis-py's client gets: the lean connection's read deadline
    return Endpoint.from_url(url, client_kwargs(options, core.opts))


def commands_for(core: Core, options: Mapping[str, Any], client: aioredis.Redis) -> Commands:
    """The lean connection when it can serve the URL and options, else ``client``'s."""
    endpoint = lean_endpoint(core, options)
    if endpoint is None:
        return ClientCommands(client)
    return LeanCommands(endpoint)


__all__ = ["ClientCommands", "Commands", "LeanCommands", "commands_for", "lean_endpoint"]
