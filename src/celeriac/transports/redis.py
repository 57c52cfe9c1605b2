"""Redis broker drivers, wire-compatible with kombu's Redis transport (Celery 5).

``RedisTransport`` (sync, redis-py; clients and CLI) and ``AsyncRedisTransport`` (the worker)
share the pure logic in ``redis_keys`` (layout, options, URLs, envelope handling), the Lua
scripts in ``redis_scripts``, the clients and reconnect policy in ``redis_client`` and the
pub/sub subscriptions in ``redis_fanout``. The worker's driver sends its hot calls (fetch,
scripts, settling, publishing) through ``redis_commands``: a lean asyncio connection
(``_internal.redis_wire``) where it can serve the URL, redis.asyncio otherwise.

URLs
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; ``ssl_cert_reqs``,
    ``ssl_ca_certs``, ... in the query or the options), ``redis+socket:///path/redis.sock
    [?virtual_host=db]``, and ``sentinel://[:password@]host:port[;sentinel://host2:port2][/db]``
    with the ``master_name`` option (and ``sentinel_kwargs``), as Celery accepts them.

Options (``broker_transport_options``, Celery's names)
    ``visibility_timeout`` (the lease; default ``lease_seconds``, 60 s), ``priority_steps``
    (``[0, 3, 6, 9]``), ``sep`` (``"\\x06\\x16"``), ``global_keyprefix`` (on every key),
    ``unacked_key``/``unacked_index_key``/``unacked_mutex_key``, ``unacked_mutex_expire``
    (min(30 s, lease)), ``unacked_restore_interval`` (min(5 s, lease/4)), ``socket_timeout``,
    ``socket_connect_timeout``, ``socket_keepalive``, ``retry_on_timeout``, ``max_connections``,
    ``health_check_interval``, ``client_name``, ``username``/``password``; reconnecting (see
    ``redis_client``): ``max_retries`` (3, redis-py's per command), ``interval_start`` (0.05 s),
    ``interval_step`` (0.25 s), ``interval_max`` (2 s), ``connect_retries_timeout`` (20 s), at
    the top level or in ``retry_policy``; fan-out naming: ``fanout_prefix`` (True: ``/<db>.``),
    ``fanout_patterns`` (True); and ours: ``poll_interval`` (1 s, see Waiting),
    ``delayed_batch`` (100), ``eta_delivery`` (``"delayed"``: a message with a future eta
    waits in ``<queue>SEPceleriac.delayed``, which only Celeriac consumers read; ``"list"``:
    it is LPUSHed at once with its ``eta`` header, as Celery does, so a Celery worker on that
    queue sees it too - set it in a mixed fleet), ``lean_connection`` (True; False: the
    worker's driver sends everything through redis.asyncio, see ``redis_commands``).

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
    ``<p>/<db>.<exchange>[/<routing_key>]``  pub/sub channels of fan-out exchanges (kombu's).

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
    non-empty". The take script is sent in the same pipeline right behind it, so Redis runs it
    the instant the wait ends (woken, timed out or CLIENT UNBLOCKed): one round trip per
    wake-up, and the take is the same atomic script (that take reads the server's ``TIME``, as
    the client's clock at send time is up to ``poll_interval`` stale). Other lists (other
    priority steps and queues) and due delayed messages are checked at least every
    ``poll_interval`` (and exactly when the next delayed message is due). Redis has no
    multi-key non-popping wait; a pop-based wait (kombu's BRPOP) is what loses messages on a
    crash. A fetch right after a take that got fewer messages than it asked for (within
    ``redis_keys.WAIT_FIRST_WINDOW``, 50 ms) sends the wait at once (``Core.wait_first``): the
    lists were empty a moment ago, and the wait returns at once if the watched list has a
    message, so an idle worker's next task costs one round trip, not two. Later than that (the
    worker paused for room), it takes first, so what arrived on other lists meanwhile is not
    left to the wait.
    *Leases*: ``renew`` sets the ``unacked_index`` score to now, i.e. a fresh kombu delivery time,
    so no consumer (Celery's included) restores a message whose holder is alive. At fetch time,
    at most every ``unacked_restore_interval``, a consumer takes ``unacked_mutex`` (SET NX PX) and
    restores deliveries older than ``visibility_timeout`` with kombu's redelivered flags (RPUSH:
    next out), each by a compare-and-swap script, so concurrent restorers never double a message.
    Ack/requeue/defer/dead_letter/renew act only while the consumer's lease id in ``held`` still
    matches: settling an expired delivery that was handed out again is a no-op.
    In a mixed fleet use the same ``visibility_timeout`` as the Celery workers: they do not renew.
    *Batches*: ``ack``, ``requeue`` and ``renew`` settle any number of deliveries with one
    script call (per 1000), which is what the worker sends once per loop turn.
    ``ack_with_writes`` (async driver) writes result records (SET + PUBLISH each) and then acks,
    in one script call (``WRITE_ACK``): the worker's batch when its result store is this Redis.
    *Reconnecting*: every call rides out a server restart or failover on its own - retried with
    backoff for up to ``connect_retries_timeout``, logged once when the link drops and once when
    it is back (details in ``redis_client``). What was acknowledged stays acknowledged and what
    was held stays in ``unacked`` (with ``appendonly yes`` on the server, nothing is lost by a
    restart); a fetch whose reply is lost leaves its messages there until their lease runs out.

Fan-out (``publish_fanout``/``subscribe_fanout``, details in ``redis_fanout``)
    Broadcast for remote control and events: PUBLISH of the kombu envelope on
    ``/<db>.<exchange>[/<routing_key>]``, PSUBSCRIBE with kombu's patterns; nothing is stored.

Redis Cluster
    Not supported (nor by Celery); what it would take is in ``ARCHITECTURE.md``, "Redis Cluster
    plan". Every script already declares all its keys in ``KEYS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis

from celeriac._internal.redis_pinned import PinnedConnection
from celeriac.protocol.envelope import RawMessage, dumps_envelope
from celeriac.protocol.envelope_template import EnvelopeTemplate
from celeriac.transports import redis_scripts as scripts
from celeriac.transports.base import (
    DEFAULT_LEASE_SECONDS,
    AsyncTransport,
    DeadLetter,
    Delivery,
    Rendered,
    Transport,
)
from celeriac.transports.redis_client import async_client, link_for, sync_client
from celeriac.transports.redis_commands import commands_for
from celeriac.transports.redis_fanout import AsyncFanoutSubscription, FanoutSubscription
from celeriac.transports.redis_keys import (
    Call,
    Core,
    block_seconds,
    parse_dead_letter,
    text,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "AsyncFanoutSubscription",
    "AsyncRedisTransport",
    "FanoutSubscription",
    "RedisTransport",
]


def _raise_errors(results: list[Any]) -> list[Any]:
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def _log_dead(bad: Sequence[tuple[Delivery, str]]) -> None:
    """One ERROR line per entry the take script returned and the driver could not parse."""
    for delivery, why in bad:
        logger.error("Dead-lettered message from queue %r: %s", delivery.queue, why)


#: a take script's reply and its lease id
Taken = tuple[Any, str]


def _after_wait(results: list[Any]) -> Any | None:
    """The take reply of a ``[BLMOVE, take]`` pipeline; None when the script is not loaded."""
    moved, reply = results
    if isinstance(moved, Exception):
        raise moved
    if isinstance(reply, redis.exceptions.NoScriptError):
        return None
    if isinstance(reply, Exception):
        raise reply
    return reply


def _evalsha(call: Call) -> tuple[Any, ...]:
    """The EVALSHA command of a script call."""
    name, keys, args = call
    return ("EVALSHA", scripts.SHAS[name], len(keys), *keys, *args)


class _Queued:
    """Collects the commands ``_pipe_publish`` queues, for ``Commands.pipe``."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def sadd(self, key: str, *members: Any) -> None:
        self.commands.append(("SADD", key, *members))

    def lpush(self, key: str, *values: Any) -> None:
        self.commands.append(("LPUSH", key, *values))

    def zadd(self, key: str, mapping: dict[Any, float]) -> None:
        for member, score in mapping.items():
            self.commands.append(("ZADD", key, score, member))


def _missing_scripts(results: list[Any]) -> list[int]:
    return [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]


#: most values in one LPUSH of ``publish_many``
PUSH_BATCH = 1000


#: what ``_pipe_publish`` takes: a plain message, or a payload a ``_ListPublisher`` rendered
Outgoing = Rendered | tuple[str, RawMessage, float | None]


def _pipe_publish(pipe: Any, core: Core, items: Sequence[Outgoing]) -> set[str]:
    """Queue the writes of ``publish_many`` (and of a publisher's ``send_many``) on ``pipe``;
    returns the queues it declares.

    Consecutive messages for one list go in one LPUSH with many values (up to
    ``PUSH_BATCH``): the list ends up as with one LPUSH each, for a fraction of the work."""
    now, new = time.time(), set()
    run_key, run = "", list[bytes]()
    for item in items:
        if isinstance(item, Rendered):  # its queue was declared when its publisher was made
            publisher = item.publisher
            if not isinstance(publisher, _ListPublisher):  # pragma: no cover - misuse
                raise TypeError("a payload rendered by another transport's publisher")
            key, payload, score = publisher.key, item.payload, None
        else:
            queue, message, eta = item
            if queue not in new:
                for key, member in core.declarations(queue):
                    pipe.sadd(key, member)
                new.add(queue)
            key, payload, score = core.encode(queue, message, eta, now)
        if run and (key != run_key or score is not None or len(run) >= PUSH_BATCH):
            pipe.lpush(run_key, *run)
            run = []
        if score is None:
            run_key = key
            run.append(payload)
        else:
            pipe.zadd(key, {payload: score})
    if run:
        pipe.lpush(run_key, *run)
    return new


class _ListPublisher:
    """``Publisher`` of the Redis broker: rendered envelopes LPUSHed to one ready list."""

    __slots__ = ("_transport", "key", "template")

    def __init__(self, transport: RedisTransport, key: str, template: EnvelopeTemplate) -> None:
        self._transport = transport
        self.key = key
        self.template = template

    def send(self, payload: bytes) -> None:
        self._transport._push(self.key, payload)

    def send_many(self, items: Sequence[Outgoing]) -> None:
        self._transport._publish_outgoing(items)


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
        self.lease_seconds = self._core.opts.visibility_timeout
        self._client = sync_client(self._core, self.options)
        #: single publishes go on a kept connection (``redis_pinned``)
        self._pinned = PinnedConnection(self._client, enabled="max_connections" not in self.options)
        self._link = link_for(self._core, self.describe())
        #: the connection ``fetch`` blocks on (its own, so ``wake`` can CLIENT UNBLOCK it)
        self._blocker: redis.Redis | None = None
        self._blocker_id: int | None = None
        self._woken = threading.Event()

    # -- plumbing ----------------------------------------------------------------------------
    def _run(self, what: str, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)``, tried again while the server is unreachable (``Link`` policy)."""
        while True:
            try:
                result = func(*args)
            except redis.RedisError as exc:
                time.sleep(self._link.lost(what, exc, time.monotonic()))
                continue
            self._link.ok(time.monotonic())
            return result

    def _eval(self, call: Call) -> Any:
        name, keys, args = call
        try:
            return self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(scripts.SCRIPTS[name])
            return self._client.evalsha(scripts.SHAS[name], len(keys), *keys, *args)

    def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        if len(calls) <= 1:
            return [self._eval(c) for c in calls]
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        results: list[Any] = pipe.execute(raise_on_error=False)
        missing = _missing_scripts(results)
        if missing:
            for name in {calls[i][0] for i in missing}:
                self._client.script_load(scripts.SCRIPTS[name])
            again = self._eval_many([calls[i] for i in missing])
            for i, result in zip(missing, again, strict=True):
                results[i] = result
        return _raise_errors(results)

    def _settle(self, what: str, calls: list[Call]) -> None:
        if calls:
            self._run(what, self._eval_many, calls)

    # -- producer side -----------------------------------------------------------------------
    def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        if queue not in self._core.declared:
            self.publish_many([(queue, message, eta)])
            return
        # The common case (queue declared by this process): one command, no pipeline set-up.
        key, payload, score = self._core.encode(queue, message, eta, time.time())
        if score is None:
            self._push(key, payload)
        else:
            self._run("publish", self._pinned.execute, "ZADD", key, score, payload)

    def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        self._publish_outgoing(items)

    def _publish_outgoing(self, items: Sequence[Outgoing]) -> None:
        if items:
            self._core.declared |= self._run("publish", self._publish, items)

    def publisher(
        self, queue: str, prototype: RawMessage, *, root_is_id: bool = True
    ) -> _ListPublisher | None:
        template = EnvelopeTemplate.build(prototype, queue, root_is_id=root_is_id)
        if template is None:
            return None
        if queue not in self._core.declared:
            self._core.declared |= self._run("publish", self._declare, queue)
        key = self._core.keys.list_key(queue, self._core.keys.step_index(prototype.priority))
        return _ListPublisher(self, key, template)

    def _declare(self, queue: str) -> set[str]:
        pipe = self._client.pipeline(transaction=False)
        for key, member in self._core.declarations(queue):
            pipe.sadd(key, member)
        pipe.execute()
        return {queue}

    def _push(self, key: str, payload: bytes) -> None:
        self._run("publish", self._pinned.execute, "LPUSH", key, payload)

    def _publish(self, items: Sequence[Outgoing]) -> set[str]:
        queued = _Queued()
        new = _pipe_publish(queued, self._core, items)
        _raise_errors(self._pinned.execute_many(queued.commands))
        return new

    # -- consumer side -----------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        queues = list(queues)
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        self._woken.clear()
        taken: Taken | None = None
        while True:
            try:
                got, taken = self._fetch_once(queues, limit, deadline, taken)
            except redis.RedisError as exc:
                taken = None
                self._drop_blocker()
                if self._woken.is_set():  # closed under it: not an outage
                    return []
                if self._woken.wait(self._link.lost("fetch", exc, time.monotonic())):
                    return []
                continue
            self._link.ok(time.monotonic())
            if got is not None:
                return got

    def _fetch_once(
        self, queues: list[str], limit: int, deadline: float, taken: Taken | None
    ) -> tuple[list[Delivery] | None, Taken | None]:
        """Take what is ready (``taken``: what the take behind the last wait took); when
        nothing is, wait once and return (None, the reply of the take sent behind the wait)."""
        core = self._core
        if core.restore_due(time.monotonic()) and self._restore_expired():
            core.emptied = None
        if taken is None:
            wait = core.wait_first(queues, deadline - time.monotonic(), self._woken.is_set())
            if wait is not None:
                return None, self._wait_and_take(queues, limit, wait)
            call, lease = core.take_call(queues, limit)
            taken = (self._eval(call), lease)
        good, bad, next_due = core.parse_take(queues, *taken, limit=limit)
        self._eval_many([c for d, why in bad for c in core.dead_calls(d, why)])
        _log_dead(bad)
        remaining = deadline - time.monotonic()
        if good or remaining <= 0 or self._woken.is_set():
            return good, None
        seconds = block_seconds(remaining, core.opts, next_due, time.time())
        return None, self._wait_and_take(queues, limit, seconds)

    def _wait_and_take(self, queues: list[str], limit: int, seconds: float) -> Taken:
        """Block until the watched list has a message (or ``seconds`` pass, or ``wake``) with
        the take script pipelined behind the wait: Redis runs it the instant the wait ends."""
        watch = self._core.watch_key(queues)
        if self._blocker is None:
            # no redis-py retry here: a reconnect would change the id ``wake`` unblocks
            blocker = sync_client(self._core, self.options, retries=0)
            self._blocker_id = int(blocker.client_id())
            self._blocker = blocker
        call, lease = self._core.take_call(queues, limit, server_time=True)
        name, keys, args = call
        pipe = self._blocker.pipeline(transaction=False)
        pipe.blmove(watch, watch, seconds, "RIGHT", "RIGHT")  # type: ignore[arg-type]
        pipe.evalsha(scripts.SHAS[name], len(keys), *keys, *args)
        reply = _after_wait(pipe.execute(raise_on_error=False))
        return (self._eval(call) if reply is None else reply), lease

    def _drop_blocker(self) -> None:
        blocker, self._blocker, self._blocker_id = self._blocker, None, None
        if blocker is not None:
            with contextlib.suppress(redis.RedisError):
                blocker.close()
                blocker.connection_pool.disconnect()

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._settle("ack", self._core.ack_calls(deliveries))

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        self._settle("requeue", self._core.requeue_calls(deliveries))

    def defer(self, delivery: Delivery, eta: float) -> None:
        self._settle("defer", self._core.defer_calls(delivery, eta))

    def renew(self, deliveries: Sequence[Delivery]) -> None:
        self._settle("renew", self._core.renew_calls(deliveries))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._settle("dead_letter", self._core.dead_calls(delivery, reason))

    def restore_expired(self) -> int:
        """Restore deliveries older than ``visibility_timeout`` (under ``unacked_mutex``)."""
        return self._run("restore", self._restore_expired)

    def _restore_expired(self) -> int:
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

    # -- fan-out -----------------------------------------------------------------------------
    def publish_fanout(self, exchange: str, routing_key: str, message: RawMessage) -> int:
        """PUBLISH ``message`` to a fan-out exchange (kombu's channel and envelope); returns how
        many subscribers received it."""
        channel = self._core.keys.fanout_channel(exchange, routing_key)
        payload = dumps_envelope(message, exchange=exchange, routing_key=routing_key)
        return int(self._run("publish_fanout", self._client.publish, channel, payload))

    def subscribe_fanout(self, exchange: str, pattern: str = "") -> FanoutSubscription:
        """Subscribe to a fan-out exchange; ``pattern`` is the binding key (``""``: the
        exchange's own channel, ``"#"``: every routing key, ``"worker.#"``, ...)."""
        channel = self._core.keys.fanout_pattern(exchange, pattern)

        def subscribe() -> FanoutSubscription:
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            subscription = FanoutSubscription(pubsub, channel, self._link)
            try:
                pubsub.psubscribe(channel)
                subscription.confirm()
            except BaseException:
                subscription.close()
                raise
            return subscription

        return self._run("subscribe", subscribe)

    # -- management --------------------------------------------------------------------------
    def qsize(self, queue: str) -> int:
        return int(self._run("qsize", self._eval, self._core.qsize_call(queue)))

    def purge(self, queue: str) -> int:
        return int(self._run("purge", self._eval, self._core.purge_call(queue)))

    def queues(self) -> list[str]:
        def sizes() -> list[str]:
            names = sorted(text(n) for n in self._client.smembers(self._core.keys.queue_names))
            counts = self._eval_many([self._core.qsize_call(n) for n in names])
            return [n for n, size in zip(names, counts, strict=True) if int(size) > 0]

        return self._run("queues", sizes)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        k = self._core.keys

        def read() -> list[Any]:
            ids: list[Any] = self._client.zrange(k.dead_index, 0, max(limit, 1) - 1)
            return list(self._client.hmget(k.dead_letters, ids)) if ids else []

        return [parse_dead_letter(r) for r in self._run("dead_letters", read) if r is not None]

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
        def unbury() -> int:
            calls = [self._core.unbury_call(r) for r in self._dead_records(ids)]
            return sum(int(r) for r in self._eval_many(calls))

        return self._run("requeue_dead_letters", unbury)

    def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        k = self._core.keys

        def purge(ids: Sequence[str] | None) -> int:
            if ids is None:
                ids = self._dead_ids()
            if not ids:
                return 0
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(k.dead_letters, *ids)
            pipe.zrem(k.dead_index, *ids)
            return int(pipe.execute()[0])

        return self._run("purge_dead_letters", purge, ids)

    def wake(self) -> None:
        self._woken.set()
        if self._blocker_id is not None:
            with contextlib.suppress(redis.RedisError):
                self._client.client_unblock(self._blocker_id)

    def close(self) -> None:
        self.wake()
        self._drop_blocker()
        with contextlib.suppress(redis.RedisError):
            self._pinned.close()
            self._client.close()


class AsyncRedisTransport(AsyncTransport):
    """The worker's Redis driver: the same logic and scripts, awaited; hot calls through
    ``redis_commands`` (the lean connection or redis.asyncio), the rest on redis.asyncio."""

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
        self.lease_seconds = self._core.opts.visibility_timeout
        #: redis.asyncio's client: pub/sub, restore's reads, and every call when the lean
        #: connection cannot serve the URL (``redis_commands``)
        self._client = async_client(self._core, self.options)
        #: what the hot calls (fetch, eval, settle, publish) go through
        self._commands = commands_for(self._core, self.options, self._client)
        self._link = link_for(self._core, self.describe())
        #: set by ``wake``: a fetch returns at its next step (at once on the lean connection,
        #: which unblocks its wait; else at most ``poll_interval`` away)
        self._woken = False

    async def _run(self, what: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await func(*args)``, tried again while the server is unreachable (``Link``)."""
        while True:
            try:
                result = await func(*args)
            except redis.RedisError as exc:
                await asyncio.sleep(self._link.lost(what, exc, time.monotonic()))
                continue
            self._link.ok(time.monotonic())
            return result

    async def _eval(self, call: Call) -> Any:
        return (await self._eval_many([call]))[0]

    async def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        """The replies of ``calls`` (one round trip); a script the server does not have is
        loaded and its calls sent again, in one more."""
        if not calls:
            return []
        commands = [_evalsha(c) for c in calls]
        results = await self._commands.pipe(commands)
        missing = _missing_scripts(results)
        if missing:
            loads = [("SCRIPT", "LOAD", scripts.SCRIPTS[n]) for n in {calls[i][0] for i in missing}]
            again = await self._commands.pipe([*loads, *(commands[i] for i in missing)])
            _raise_errors(again[: len(loads)])
            for i, result in zip(missing, again[len(loads) :], strict=True):
                results[i] = result
        return _raise_errors(results)

    async def _settle(self, what: str, calls: list[Call]) -> None:
        if calls:
            await self._run(what, self._eval_many, calls)

    async def publish(self, queue: str, message: RawMessage, *, eta: float | None = None) -> None:
        await self.publish_many([(queue, message, eta)])

    async def publish_many(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> None:
        if items:
            self._core.declared |= await self._run("publish", self._publish, items)

    async def _publish(self, items: Sequence[tuple[str, RawMessage, float | None]]) -> set[str]:
        queued = _Queued()
        new = _pipe_publish(queued, self._core, items)
        _raise_errors(await self._commands.pipe(queued.commands))
        return new

    async def fetch(self, queues: Sequence[str], limit: int, timeout: float) -> list[Delivery]:
        queues = list(queues)
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + max(timeout, 0.0)
        self._woken = False
        taken: Taken | None = None
        while True:
            try:
                got, taken = await self._fetch_once(queues, limit, deadline, taken)
            except redis.RedisError as exc:
                taken = None
                if self._woken:  # closed under it: not an outage
                    return []
                await asyncio.sleep(self._link.lost("fetch", exc, time.monotonic()))
                if self._woken:
                    return []
                continue
            self._link.ok(time.monotonic())
            if got is not None:
                return got

    async def _fetch_once(
        self, queues: list[str], limit: int, deadline: float, taken: Taken | None
    ) -> tuple[list[Delivery] | None, Taken | None]:
        """Take what is ready (see ``RedisTransport._fetch_once``)."""
        core = self._core
        if core.restore_due(time.monotonic()) and await self._restore_expired():
            core.emptied = None
        if taken is None:
            wait = core.wait_first(queues, deadline - time.monotonic(), self._woken)
            if wait is not None:
                return None, await self._wait_and_take(queues, limit, wait)
            call, lease = core.take_call(queues, limit)
            taken = (await self._eval(call), lease)
        good, bad, next_due = core.parse_take(queues, *taken, limit=limit)
        await self._eval_many([c for d, why in bad for c in core.dead_calls(d, why)])
        _log_dead(bad)
        remaining = deadline - time.monotonic()
        if good or remaining <= 0 or self._woken:
            return good, None
        seconds = block_seconds(remaining, core.opts, next_due, time.time())
        return None, await self._wait_and_take(queues, limit, seconds)

    async def _wait_and_take(self, queues: list[str], limit: int, seconds: float) -> Taken:
        """The wait with the take pipelined behind it (see ``RedisTransport._wait_and_take``)."""
        watch = self._core.watch_key(queues)
        call, lease = self._core.take_call(queues, limit, server_time=True)
        wait = ("BLMOVE", watch, watch, "RIGHT", "RIGHT", seconds)
        reply = _after_wait(await self._commands.pipe([wait, _evalsha(call)], block=seconds))
        return (await self._eval(call) if reply is None else reply), lease

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle("ack", self._core.ack_calls(deliveries))

    async def ack_with_writes(
        self, deliveries: Sequence[Delivery], keys: Sequence[str], args: Sequence[Any]
    ) -> bool:
        """Result writes, then the acks of ``deliveries``, in one script call (``WRITE_ACK``):
        per key ``SET key value [PX ms]`` and ``PUBLISH key value``, with ``args`` holding
        each key's expiry in ms ("" = none) and value. A write that fails acks nothing. False
        (nothing done) for more deliveries than one call takes: write and ack separately."""
        call = self._core.write_ack_call(deliveries, keys, args)
        if call is None:
            return False
        await self._settle("ack", [call])
        return True

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle("requeue", self._core.requeue_calls(deliveries))

    async def defer(self, delivery: Delivery, eta: float) -> None:
        await self._settle("defer", self._core.defer_calls(delivery, eta))

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        await self._settle("renew", self._core.renew_calls(deliveries))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._settle("dead_letter", self._core.dead_calls(delivery, reason))

    async def restore_expired(self) -> int:
        """Restore deliveries older than ``visibility_timeout`` (under ``unacked_mutex``)."""
        return await self._run("restore", self._restore_expired)

    async def _restore_expired(self) -> int:
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
            restored = sum(int(r) for r in await self._eval_many(calls))
            if restored:
                logger.info("restored %d deliveries whose lease ran out", restored)
            return restored
        finally:
            await self._eval(("unlock", [k.unacked_mutex], [token]))

    async def publish_fanout(self, exchange: str, routing_key: str, message: RawMessage) -> int:
        """PUBLISH ``message`` to a fan-out exchange (see ``RedisTransport.publish_fanout``)."""
        channel = self._core.keys.fanout_channel(exchange, routing_key)
        payload = dumps_envelope(message, exchange=exchange, routing_key=routing_key)
        return int(await self._run("publish_fanout", self._client.publish, channel, payload))

    async def subscribe_fanout(self, exchange: str, pattern: str = "") -> AsyncFanoutSubscription:
        """Subscribe to a fan-out exchange (see ``RedisTransport.subscribe_fanout``)."""
        channel = self._core.keys.fanout_pattern(exchange, pattern)

        async def subscribe() -> AsyncFanoutSubscription:
            pubsub = self._client.pubsub()
            subscription = AsyncFanoutSubscription(pubsub, channel, self._link)
            try:
                await pubsub.psubscribe(channel)
                await subscription.confirm()
            except BaseException:
                await subscription.close()
                raise
            return subscription

        return await self._run("subscribe", subscribe)

    async def qsize(self, queue: str) -> int:
        return int(await self._run("qsize", self._eval, self._core.qsize_call(queue)))

    def wake(self) -> None:
        """Make a running ``fetch`` return at its next step (the caller may also cancel it)."""
        self._woken = True
        self._commands.unblock()

    async def close(self) -> None:
        self._woken = True
        await self._commands.close()
        with contextlib.suppress(redis.RedisError):
            await self._client.aclose()

    def describe(self) -> str:
        from celeriac._internal.urls import redact_url

        return redact_url(self.url)
