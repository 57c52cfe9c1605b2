"""Pure logic of the Redis transport: options, URLs, kombu's key layout, priority steps, and
``Core`` - script calls and reply parsing, envelope handling.

No I/O here: the sync and the async Redis drivers (``celeriac.transports.redis``) share it.
The layout is described in that module's docstring.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celeriac.exceptions import DecodeError, ImproperlyConfigured
from celeriac.protocol.envelope import RawMessage, dumps_envelope, loads_envelope, mark_redelivered
from celeriac.transports.base import DeadLetter, Delivery

logger = logging.getLogger("celeriac.transports.redis")

DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
DEFAULT_SEP = "\x06\x16"
MAX_PRIORITY = 9
#: a fetch this soon (seconds) after a take that came up short waits first (``wait_first``)
WAIT_FIRST_WINDOW = 0.05

#: options handed to redis-py's client unchanged (Celery's ``broker_transport_options`` names)
CLIENT_OPTIONS = (
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


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """``broker_transport_options`` as the Redis transport reads them (Celery's names)."""

    visibility_timeout: float
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    sep: str = DEFAULT_SEP
    global_keyprefix: str = ""
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"
    unacked_mutex_key: str = "unacked_mutex"
    unacked_mutex_expire: float = 30.0
    unacked_restore_interval: float = 5.0
    #: longest single blocking wait inside ``fetch`` (see "Waiting" in the driver docstring)
    poll_interval: float = 1.0
    #: due delayed messages moved per queue per fetch
    delayed_batch: int = 100
    #: where a message published with a future eta goes: ``"delayed"`` (our delayed zset, only
    #: Celeriac consumers move it) or ``"list"`` (the queue list at once, as Celery publishes
    #: it: any consumer sees it; a Celeriac worker defers it, a Celery worker holds it)
    eta_delivery: str = "delayed"
    master_name: str | None = None
    #: redis-py's own retries of one command on a dropped connection
    max_retries: int = 3
    #: kombu's reconnect backoff: start, growth per attempt, cap (seconds)
    interval_start: float = 0.05
    interval_step: float = 0.25
    interval_max: float = 2.0
    #: how long an outage is ridden out (calls retried) before calls raise OperationalError
    connect_retries_timeout: float = 20.0
    #: kombu's fan-out channel naming: ``/<db>.`` prefix (True, or a custom string) and the
    #: ``/<routing_key>`` suffix
    fanout_prefix: bool | str = True
    fanout_patterns: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any], lease_seconds: float) -> RedisOptions:
        vt = float(options.get("visibility_timeout", lease_seconds))
        if vt <= 0:
            raise ImproperlyConfigured(f"visibility_timeout must be > 0, not {vt!r}")
        steps = tuple(
            sorted({int(s) for s in options.get("priority_steps", DEFAULT_PRIORITY_STEPS)})
        )
        if not steps or steps[0] != 0:
            raise ImproperlyConfigured(f"priority_steps must start at 0, not {steps!r}")
        policy = {**options, **dict(options.get("retry_policy") or {})}
        restore = options.get("unacked_restore_interval", min(5.0, vt / 4))
        # a restorer that dies holding the mutex blocks every restore until it expires: within
        # the lease it delays nothing (the dead worker's messages are not due before that)
        mutex_expire = options.get("unacked_mutex_expire", min(30.0, vt))
        return cls(
            visibility_timeout=vt,
            priority_steps=steps,
            sep=str(options.get("sep", DEFAULT_SEP)),
            global_keyprefix=str(options.get("global_keyprefix", "") or ""),
            unacked_key=str(options.get("unacked_key", "unacked")),
            unacked_index_key=str(options.get("unacked_index_key", "unacked_index")),
            unacked_mutex_key=str(options.get("unacked_mutex_key", "unacked_mutex")),
            unacked_mutex_expire=float(mutex_expire),
            unacked_restore_interval=float(restore),
            poll_interval=max(0.01, float(options.get("poll_interval", 1.0))),
            delayed_batch=int(options.get("delayed_batch", 100)),
            eta_delivery=_eta_delivery(options.get("eta_delivery", "delayed")),
            master_name=options.get("master_name"),
            max_retries=int(_or(policy.get("max_retries"), 3)),
            interval_start=max(0.0, float(policy.get("interval_start", 0.05))),
            interval_step=max(0.0, float(policy.get("interval_step", 0.25))),
            interval_max=max(0.01, float(policy.get("interval_max", 2.0))),
            connect_retries_timeout=float(policy.get("connect_retries_timeout", 20.0)),
            fanout_prefix=options.get("fanout_prefix", True),
            fanout_patterns=bool(options.get("fanout_patterns", True)),
        )


def _eta_delivery(value: Any) -> str:
    if value not in ("delayed", "list"):
        raise ImproperlyConfigured(f"eta_delivery must be 'delayed' or 'list', not {value!r}")
    return str(value)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


class KeyLayout:
    """Key names (with ``global_keyprefix``) and priority lists, as kombu lays them out."""

    def __init__(self, options: RedisOptions, db: int = 0) -> None:
        self.prefix = options.global_keyprefix
        self.sep = options.sep
        self.steps = options.priority_steps
        self.db = db
        fanout = options.fanout_prefix
        self.fanout_prefix = fanout if isinstance(fanout, str) else f"/{db}." if fanout else ""
        self.fanout_patterns = options.fanout_patterns
        p = self.prefix
        self.unacked = p + options.unacked_key
        self.unacked_index = p + options.unacked_index_key
        self.unacked_mutex = p + options.unacked_mutex_key
        self.deliveries = p + "celeriac.deliveries"
        self.dead_letters = p + "celeriac.dead_letters"
        self.dead_index = p + "celeriac.dead_letters.index"
        self.queue_names = p + "celeriac.queues"

    # -- per queue -----------------------------------------------------------------------------
    def step_index(self, priority: int) -> int:
        """Index into ``steps`` of the list a message of ``priority`` goes to (kombu's rounding)."""
        clamped = max(0, min(int(priority), MAX_PRIORITY))
        return max(0, bisect.bisect(self.steps, clamped) - 1)

    def list_key(self, queue: str, index: int = 0) -> str:
        step = self.steps[index]
        return f"{self.prefix}{queue}{self.sep}{step}" if step else self.prefix + queue

    def list_keys(self, queue: str) -> list[str]:
        return [self.list_key(queue, i) for i in range(len(self.steps))]

    def delayed_key(self, queue: str) -> str:
        return f"{self.prefix}{queue}{self.sep}celeriac.delayed"

    def held_key(self, queue: str) -> str:
        return f"{self.prefix}{queue}{self.sep}celeriac.held"

    def binding_key(self, exchange: str, permanent: bool = False) -> str:
        kind = "binding_permanent" if permanent else "binding"
        return f"{self.prefix}_kombu.{kind}.{exchange}"

    def binding_member(self, routing_key: str, queue: str, pattern: str = "") -> str:
        return f"{routing_key}{self.sep}{pattern}{self.sep}{queue}"

    def queues_from_bindings(self, members: Sequence[Any], routing_key: str) -> list[str]:
        """Queues of a direct exchange's binding table that match ``routing_key``."""
        found: list[str] = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else member
            parts = text.split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                found.append(parts[2])
        return found

    def fanout_channel(self, exchange: str, routing_key: str = "") -> str:
        """kombu's pub/sub channel for a fan-out exchange: ``/<db>.<exchange>[/<rk>]``."""
        suffix = f"/{routing_key}" if routing_key and self.fanout_patterns else ""
        return f"{self.prefix}{self.fanout_prefix}{exchange}{suffix}"

    def fanout_pattern(self, exchange: str, binding_key: str = "") -> str:
        """The PSUBSCRIBE pattern of a fan-out queue bound with ``binding_key``, as kombu's:
        ``#`` becomes ``*`` and other glob characters of the key keep their meaning; the prefix
        and exchange name are matched literally."""
        base = _glob_escape(f"{self.prefix}{self.fanout_prefix}{exchange}")
        if not (binding_key and self.fanout_patterns):
            return base
        return f"{base}/{binding_key.replace('#', '*')}"

    # -- script arguments ----------------------------------------------------------------------
    def take_keys(self, queues: Sequence[str]) -> list[str]:
        """KEYS of the take script: bookkeeping, then per queue delayed, held and its lists."""
        keys = [self.unacked, self.unacked_index, self.deliveries, self.dead_letters]
        keys.append(self.dead_index)
        for queue in queues:
            keys += [self.delayed_key(queue), self.held_key(queue), *self.list_keys(queue)]
        return keys


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "\\*?[]" else c for c in text)


def delayed_member(step_index: int, envelope: bytes) -> bytes:
    """A delayed zset member: ``<step index>|<envelope>`` (the envelope's uuid makes it unique)."""
    return str(step_index).encode() + b"|" + envelope


def split_delayed_member(member: bytes) -> tuple[int, bytes]:
    index, _, envelope = member.partition(b"|")
    return int(index), envelope


def unacked_value(envelope: bytes | str, exchange: str, routing_key: str) -> str:
    """kombu's ``unacked`` hash value: JSON ``[envelope, exchange, routing_key]``."""
    text = envelope.decode() if isinstance(envelope, bytes) else envelope
    return f"[{text}, {json.dumps(exchange)}, {json.dumps(routing_key)}]"


def parse_unacked_value(value: bytes | str) -> tuple[dict[str, Any], str, str]:
    """``(envelope, exchange, routing_key)`` from an ``unacked`` hash value (kombu's dumps)."""
    envelope, exchange, routing_key = json.loads(value)
    if not isinstance(envelope, dict):
        raise ValueError("unacked entry holds no envelope object")
    return envelope, str(exchange or ""), str(routing_key or "")


def envelope_priority(envelope: Mapping[str, Any]) -> int:
    properties = envelope.get("properties")
    value = properties.get("priority") if isinstance(properties, dict) else None
    return int(value) if isinstance(value, (int, float)) else 0


# -- URLs --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ParsedURL:
    """Where to connect: a redis-py URL, or Sentinel nodes plus credentials and db."""

    client_url: str | None
    sentinels: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_url(url: str) -> ParsedURL:
    """Read ``redis://``, ``rediss://``, ``redis+socket://`` and ``sentinel://`` URLs (kombu's)."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss"):
        return ParsedURL(url, db=_db_of(urlsplit(url)))
    if scheme in ("redis+socket", "socket", "unix"):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        db = int(query.pop("virtual_host", query.pop("db", "0")) or 0)
        auth = ""
        if parts.password is not None:
            auth = f"{parts.username or ''}:{parts.password}@"
        rest = "&".join(f"{k}={v}" for k, v in query.items())
        extra = f"&{rest}" if rest else ""
        return ParsedURL(f"unix://{auth}{parts.path}?db={db}{extra}", db=db)
    if scheme == "sentinel":
        return _parse_sentinel(url)
    raise ImproperlyConfigured(f"not a Redis URL scheme: {scheme!r}")


def _db_of(parts: Any) -> int:
    path = parts.path.strip("/")
    query = dict(parse_qsl(parts.query))
    value = path or query.get("db", "0")
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"Redis db must be a number, not {value!r}") from exc


def _parse_sentinel(url: str) -> ParsedURL:
    nodes: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.hostname:
            nodes.append((parts.hostname, parts.port or 26379))
        if parts.password is not None and password is None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
        if parts.path.strip("/"):
            db = _db_of(parts)
    if not nodes:
        raise ImproperlyConfigured("sentinel:// URL names no host")
    return ParsedURL(None, tuple(nodes), db, username, password)


def client_kwargs(options: Mapping[str, Any], opts: RedisOptions) -> dict[str, Any]:
    """Keyword arguments for redis-py's client from ``broker_transport_options``."""
    kwargs = {k: options[k] for k in CLIENT_OPTIONS if k in options}
    if "socket_timeout" not in kwargs:
        kwargs["socket_timeout"] = max(5.0, opts.poll_interval + 4.0)
    return kwargs


def block_seconds(
    remaining: float, opts: RedisOptions, next_due: float | None, now: float
) -> float:
    """How long one blocking wait may last: the rest of ``timeout``, at most ``poll_interval``,
    and no later than the next delayed message is due."""
    seconds = min(remaining, opts.poll_interval)
    if next_due is not None:
        seconds = min(seconds, max(next_due - now, 0.0))
    # BLMOVE takes a float timeout; 0 would block forever, so never hand it 0
    return max(seconds, 0.001) if math.isfinite(seconds) else opts.poll_interval


# -- the logic both drivers share -------------------------------------------------------------
Call = tuple[str, list[Any], list[Any]]  # (script name, keys, args)
#: (delivery, target key or "" for its own list, payload, score) of a requeue/defer/dead letter
Release = tuple[Delivery, str, bytes, float]
#: most messages settled or renewed by one script call (bounds how long one call holds Redis)
SETTLE_CHUNK = 1000


class KeyIndex:
    """The KEYS of one script call, each named once; ``index(key)`` is its 1-based Lua index."""

    __slots__ = ("_at", "keys")

    def __init__(self, fixed: Sequence[str]) -> None:
        self.keys: list[str] = list(fixed)
        self._at = {key: i for i, key in enumerate(self.keys, 1)}

    def index(self, key: str) -> int:
        at = self._at.get(key)
        if at is None:
            self.keys.append(key)
            at = self._at[key] = len(self.keys)
        return at


@dataclass(frozen=True, slots=True)
class Held:
    """``Delivery.handle`` of a Redis delivery."""

    list_key: str
    held_key: str
    step: int
    envelope: bytes
    lease: str


class Core:
    """What both drivers share: options, layout, script calls and reply parsing (no I/O)."""

    def __init__(self, url: str, lease_seconds: float, options: dict[str, Any]) -> None:
        self.opts = RedisOptions.from_options(options, lease_seconds)
        self.parsed = parse_url(url)
        self.keys = KeyLayout(self.opts, self.parsed.db)
        self.consumer = uuid.uuid4().hex[:12]
        self._fetches = 0
        self.declared: set[str] = set()
        self.next_restore = 0.0
        self.rotation = 0
        #: (queues, next delayed due time) after a take that left every list of those queues
        #: empty (it took fewer than it asked for): the next fetch waits first (``wait_first``)
        #: (queues, next delayed due time, when) of the last take that came up short
        self.emptied: tuple[tuple[str, ...], float | None, float] | None = None

    # -- publishing --------------------------------------------------------------------------
    def encode(
        self, queue: str, message: RawMessage, eta: float | None, now: float
    ) -> tuple[str, bytes, float | None]:
        """(key, payload, score): score None means LPUSH to a list, else ZADD to delayed."""
        envelope = dumps_envelope(message, routing_key=queue)
        step = self.keys.step_index(message.priority)
        if eta is not None and eta > now and self.opts.eta_delivery == "delayed":
            return self.keys.delayed_key(queue), delayed_member(step, envelope), eta
        return self.keys.list_key(queue, step), envelope, None

    def declarations(self, queue: str) -> list[tuple[str, str]]:
        """(set key, member) pairs a kombu worker would add for ``queue`` (once per process)."""
        if queue in self.declared:
            return []
        member = self.keys.binding_member(queue, queue)
        return [
            (self.keys.binding_key(queue), member),
            (self.keys.binding_key(queue, permanent=True), member),
            (self.keys.queue_names, queue),
        ]

    # -- consuming ---------------------------------------------------------------------------
    def take_call(
        self, queues: Sequence[str], limit: int, *, server_time: bool = False
    ) -> tuple[Call, str]:
        """The take script's call and its lease id; ``server_time``: the script reads the clock
        of Redis (a take sent behind a blocking wait runs up to ``poll_interval`` later)."""
        self._fetches += 1
        lease = f"{self.consumer}:{self._fetches}"
        now = "" if server_time else repr(time.time())
        args: list[Any] = [limit, now, len(queues), len(self.opts.priority_steps)]
        args += [self.opts.delayed_batch, lease, *queues]
        return ("take", self.keys.take_keys(queues), args), lease

    def watch_key(self, queues: Sequence[str]) -> str:
        """The list the next blocking wait watches (the base lists of ``queues`` in turn)."""
        key = self.keys.list_key(queues[self.rotation % len(queues)])
        self.rotation += 1
        return key

    def wait_first(self, queues: Sequence[str], remaining: float, woken: bool) -> float | None:
        """How long the next fetch waits before it takes (the take pipelined behind the wait),
        or None to take at once. It waits first when the last take on these queues left them
        empty: a take now would almost always come back empty, and a round trip on the
        worker's loop while its first task runs delays that task's result. A message that
        arrives meanwhile ends the wait at once (on the watched list) or is taken within
        ``poll_interval`` (other lists), as during any wait."""
        emptied, self.emptied = self.emptied, None
        if emptied is None or woken or remaining <= 0 or emptied[0] != tuple(queues):
            return None
        if time.monotonic() - emptied[2] > WAIT_FIRST_WINDOW:
            return None  # a pause since (no room): what came meanwhile may be on other lists
        return block_seconds(remaining, self.opts, emptied[1], time.time())

    def parse_take(
        self, queues: Sequence[str], reply: list[Any], lease: str, *, limit: int = 0
    ) -> tuple[list[Delivery], list[tuple[Delivery, str]], float | None]:
        """(deliveries, undecodable deliveries with the reason, next delayed due time). With
        ``limit`` (what the take asked for), a take that got fewer is remembered for
        ``wait_first``."""
        next_due = float(reply[0])
        if (len(reply) - 1) // 5 < limit:
            due = next_due if next_due >= 0 else None
            self.emptied = (tuple(queues), due, time.monotonic())
        good: list[Delivery] = []
        bad: list[tuple[Delivery, str]] = []
        for i in range(1, len(reply), 5):
            qi, si, raw, count, tag = reply[i : i + 5]
            queue, step = queues[int(qi) - 1], int(si) - 1
            if not tag:  # no envelope at all: the script dead-lettered it as ``raw`` (its id)
                logger.error(
                    "Dead-lettered message from queue %r: not a kombu envelope (no JSON or no "
                    "properties.delivery_tag); dead letter %s",
                    queue,
                    text(raw),
                )
                continue
            handle = Held(
                self.keys.list_key(queue, step), self.keys.held_key(queue), step, raw, lease
            )
            try:
                env = loads_envelope(raw)
            except DecodeError as exc:
                stub = Delivery(text(tag), queue, RawMessage(body=raw), int(count), False, handle)
                bad.append((stub, f"undecodable envelope: {exc}"))
                continue
            redelivered = env.redelivered or int(count) > 1
            good.append(
                Delivery(env.delivery_tag, queue, env.message, int(count), redelivered, handle)
            )
        return good, bad, (next_due if next_due >= 0 else None)

    # -- settling: one script call per kind and batch (``RELEASE``, ``RENEW``) ----------------
    def _settle_keys(self) -> KeyIndex:
        k = self.keys
        return KeyIndex([k.unacked, k.unacked_index, k.deliveries, k.dead_index])

    def ack_calls(self, deliveries: Sequence[Delivery]) -> list[Call]:
        """One ``release`` call per ``SETTLE_CHUNK`` deliveries (compact: tag, lease, held)."""
        calls: list[Call] = []
        held = ours(deliveries)
        for first in range(0, len(held), SETTLE_CHUNK):
            keys = self._settle_keys()
            args: list[Any] = ["ack"]
            for d in held[first : first + SETTLE_CHUNK]:
                handle: Held = d.handle
                args += (d.tag, handle.lease, keys.index(handle.held_key))
            calls.append(("release", keys.keys, args))
        return calls

    def write_ack_call(
        self, deliveries: Sequence[Delivery], keys: Sequence[str], args: Sequence[Any]
    ) -> Call | None:
        """The ``write_ack`` call: the writes (``keys`` and, per key, expiry and value in
        ``args``), then the acks; None for more than ``SETTLE_CHUNK`` deliveries (one script
        call has to do it all, so that a failed write acks nothing)."""
        held = ours(deliveries)
        if len(held) > SETTLE_CHUNK or len(args) != 2 * len(keys):
            return None
        k = self.keys
        index = KeyIndex([*keys, k.unacked, k.unacked_index, k.deliveries])
        groups: dict[tuple[str, str], list[str]] = {}  # one lease and held key: one take
        for d in held:
            handle: Held = d.handle
            groups.setdefault((handle.lease, handle.held_key), []).append(d.tag)
        argv: list[Any] = [len(keys), *args]
        for (lease, held_key), tags in groups.items():
            argv += (lease, index.index(held_key), len(tags), *tags)
        return ("write_ack", index.keys, argv)

    def release_calls(self, mode: str, items: Sequence[Release]) -> list[Call]:
        """``release`` calls settling ``items`` (delivery, target key, payload, score) in order."""
        calls: list[Call] = []
        for first in range(0, len(items), SETTLE_CHUNK):
            keys = self._settle_keys()
            args: list[Any] = [mode]
            for delivery, target, payload, score in items[first : first + SETTLE_CHUNK]:
                held = held_of(delivery)
                args += (delivery.tag, held.lease, keys.index(held.held_key))
                args += (keys.index(target or held.list_key), payload, repr(score))
            calls.append(("release", keys.keys, args))
        return calls

    def requeue_calls(self, deliveries: Sequence[Delivery]) -> list[Call]:
        # kombu's restore: redelivered flags, RPUSH (next out); in reverse to keep their order
        items = [
            (d, "", mark_redelivered(held_of(d).envelope), 0.0) for d in reversed(ours(deliveries))
        ]
        return self.release_calls("requeue", items)

    def defer_calls(self, delivery: Delivery, eta: float) -> list[Call]:
        if not ours([delivery]):
            return []
        held = held_of(delivery)
        target = self.keys.delayed_key(delivery.queue)
        return self.release_calls(
            "defer", [(delivery, target, delayed_member(held.step, held.envelope), eta)]
        )

    def dead_calls(self, delivery: Delivery, reason: str) -> list[Call]:
        if not ours([delivery]):
            return []
        held, now = held_of(delivery), time.time()
        record = {
            "id": delivery.tag,
            "queue": delivery.queue,
            "step": held.step,
            "reason": reason.splitlines()[0] if reason else "",
            "failed_at": now,
            "delivery_count": delivery.delivery_count,
            "envelope": held.envelope.decode("utf-8", "replace"),
        }
        payload = json.dumps(record).encode()
        return self.release_calls("dead", [(delivery, self.keys.dead_letters, payload, now)])

    def renew_calls(self, deliveries: Sequence[Delivery]) -> list[Call]:
        """One ``renew`` call per ``SETTLE_CHUNK`` deliveries: their kombu delivery time = now."""
        calls: list[Call] = []
        held = ours(deliveries)
        now = repr(time.time())
        for first in range(0, len(held), SETTLE_CHUNK):
            keys = KeyIndex([self.keys.unacked_index])
            args: list[Any] = [now]
            for d in held[first : first + SETTLE_CHUNK]:
                handle: Held = d.handle
                args += (d.tag, handle.lease, keys.index(handle.held_key))
            calls.append(("renew", keys.keys, args))
        return calls

    def restore_due(self, now: float) -> bool:
        if now < self.next_restore:
            return False
        self.next_restore = now + self.opts.unacked_restore_interval
        return True

    def exchanges_of(self, values: Sequence[Any]) -> set[str]:
        """Named exchanges among ``unacked`` values (their queues need a binding lookup)."""
        found: set[str] = set()
        for value in values:
            with contextlib.suppress(ValueError, TypeError):
                if value is not None and (exchange := parse_unacked_value(value)[1]):
                    found.add(exchange)
        return found

    def restore_calls(
        self,
        tags: Sequence[Any],
        values: Sequence[Any],
        bindings: dict[str, list[Any]],
        cutoff: float,
    ) -> list[Call]:
        """Compare-and-swap restores of expired deliveries (kombu's redelivered flags, RPUSH)."""
        calls: list[Call] = []
        k = self.keys
        for raw_tag, value in zip(tags, values, strict=True):
            tag = text(raw_tag)
            if value is None:  # index entry without a hash entry: the script drops it
                keys = [k.unacked, k.unacked_index, k.held_key(""), k.list_key("")]
                calls.append(("restore", keys, [tag, "", repr(cutoff), ""]))
                continue
            try:
                envelope, exchange, routing_key = parse_unacked_value(value)
                payload = mark_redelivered(json.dumps(envelope))
            except (ValueError, TypeError, DecodeError):
                logger.warning("unacked entry %s is not kombu's format; left alone", tag)
                continue
            queue = routing_key
            if exchange:
                queue = (
                    k.queues_from_bindings(bindings.get(exchange, []), routing_key) or [queue]
                )[0]
            step = k.step_index(envelope_priority(envelope))
            keys = [k.unacked, k.unacked_index, k.held_key(queue), k.list_key(queue, step)]
            calls.append(("restore", keys, [tag, value, repr(cutoff), payload]))
        return calls

    def qsize_call(self, queue: str) -> Call:
        k = self.keys
        return (
            "qsize",
            [k.unacked, k.delayed_key(queue), k.held_key(queue), *k.list_keys(queue)],
            [],
        )

    def purge_call(self, queue: str) -> Call:
        return "purge", [self.keys.delayed_key(queue), *self.keys.list_keys(queue)], []

    def unbury_call(self, record: dict[str, Any]) -> Call:
        k = self.keys
        step = int(record.get("step") or 0)
        step = step if 0 <= step < len(k.steps) else 0
        keys = [k.dead_letters, k.dead_index, k.list_key(str(record["queue"]), step)]
        return "unbury", keys, [str(record["id"]), str(record["envelope"]).encode()]


def ours(deliveries: Sequence[Delivery]) -> list[Delivery]:
    """The deliveries a Redis transport handed out (others are unknown tags: a no-op)."""
    return [d for d in deliveries if isinstance(d.handle, Held)]


def held_of(delivery: Delivery) -> Held:
    if not isinstance(delivery.handle, Held):
        raise TypeError(f"delivery {delivery.tag} was not fetched from a Redis transport")
    return delivery.handle


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_dead_letter(raw: bytes | str) -> DeadLetter:
    record = json.loads(raw)
    envelope = str(record.get("envelope", ""))
    try:
        message = loads_envelope(envelope)
    except DecodeError:
        body = envelope.encode()
        return _dead(record, RawMessage(body=body, content_type="application/octet-stream"))
    return _dead(record, message.message)


def _dead(record: dict[str, Any], message: RawMessage) -> DeadLetter:
    return DeadLetter(
        id=str(record["id"]),
        queue=str(record.get("queue", "")),
        reason=str(record.get("reason", "")),
        message=message,
        failed_at=float(record.get("failed_at", 0.0)),
        delivery_count=int(record.get("delivery_count", 0)),
    )
