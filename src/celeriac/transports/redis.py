"""Redis broker drivers, wire-compatible with kombu's Redis transport (Celery 5).

``RedisTransport`` (sync, redis-py; clients and CLI) and ``AsyncRedisTransport`` (redis.asyncio;
the worker) share the pure logic in ``redis_keys`` (layout, options, URLs, envelope handling)
and the Lua scripts in ``redis_scripts``.

URLs
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; ``ssl_cert_reqs``,
    ``ssl_ca_certs``, ... in the query or the options), ``redis+socket:///path/redis.sock
    [?virtual_host=db]``, and ``sentinel://[:password@]host:port[;sentinel://host2:port2][/db]``
    with the ``master_name`` option (and ``sentinel_kwargs``), as Celery accepts them.

Options (``broker_transport_options``, Celery's names)
    ``visibility_timeout`` (the lease; default ``lease_seconds``, 60 s), ``priority_steps``
    (``[0, 3, 6, 9]``), ``sep`` (``"\\x06\\x16"``), ``global_keyprefix`` (on every key),
    ``unacked_key``/``unacked_index_key``/``unacked_mutex_key``, ``unacked_mutex_expire`` (30 s),
    ``unacked_restore_interval`` (min(5 s, lease/4)), ``socket_timeout``,
    ``socket_connect_timeout``, ``socket_keepalive``, ``retry_on_timeout``, ``max_connections``,
    ``health_check_interval``, ``client_name``, ``username``/``password``, ``retry_policy``
    (``max_retries``, ``interval_max``: reconnect with exponential backoff), and ours:
    ``poll_interval`` (1 s, see Waiting), ``delayed_batch`` (100).

Key layout (``<p>`` = ``global_keyprefix``, ``SEP`` = ``\\x06\\x16``)
    ``<p><queue>``, ``<p><queue>SEP<step>``   kombu's ready lists, one per priority step > 0;
        LPUSH to publish, RPOP (right end) to consume; step 0 first.
    ``<p>unacked`` (hash tag -> JSON ``[envelope, exchange, routing_key]``), ``<p>unacked_index``
        (zset tag -> delivery time, Unix seconds), ``<p>unacked_mutex`` (lock): kombu's, same
        shapes, so Celery workers on the same Redis see and restore our deliveries and we theirs.
    ``<p>_kombu.binding.<queue>`` / ``_kombu.binding_permanent.<queue>``: member
        ``<queue>SEPSEP<queue>``, added once per queue per process, as a Celery worker declares.
    ``<p><queue>SEPceleriac.delayed``  zset ``<step index>|<envelope>`` -> eta (Unix seconds).
    ``<p><queue>SEPceleriac.held``     hash tag -> lease id of the consumer holding it.
    ``<p>celeriac.deliveries``         hash tag -> delivery count (removed on ack/dead letter).
    ``<p>celeriac.dead_letters``       hash id -> JSON ``{id, queue, step, reason, failed_at,
        delivery_count, envelope}``; ``<p>celeriac.dead_letters.index`` zset id -> failed_at.
    ``<p>celeriac.queues``             set of queue names this library published to/consumed.

Guarantees
    *Taking is atomic*: one Lua script (``TAKE``) moves due delayed messages to their lists and
    then RPOPs up to ``limit`` messages across all the lists (priority step first, then queues in
    the order given), writing ``unacked``, ``unacked_index``, ``held`` and ``deliveries`` in the
    same atomic step. A message is always either in a list, in a delayed zset, or in
    ``unacked``: a SIGKILL or a lost connection at any instant loses nothing (a reply lost in
    flight leaves the messages in ``unacked``; they come back when the lease runs out).
    *Waiting* never pops: when nothing is ready, ``fetch`` blocks in ``BLMOVE L L RIGHT RIGHT``
    on the base list of one watched queue (rotating between calls): it moves the tail element to
    where it was, so the list is unchanged and the command only serves as "wake me when ``L`` is
    non-empty"; then the take script runs again. Other lists (other priority steps and queues)
    and due delayed messages are checked at least every ``poll_interval`` (and exactly when the
    next delayed message is due). Redis has no multi-key non-popping wait; a pop-based wait
    (kombu's BRPOP) is what loses messages on a crash.
    *Leases*: ``renew`` sets the ``unacked_index`` score to now, i.e. a fresh kombu delivery time,
    so no consumer (Celery's included) restores a message whose holder is alive. At fetch time,
    at most every ``unacked_restore_interval``, a consumer takes ``unacked_mutex`` (SET NX PX) and
    restores deliveries older than ``visibility_timeout`` with kombu's redelivered flags (RPUSH:
    next out), each by a compare-and-swap script, so concurrent restorers never double a message.
    Ack/requeue/defer/dead_letter/renew act only while the consumer's lease id in ``held`` still
    matches: settling an expired delivery that was handed out again is a no-op.
    In a mixed fleet use the same ``visibility_timeout`` as the Celery workers: they do not renew.

Redis Cluster plan
    Celery cannot use Redis Cluster: kombu's global ``unacked``/``unacked_index`` keys live in
    one slot while queue lists hash anywhere, so no script or MULTI can span them. Every script
    here already declares all its keys in ``KEYS``; to run on a cluster we would (1) put every
    key of a queue in one slot with a hash tag: ``{<queue>}``, ``{<queue>}SEP<step>``,
    ``{<queue>}SEPceleriac.delayed``/``held``; (2) make the bookkeeping per queue -
    ``{<queue>}SEPunacked``, ``{<queue>}SEPunacked_index``, ``{<queue>}SEPdeliveries`` - which
    is not kombu's layout (a cluster deployment is Celeriac-only; an option ``cluster=True``);
    (3) run the take script once per queue (one slot per call) and wait per slot; (4) keep dead
    letters per queue and build ``dead_letters()`` by asking each; (5) restore per queue under a
    per-queue mutex; (6) results need nothing: one key per record, PUBLISH is cluster-wide (or
    SPUBLISH with shard channels on Redis 7).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celeriac.exceptions import ImproperlyConfigured, OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports import redis_scripts as scripts
from celeriac.transports.base import (
    DEFAULT_LEASE_SECONDS,
    AsyncTransport,
    DeadLetter,
    Delivery,
    Transport,
)
from celeriac.transports.redis_keys import (
    Call,
    Core,
    ParsedURL,
    block_seconds,
    client_kwargs,
    parse_dead_letter,
    text,
)

logger = logging.getLogger(__name__)


class _Health:
    """Translates redis-py errors to ``OperationalError``; logs a lost/restored link once."""

    def __init__(self) -> None:
        self.down = False

    @contextlib.contextmanager
    def errors(self, what: str, url: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            if not self.down and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self.down = True
                logger.warning("Redis %s unreachable (%s); retrying with backoff", url, exc)
            raise OperationalError(f"Redis {what} failed on {url}: {exc}") from exc
        if self.down:
            self.down = False
            logger.warning("Redis %s reachable again", url)


def _client_kwargs(core: Core, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    kwargs = client_kwargs(options, core.opts)
    kwargs["retry"] = retry
    return kwargs


def _sentinel_args(core: Core, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    parsed: ParsedURL = core.parsed
    if not core.opts.master_name:
        raise ImproperlyConfigured(
            "a sentinel:// broker URL needs the master_name transport option"
        )
    auth = {"db": parsed.db, "username": parsed.username, "password": parsed.password}
    return core.opts.master_name, {k: v for k, v in auth.items() if v is not None}


def _sync_client(core: Core, options: dict[str, Any]) -> redis.Redis:
    retry = Retry(ExponentialBackoff(cap=core.opts.interval_max, base=0.05), core.opts.max_retries)
    kwargs = _client_kwargs(core, options, retry)
    if core.parsed.client_url is None:
        from redis.sentinel import Sentinel

        master, auth = _sentinel_args(core, options)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(core.parsed.sentinels), sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs
        )
        client: redis.Redis = sentinel.master_for(master, **auth)  # type: ignore[no-untyped-call]
        return client
    return redis.Redis.from_url(core.parsed.client_url, **kwargs)


def _async_client(core: Core, options: dict[str, Any]) -> aioredis.Redis:
    from redis.asyncio.retry import Retry as AsyncRetry

    retry = AsyncRetry(
        ExponentialBackoff(cap=core.opts.interval_max, base=0.05), core.opts.max_retries
    )
    kwargs = _client_kwargs(core, options, retry)
    if core.parsed.client_url is None:
        from redis.asyncio.sentinel import Sentinel

        master, auth = _sentinel_args(core, options)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(core.parsed.sentinels), sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs
        )
        client: aioredis.Redis = sentinel.master_for(master, **auth)
        return client
    return aioredis.Redis.from_url(core.parsed.client_url, **kwargs)


def _raise_errors(results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


class RedisTransport(Transport):
    """The synchronous Redis driver (see the module docstring)."""

    schemes = ("redis", "rediss", "redis+socket", "sentinel")

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(url, lease_seconds=lease_seconds, options=options)
        self._core = Core(url, lease_seconds, self.options)
        self._health = _Health()
        self.lease_seconds = self._core.opts.visibility_timeout
        self._client = _sync_client(self._core, self.options)
        self._blocker: redis.Redis | None = None
        self._blocker_id: int | None = None
        self._woken = False

    # -- script plumbing ---------------------------------------------------------------------
    def _eval(self, call: Call) -> Any:
        name, keys, args = call
        try:
            return self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(scripts.SCRIPTS[name])
            return self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)

    def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        results: list[Any] = pipe.execute(raise_on_error=False)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if missing:
            for name in {calls[i][0] for i in missing}:
                self._client.script_load(scripts.SCRIPTS[name])
            for i, result in zip(
                missing, self._eval_many([calls[i] for i in missing]), strict=True
            ):
                results[i] = result
        return _raise_errors(results)

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return self._health.errors(what, self.describe())

    # -- producer side -----------------------------------------------------------------------
    def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        self.publish_many([(queue, message, eta)])

    def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if not items:
            return
        now, new = time.time(), set()
        pipe = self._client.pipeline(transaction=False)
        for queue, message, eta in items:
            for key, member in [] if queue in new else self._core.declarations(queue):
                pipe.sadd(key, member)
            new.add(queue)
            key, payload, score = self._core.encode(queue, message, eta, now)
            if score is None:
                pipe.lpush(key, payload)
            else:
                pipe.zadd(key, {payload: score})
        with self._errors("publish"):
            pipe.execute()
        self._core.declared |= new

    # -- consumer side -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        queues = list(queues)
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        self._woken = False
        while True:
            with self._errors("fetch"):
                if self._core.restore_due(time.monotonic()):
                    self.restore_expired()
                got, next_due = self._take(queues, limit)
                remaining = deadline - time.monotonic()
                if got or remaining <= 0 or self._woken:
                    return got
                self._wait(queues, block_seconds(remaining, self._core.opts, next_due, time.time()))

    def _take(self, queues: list[str], limit: int) -> tuple[list[Delivery], float | None]:
        call, lease = self._core.take_call(queues, limit)
        good, bad, next_due = self._core.parse_take(queues, self._eval(call), lease)
        self._eval_many([c for d, why in bad for c in self._core.dead_calls(d, why)])
        return good, next_due

    def _wait(self, queues: list[str], seconds: float) -> None:
        watch = self._core.keys.list_key(queues[self._core.rotation % len(queues)])
        self._core.rotation += 1
        if self._blocker is None:
            pool = self._client.connection_pool
            self._blocker = redis.Redis(connection_pool=pool, single_connection_client=True)
            self._blocker_id = int(self._blocker.client_id())
        self._blocker.blmove(watch, watch, seconds, "RIGHT", "RIGHT")  # type: ignore[arg-type]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._errors("ack"):
            self._eval_many(self._core.ack_calls(deliveries))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        with self._errors("requeue"):
            self._eval_many(self._core.requeue_calls(deliveries))

    def defer(self, delivery: Delivery, eta: float) -> None:
        with self._errors("defer"):
            self._eval_many(self._core.defer_calls(delivery, eta))

    def renew(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with self._errors("renew"):
                self._eval_many(self._core.renew_calls(deliveries))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._errors("dead_letter"):
            self._eval_many(self._core.dead_calls(delivery, reason))

    def restore_expired(self) -> int:
        """Restore deliveries older than ``visibility_timeout`` (under ``unacked_mutex``)."""
        k, token = self._core.keys, uuid.uuid4().hex
        expire = int(self._core.opts.unacked_mutex_expire * 1000)
        if not self._client.set(k.unacked_mutex, token, nx=True, px=expire):
            return 0
        try:
            # newest first, each RPUSHed to the consuming end: the oldest is the next out (kombu)
            cutoff = time.time() - self._core.opts.visibility_timeout
            tags: list[Any] = self._client.zrevrangebyscore(
                k.unacked_index, cutoff, 0, start=0, num=1000
            )
            if not tags:
                return 0
            values = self._client.hmget(k.unacked, tags)
            bindings = {
                ex: list(self._client.smembers(k.binding_key(ex)))
                for ex in self._core.exchanges_of(values)
            }
            calls = self._core.restore_calls(tags, values, bindings, cutoff)
            restored = sum(int(r) for r in self._eval_many(calls))
            if restored:
                logger.info("restored %d deliveries whose lease ran out", restored)
            return restored
        finally:
            self._eval(("unlock", [k.unacked_mutex], [token]))

    # -- management --------------------------------------------------------------------------
    def qsize(self, queue: str) -> int:
        with self._errors("qsize"):
            return int(self._eval(self._core.qsize_call(queue)))

    def purge(self, queue: str) -> int:
        with self._errors("purge"):
            return int(self._eval(self._core.purge_call(queue)))

    def queues(self) -> list[str]:
        with self._errors("queues"):
            names = sorted(text(n) for n in self._client.smembers(self._core.keys.queue_names))
            sizes = self._eval_many([self._core.qsize_call(n) for n in names])
        return [n for n, size in zip(names, sizes, strict=True) if int(size) > 0]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        k = self._core.keys
        with self._errors("dead_letters"):
            ids: list[Any] = self._client.zrange(k.dead_index, 0, max(limit, 1) - 1)
            records = self._client.hmget(k.dead_letters, ids) if ids else []
        return [parse_dead_letter(r) for r in records if r is not None]

    def _dead_ids(self) -> list[str]:
        everything: list[Any] = self._client.zrange(self._core.keys.dead_index, 0, -1)
        return [text(i) for i in everything]

    def _dead_records(self, ids: Sequence[str] | None) -> list[dict[str, Any]]:
        k = self._core.keys
        if ids is None:
            ids = self._dead_ids()
        records = self._client.hmget(k.dead_letters, list(ids)) if ids else []
        return [json.loads(r) for r in records if r is not None]

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        with self._errors("requeue_dead_letters"):
            calls = [self._core.unbury_call(r) for r in self._dead_records(ids)]
            return sum(int(r) for r in self._eval_many(calls))

    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        k = self._core.keys
        with self._errors("purge_dead_letters"):
            if ids is None:
                ids = self._dead_ids()
            if not ids:
                return 0
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(k.dead_letters, *ids)
            pipe.zrem(k.dead_index, *ids)
            return int(pipe.execute()[0])

    def wake(self) -> None:
        self._woken = True
        if self._blocker_id is not None:
            with contextlib.suppress(redis.RedisError):
                self._client.client_unblock(self._blocker_id)

    def close(self) -> None:
        self.wake()
        if self._blocker is not None:
            with contextlib.suppress(redis.RedisError):
                self._blocker.close()
            self._blocker = None
        with contextlib.suppress(redis.RedisError):
            self._client.close()


class AsyncRedisTransport(AsyncTransport):
    """The worker's Redis driver on redis.asyncio: the same logic and scripts, awaited."""

    schemes = RedisTransport.schemes

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.options: dict[str, Any] = dict(options or {})
        self._core = Core(url, lease_seconds, self.options)
        self._health = _Health()
        self.lease_seconds = self._core.opts.visibility_timeout
        self._client = _async_client(self._core, self.options)

    async def _eval(self, call: Call) -> Any:
        name, keys, args = call
        try:
            return await self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            await self._client.script_load(scripts.SCRIPTS[name])
            return await self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)

    async def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        missing = [
            i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)
        ]
        if missing:
            for name in {calls[i][0] for i in missing}:
                await self._client.script_load(scripts.SCRIPTS[name])
            again = await self._eval_many([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return _raise_errors(results)

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return self._health.errors(what, self.describe())

    async def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        await self.publish_many([(queue, message, eta)])

    async def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if not items:
            return
        now, new = time.time(), set()
        pipe = self._client.pipeline(transaction=False)
        for queue, message, eta in items:
            for key, member in [] if queue in new else self._core.declarations(queue):
                pipe.sadd(key, member)
            new.add(queue)
            key, payload, score = self._core.encode(queue, message, eta, now)
            if score is None:
                pipe.lpush(key, payload)
            else:
                pipe.zadd(key, {payload: score})
        with self._errors("publish"):
            await pipe.execute()
        self._core.declared |= new

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        queues = list(queues)
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            with self._errors("fetch"):
                if self._core.restore_due(time.monotonic()):
                    await self.restore_expired()
                call, lease = self._core.take_call(queues, limit)
                got, bad, next_due = self._core.parse_take(queues, await self._eval(call), lease)
                await self._eval_many([c for d, why in bad for c in self._core.dead_calls(d, why)])
                remaining = deadline - time.monotonic()
                if got or remaining <= 0:
                    return got
                seconds = block_seconds(remaining, self._core.opts, next_due, time.time())
                watch = self._core.keys.list_key(queues[self._core.rotation % len(queues)])
                self._core.rotation += 1
                await self._client.blmove(watch, watch, seconds, "RIGHT", "RIGHT")  # type: ignore[arg-type]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._errors("ack"):
            await self._eval_many(self._core.ack_calls(deliveries))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        with self._errors("requeue"):
            await self._eval_many(self._core.requeue_calls(deliveries))

    async def defer(self, delivery: Delivery, eta: float) -> None:
        with self._errors("defer"):
            await self._eval_many(self._core.defer_calls(delivery, eta))

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with self._errors("renew"):
                await self._eval_many(self._core.renew_calls(deliveries))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._errors("dead_letter"):
            await self._eval_many(self._core.dead_calls(delivery, reason))

    async def restore_expired(self) -> int:
        """Restore deliveries older than ``visibility_timeout`` (under ``unacked_mutex``)."""
        k, token = self._core.keys, uuid.uuid4().hex
        expire = int(self._core.opts.unacked_mutex_expire * 1000)
        if not await self._client.set(k.unacked_mutex, token, nx=True, px=expire):
            return 0
        try:
            cutoff = time.time() - self._core.opts.visibility_timeout
            tags: list[Any] = await self._client.zrevrangebyscore(
                k.unacked_index, cutoff, 0, start=0, num=1000
            )
            if not tags:
                return 0
            values = await self._client.hmget(k.unacked, tags)
            bindings = {
                ex: list(await self._client.smembers(k.binding_key(ex)))
                for ex in self._core.exchanges_of(values)
            }
            calls = self._core.restore_calls(tags, values, bindings, cutoff)
            return sum(int(r) for r in await self._eval_many(calls))
        finally:
            await self._eval(("unlock", [k.unacked_mutex], [token]))

    async def qsize(self, queue: str) -> int:
        with self._errors("qsize"):
            return int(await self._eval(self._core.qsize_call(queue)))

    async def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self._client.aclose()

    def describe(self) -> str:
        from celeriac._internal.urls import redact_url

        return redact_url(self.url)
