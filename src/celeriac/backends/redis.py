"""Redis result store, as Celery's Redis result backend writes it.

``RedisStore`` (sync, redis-py: clients, and the worker's fallback) and ``AsyncRedisStore``
(redis.asyncio: the worker's ``AsyncResultBackend`` writes through it on its event loop;
registered in ``celeriac.backends.urls.ASYNC_STORES``) are two views of the same data.

URLs
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
    ``redis+socket:///path/redis.sock[?virtual_host=db]``, and
    ``sentinel://[:password@]host:port[;sentinel://host2:port2][/db]`` with the ``master_name``
    option (and ``sentinel_kwargs``).

Options (``result_backend_transport_options``)
    ``global_keyprefix`` (on every key and channel, as Celery 5.7 applies it: followed by
    ``_`` unless it ends with one of ``:_-.``; see ``celery_result_prefix``), ``socket_timeout``,
    ``socket_connect_timeout``, ``socket_keepalive``, ``retry_on_timeout``, ``max_connections``,
    ``health_check_interval``, ``client_name``, ``username``/``password``; reconnecting, at the
    top level or in ``retry_policy``: ``max_retries`` (3, redis-py's per command),
    ``interval_start`` (0.05 s), ``interval_step`` (0.25 s), ``interval_max`` (2 s),
    ``connect_retries_timeout`` (20 s).

Keys and writes (spec §5.1)
    One STRING per key (``celery-task-meta-<id>``, ``celery-taskset-meta-<id>``, counters).
    Each write is ``SET <key> <value> PX <expires>`` and ``PUBLISH <key> <value>`` in one atomic
    step, as Celery's ``MULTI; SETEX; PUBLISH; EXEC``: the pub/sub channel is named like the
    key, which is what Celery clients blocked in ``.get()`` subscribe to. ``set_many`` does all
    its writes with one script call (``SET_PUBLISH``: atomic, one round trip and one reply -
    a MULTI would cost two replies per record, which dominates the async client's time).
    Expiry is Redis's own (``cleanup`` has nothing to do). ``delete`` is a plain DEL (no
    PUBLISH: Celery clients would fail to decode an empty message).

Chord joins (spec §5.5, Celery 5.7's keys)
    ``<key>.j`` ZSET of entries scored by ``group_index``, ``.d`` SET of ``<task_id>:<index>``
    already counted, ``.s`` size (set by the client), ``.t`` adjustment, ``.c`` claim token then
    ``done``. ``join_add_many`` runs ``JOIN_ADD`` (one EVALSHA per add, pipelined): stop if
    done; add once; count; refresh the TTLs; claim with ``SET NX EX`` when the count reaches
    ``.s + .t`` (or at once for a new failure: ``claim_now``). ``JOIN_FINISH`` deletes
    ``.j .t .s .d`` and sets ``.c = done`` for the claim's holder. Celery 5.7 and 5.3 workers
    count the same members, so a mixed fleet agrees on when a chord is complete.

Waiting
    ``wait_for_change`` SUBSCRIBEs to the key's channel, then GETs the key (a write after the
    GET is published on a channel already subscribed: never missed), then wakes on the key's
    message and takes the value from it. The sync store keeps one subscribed connection per
    thread (``redis_watch.Watcher``): a raw RESP3 connection where the URL allows, sending
    UNSUBSCRIBE (the last key) + SUBSCRIBE + GET in one write (one round trip), else redis-py's
    ``PubSub``. It ``watches``: ``ResultBackend.wait_for`` begins with ``wait_for_change``
    rather than a GET of its own. The async store opens one ``PubSub`` per wait. Deletes and
    expiry publish nothing, so the key is also re-read at most every second.

Reconnecting
    As the Redis transport: redis-py retries a command on a dropped connection, and above that
    every call is tried again with kombu's backoff (``interval_start`` growing by
    ``interval_step`` up to ``interval_max``) while the outage is younger than
    ``connect_retries_timeout``; then ``OperationalError``. Each outage is logged once when it
    starts and once when it ends. A ``wait_for_change`` whose deadline passes during an outage
    returns ``previous`` (nothing seen to change). Writes are idempotent (SET), except ``incr``:
    a retry after a reply lost with the connection may count twice.

Guarantees
    Every write is atomic with its notification. Errors from redis-py are raised as
    ``OperationalError``. Connections are made on first use and are fork-safe (redis-py pools).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff

from celeriac._internal.redis_link import Link
from celeriac.backends.base import AsyncKeyValueStore, KeyValueStore
from celeriac.backends.joins import JoinAdd, JoinState
from celeriac.backends.redis_watch import Watcher
from celeriac.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLIENT_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "retry_on_timeout",
    "max_connections",
    "health_check_interval",
    "client_name",
    "username",
    "password",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)

#: longest wait between two re-reads in ``wait_for_change`` (deletes and expiry publish nothing)
RECHECK_SECONDS = 1.0

#: ``set_many`` in one atomic step with one reply: per key ``SET key value [PX ms]`` and
#: ``PUBLISH key value``. KEYS: the keys. ARGV: per key its expiry in ms ("" = none), value.
SET_PUBLISH = r"""
for i, key in ipairs(KEYS) do
  local px, value = ARGV[2 * i - 1], ARGV[2 * i]
  if px == '' then
    redis.call('SET', key, value)
  else
    redis.call('SET', key, value, 'PX', px)
  end
  redis.call('PUBLISH', key, value)
end
return #KEYS
"""
#: a chord join (see the module docstring). KEYS: .j .t .s .d <key> .c. ARGV: member, entry,
#: score, expiry in s ("" = none), claim seconds, token, claim now ("1"/"0").
#: Returns {count (-1: done), total (-1: no size yet), claimed (1/0)}.
JOIN_ADD = r"""
local claim = redis.call('GET', KEYS[6])
if claim == 'done' then return {-1, -1, 0} end
local added = redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0
if added then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('SADD', KEYS[4], ARGV[1])
end
local count = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')
if ARGV[4] ~= '' then
  for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
local size = redis.call('GET', KEYS[3])
if not size then return {count, -1, 0} end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
if count >= total or (ARGV[7] == '1' and added) then
  if claim == ARGV[6] then return {count, total, 1} end
  if redis.call('SET', KEYS[6], ARGV[6], 'NX', 'EX', ARGV[5]) then return {count, total, 1} end
end
return {count, total, 0}
"""
#: KEYS: .c .j .t .s .d. ARGV: token, seconds "done" is kept. 1 when finished by the holder.
JOIN_FINISH = r"""
local claim = redis.call('GET', KEYS[1])
if claim ~= ARGV[1] and claim ~= 'done' then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1
"""
#: lost connections (retried); authentication errors are ConnectionErrors no retry can fix


def celery_result_prefix(value: Any) -> str:
    """What Celery puts before its result keys for ``global_keyprefix`` = ``value``.

    Celery 5.7 adds ``_`` unless the prefix already ends with one of ``:_-.`` (celery#9080)
    (``myapp`` -> ``myapp_celery-task-meta-<id>``, ``myapp:`` -> ``myapp:celery-task-meta-<id>``);
    Celery 5.3 always adds ``_``. Both agree on a prefix that does not end with a separator.
    """
    prefix = str(value or "")
    if prefix and prefix[-1] not in ":_-.":
        prefix += "_"
    return prefix


def _as_bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _expiry_ms(expires: float | None) -> int | None:
    return None if expires is None else max(1, round(expires * 1000))


def _set_publish_args(
    prefix: str, items: Sequence[tuple[str, bytes, float | None]]
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``SET_PUBLISH`` for ``items``."""
    keys: list[str] = []
    args: list[Any] = []
    for key, value, expires in items:
        keys.append(prefix + key)
        args += (_expiry_ms(expires) or "", value)
    return keys, args


def _join_add_args(prefix: str, add: JoinAdd, expires: float | None, claim: float) -> Any:
    """KEYS and ARGV of ``JOIN_ADD``."""
    key = prefix + add.key
    keys = [f"{key}.j", f"{key}.t", f"{key}.s", f"{key}.d", key, f"{key}.c"]
    score = "+inf" if add.score == float("inf") else repr(float(add.score))
    ttl = "" if expires is None or expires <= 0 else str(max(1, round(expires)))
    args = [add.member, add.value, score, ttl, str(max(1, round(claim))), add.token]
    return keys, [*args, "1" if add.claim_now else "0"]


def _join_state(reply: Any) -> JoinState:
    count, total, claimed = (int(x) for x in reply)
    return JoinState(count, None if total < 0 else total, bool(claimed))


def _join_finish_keys(prefix: str, key: str) -> list[str]:
    full = prefix + key
    return [f"{full}.c", f"{full}.j", f"{full}.t", f"{full}.s", f"{full}.d"]


def _policy(options: dict[str, Any]) -> dict[str, Any]:
    return {**options, **dict(options.get("retry_policy") or {})}


# -- clients -----------------------------------------------------------------------------------
def _unix_url(url: str) -> str:
    """kombu's ``redis+socket:///path?virtual_host=N`` as redis-py's ``unix:///path?db=N``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    db = query.pop("virtual_host", query.pop("db", "0")) or "0"
    auth = f"{parts.username or ''}:{parts.password}@" if parts.password is not None else ""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"unix://{auth}{parts.path}?db={db}{extra}"


def _sentinel_spec(
    url: str, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """(sentinel nodes, master name, master auth) of a ``sentinel://`` URL."""
    master = options.get("master_name")
    if not master:
        raise ImproperlyConfigured("a sentinel:// result_backend needs the master_name option")
    nodes: list[tuple[str, int]] = []
    auth: dict[str, Any] = {}
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.hostname:
            nodes.append((parts.hostname, parts.port or 26379))
        if parts.password is not None:
            auth.setdefault("password", unquote(parts.password))
        if parts.path.strip("/"):
            auth["db"] = int(parts.path.strip("/"))
    return nodes, str(master), auth


def _client_spec(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], int]:
    """(scheme kind "sentinel"/"url", client kwargs, redis-py retries) for ``url``."""
    kwargs = {k: options[k] for k in _CLIENT_OPTIONS if k in options}
    retries = _policy(options).get("max_retries")
    scheme = url.partition("://")[0].lower()
    if scheme not in ("sentinel", "redis", "rediss", "unix", "redis+socket", "socket"):
        raise ImproperlyConfigured(f"not a Redis URL scheme: {scheme!r}")
    kind = "sentinel" if scheme == "sentinel" else "url"
    return kind, kwargs, 3 if retries is None else int(retries)


def _backoff(options: dict[str, Any]) -> ExponentialBackoff:
    return ExponentialBackoff(cap=float(_policy(options).get("interval_max", 2.0)), base=0.05)


def _plain_url(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    return _unix_url(url) if scheme in ("redis+socket", "socket") else url


def make_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A redis-py client for a Celery-style Redis URL and transport options."""
    from redis.retry import Retry

    kind, kwargs, retries = _client_spec(url, options)
    kwargs["retry"] = Retry(_backoff(options), retries)
    if kind == "sentinel":
        from redis.sentinel import Sentinel

        nodes, master, auth = _sentinel_spec(url, options)
        sentinel = Sentinel(nodes, sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs)  # type: ignore[no-untyped-call]
        client: redis.Redis = sentinel.master_for(master, **auth)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(_plain_url(url), **kwargs)


def make_async_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    """The redis.asyncio twin of ``make_client``."""
    from redis.asyncio.retry import Retry

    kind, kwargs, retries = _client_spec(url, options)
    kwargs["retry"] = Retry(_backoff(options), retries)
    if kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        nodes, master, auth = _sentinel_spec(url, options)
        sentinel = Sentinel(nodes, sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs)  # type: ignore[no-untyped-call]
        client: aioredis.Redis = sentinel.master_for(master, **auth)
        return client
    return aioredis.Redis.from_url(_plain_url(url), **kwargs)


# -- the sync store ----------------------------------------------------------------------------
class RedisStore(KeyValueStore):
    """``KeyValueStore`` on Redis: SET+PUBLISH in one MULTI, pub/sub waits (see module doc)."""

    schemes = ("redis", "rediss", "redis+socket", "sentinel")
    watches = True

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.prefix = celery_result_prefix(self.options.get("global_keyprefix"))
        self._client = make_client(url, self.options)
        self._link = Link.from_options(self.describe(), self.options)
        self._set_publish = self._client.register_script(SET_PUBLISH)
        self._join_add_script = self._client.register_script(JOIN_ADD)
        self._join_finish_script = self._client.register_script(JOIN_FINISH)
        self._watcher = Watcher(self._client, recheck=RECHECK_SECONDS)

    def _run(self, what: str, func: Callable[..., T], *args: Any) -> T:
        while True:
            try:
                result = func(*args)
            except redis.RedisError as exc:
                time.sleep(self._link.lost(what, exc, time.monotonic()))
                continue
            self._link.ok(time.monotonic())
            return result

    def _key(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        return _as_bytes(self._run("get", self._client.get, self._key(key)))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[Any] = self._run("mget", self._client.mget, [self._key(k) for k in keys])
        return [_as_bytes(v) for v in values]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.set_many([(key, value, expires)])

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if items:
            self._run("set", self._set_many, items)

    def _set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        keys, args = _set_publish_args(self.prefix, items)
        self._set_publish(keys=keys, args=args)

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            self._run("delete", self._client.delete, *[self._key(k) for k in keys])

    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        def incr() -> int:
            full = self._key(key)
            pipe = self._client.pipeline(transaction=True)
            pipe.incrby(full, amount)
            if expires is not None:
                pipe.pexpire(full, _expiry_ms(expires) or 1)
            return int(pipe.execute()[0])

        return self._run("incr", incr)

    def wait_for_change(self, key: str, previous: bytes | None, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        full = self._key(key)
        while True:
            try:
                value = self._watch(full, previous, deadline)
            except redis.RedisError as exc:
                delay = self._link.lost("wait_for_change", exc, time.monotonic())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return previous
                time.sleep(min(delay, remaining))
                continue
            self._link.ok(time.monotonic())
            return value

    def _watch(self, full: str, previous: bytes | None, deadline: float) -> bytes | None:
        return self._watcher.watch(full, previous, deadline)

    # -- chord joins (added for the canvas; see the module docstring) --------------------------
    def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        def run() -> list[JoinState]:
            pipe = self._client.pipeline(transaction=False)
            for add in adds:
                keys, args = _join_add_args(self.prefix, add, expires, claim_seconds)
                self._join_add_script(keys=keys, args=args, client=pipe)
            return [_join_state(reply) for reply in pipe.execute()]

        return self._run("join", run) if adds else []

    def join_values(self, key: str) -> list[bytes]:
        values: list[Any] = self._run("join", self._client.zrange, self._key(f"{key}.j"), 0, -1)
        return [v.encode() if isinstance(v, str) else v for v in values]

    def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        keys = _join_finish_keys(self.prefix, key)
        args = [token, str(max(1, round(done_expires)))]
        return bool(self._run("join", lambda: self._join_finish_script(keys=keys, args=args)))

    def close(self) -> None:
        self._watcher.close()
        with contextlib.suppress(redis.RedisError):
            self._client.close()


# -- the async store ---------------------------------------------------------------------------
class AsyncRedisStore(AsyncKeyValueStore):
    """``AsyncKeyValueStore`` on redis.asyncio: the same keys, writes and waits as
    ``RedisStore``, for the worker's event loop (see the module docstring)."""

    schemes = RedisStore.schemes
    supports_joins = True

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.prefix = celery_result_prefix(self.options.get("global_keyprefix"))
        self._client = make_async_client(url, self.options)
        self._link = Link.from_options(self.describe(), self.options)
        self._set_publish = self._client.register_script(SET_PUBLISH)
        self._join_add_script = self._client.register_script(JOIN_ADD)
        self._join_finish_script = self._client.register_script(JOIN_FINISH)

    async def _run(self, what: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        while True:
            try:
                result = await func(*args)
            except redis.RedisError as exc:
                await asyncio.sleep(self._link.lost(what, exc, time.monotonic()))
                continue
            self._link.ok(time.monotonic())
            return result

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> bytes | None:
        return _as_bytes(await self._run("get", self._client.get, self._key(key)))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        full = [self._key(k) for k in keys]
        values: list[Any] = await self._run("mget", self._client.mget, full)
        return [_as_bytes(v) for v in values]

    async def set(self, key: str, value: bytes, expires: float | None) -> None:
        await self.set_many([(key, value, expires)])

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if items:
            await self._run("set", self._set_many, items)

    async def _set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        keys, args = _set_publish_args(self.prefix, items)
        await self._set_publish(keys=keys, args=args)

    def set_publish_args(
        self, items: Sequence[tuple[str, bytes, float | None]]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``SET_PUBLISH`` for ``items``: per key ``SET key value [PX ms]``
        and ``PUBLISH key value``; ARGV holds the expiry in ms ("" = none) and the value of
        each key. For a driver that performs these writes in its own script (the worker's
        Redis broker, with its acks: ``celeriac.worker.joint``)."""
        return _set_publish_args(self.prefix, items)

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._run("delete", self._client.delete, *[self._key(k) for k in keys])

    async def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        async def incr() -> int:
            full = self._key(key)
            pipe = self._client.pipeline(transaction=True)
            pipe.incrby(full, amount)
            if expires is not None:
                pipe.pexpire(full, _expiry_ms(expires) or 1)
            return int((await pipe.execute())[0])

        return await self._run("incr", incr)

    async def wait_for_change(
        self, key: str, previous: bytes | None, timeout: float
    ) -> bytes | None:
        deadline = time.monotonic() + timeout
        full = self._key(key)
        while True:
            try:
                value = await self._watch(full, previous, deadline)
            except redis.RedisError as exc:
                delay = self._link.lost("wait_for_change", exc, time.monotonic())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return previous
                await asyncio.sleep(min(delay, remaining))
                continue
            self._link.ok(time.monotonic())
            return value

    async def _watch(self, full: str, previous: bytes | None, deadline: float) -> bytes | None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(full)
            step = 0.05
            while True:
                value = _as_bytes(await self._client.get(full))
                remaining = deadline - time.monotonic()
                if value != previous or remaining <= 0:
                    return value
                if await pubsub.get_message(timeout=min(remaining, step)) is None:
                    step = min(step * 2, RECHECK_SECONDS)
        finally:
            with contextlib.suppress(redis.RedisError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- chord joins (added for the canvas; see the module docstring) --------------------------
    async def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        async def run() -> list[JoinState]:
            pipe = self._client.pipeline(transaction=False)
            for add in adds:
                keys, args = _join_add_args(self.prefix, add, expires, claim_seconds)
                await self._join_add_script(keys=keys, args=args, client=pipe)
            return [_join_state(reply) for reply in await pipe.execute()]

        return await self._run("join", run) if adds else []

    async def join_values(self, key: str) -> list[bytes]:
        full = self._key(f"{key}.j")
        values: list[Any] = await self._run("join", self._client.zrange, full, 0, -1)
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        keys = _join_finish_keys(self.prefix, key)
        args = [token, str(max(1, round(done_expires)))]

        async def run() -> Any:
            return await self._join_finish_script(keys=keys, args=args)

        return bool(await self._run("join", run))

    async def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self._client.aclose()
