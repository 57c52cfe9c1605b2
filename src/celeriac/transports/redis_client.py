"""Connections of the Redis transport: redis-py clients and the reconnect policy.

Clients
    ``sync_client``/``async_client`` build a redis-py client (hiredis when installed) from the
    parsed URL (``redis_keys.parse_url``) and ``broker_transport_options``; ``sentinel://`` URLs
    go through ``redis.sentinel.Sentinel(...).master_for(master_name)``, which finds the master
    again after a failover. Connections are made on first use.

Reconnecting (``Link``)
    Two layers. redis-py retries each command ``max_retries`` times (3) on a dropped connection,
    reconnecting at once, which hides a stale pooled connection. Above it, every driver call
    runs through ``Link``: while the server is unreachable (refused, reset, timed out, or still
    loading its data after a restart) the call is tried again with kombu's backoff -
    ``interval_start`` (0.05 s) growing by ``interval_step`` (0.25 s) up to ``interval_max``
    (2 s) - for as long as the outage is younger than ``connect_retries_timeout`` (20 s,
    counted from the first failure this client saw). Then ``OperationalError`` is raised; once
    an outage is older than that, each call makes one attempt and raises at once. The first
    failure of an outage is logged (one WARNING), and so is the recovery (one WARNING with the
    outage's length). Authentication errors are raised at once, never retried.

What a retry may repeat
    A command whose reply is lost with the connection may have run. The take script is safe
    (its messages stay in ``unacked`` and come back when their lease runs out); ack, requeue,
    defer, dead-letter and renew are idempotent (lease-checked); a publish retried after its
    reply was lost is published twice (at-least-once, as kombu's publish retry).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff

from celeriac._internal.redis_link import FATAL, RETRYABLE, Link
from celeriac.exceptions import ImproperlyConfigured
from celeriac.transports.redis_keys import Core, client_kwargs


def link_for(core: Core, where: str) -> Link:
    """The ``Link`` of a transport client, from its parsed options."""
    o = core.opts
    return Link(
        where,
        start=o.interval_start,
        step=o.interval_step,
        cap=o.interval_max,
        window=o.connect_retries_timeout,
    )


def _retry_args(core: Core, retries: int | None) -> tuple[ExponentialBackoff, int]:
    count = core.opts.max_retries if retries is None else retries
    return ExponentialBackoff(cap=core.opts.interval_max, base=0.05), count


def _sentinel_args(core: Core) -> tuple[str, dict[str, Any]]:
    parsed = core.parsed
    if not core.opts.master_name:
        raise ImproperlyConfigured(
            "a sentinel:// broker URL needs the master_name transport option"
        )
    auth = {"db": parsed.db, "username": parsed.username, "password": parsed.password}
    return core.opts.master_name, {k: v for k, v in auth.items() if v is not None}


def sync_client(core: Core, options: dict[str, Any], *, retries: int | None = None) -> redis.Redis:
    """A redis-py client for the transport (``retries``: redis-py's own, per command)."""
    from redis.retry import Retry

    kwargs = client_kwargs(options, core.opts)
    kwargs["retry"] = Retry(*_retry_args(core, retries))
    if core.parsed.client_url is None:
        from redis.sentinel import Sentinel

        master, auth = _sentinel_args(core)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(core.parsed.sentinels), sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs
        )
        client: redis.Redis = sentinel.master_for(master, **auth)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(core.parsed.client_url, **kwargs)


def async_client(core: Core, options: dict[str, Any]) -> aioredis.Redis:
    """The redis.asyncio client of the worker's driver."""
    from redis.asyncio.retry import Retry

    kwargs = client_kwargs(options, core.opts)
    kwargs["retry"] = Retry(*_retry_args(core, None))
    if core.parsed.client_url is None:
        from redis.asyncio.sentinel import Sentinel

        master, auth = _sentinel_args(core)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(core.parsed.sentinels), sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs
        )
        client: aioredis.Redis = sentinel.master_for(master, **auth)
        return client
    return aioredis.Redis.from_url(core.parsed.client_url, **kwargs)


__all__ = ["FATAL", "RETRYABLE", "Link", "async_client", "link_for", "sync_client"]
