"""Pure logic of the Redis transport: options, URLs, kombu's key layout, priority steps.

No I/O here: the sync and the async Redis drivers (``celeriac.transports.redis``) share it.
The layout is described in that module's docstring.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celeriac.exceptions import ImproperlyConfigured

DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
DEFAULT_SEP = "\x06\x16"
MAX_PRIORITY = 9

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
    master_name: str | None = None
    max_retries: int = 3
    interval_max: float = 2.0

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
        policy = dict(options.get("retry_policy") or {})
        restore = options.get("unacked_restore_interval", min(5.0, vt / 4))
        return cls(
            visibility_timeout=vt,
            priority_steps=steps,
            sep=str(options.get("sep", DEFAULT_SEP)),
            global_keyprefix=str(options.get("global_keyprefix", "") or ""),
            unacked_key=str(options.get("unacked_key", "unacked")),
            unacked_index_key=str(options.get("unacked_index_key", "unacked_index")),
            unacked_mutex_key=str(options.get("unacked_mutex_key", "unacked_mutex")),
            unacked_mutex_expire=float(options.get("unacked_mutex_expire", 30.0)),
            unacked_restore_interval=float(restore),
            poll_interval=max(0.01, float(options.get("poll_interval", 1.0))),
            delayed_batch=int(options.get("delayed_batch", 100)),
            master_name=options.get("master_name"),
            max_retries=int(policy.get("max_retries", options.get("max_retries", 3))),
            interval_max=float(policy.get("interval_max", 2.0)),
        )


class KeyLayout:
    """Key names (with ``global_keyprefix``) and priority lists, as kombu lays them out."""

    def __init__(self, options: RedisOptions) -> None:
        self.prefix = options.global_keyprefix
        self.sep = options.sep
        self.steps = options.priority_steps
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

    def queues_from_bindings(self, members: Sequence[bytes | str], routing_key: str) -> list[str]:
        """Queues of a direct exchange's binding table that match ``routing_key``."""
        found: list[str] = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else member
            parts = text.split(self.sep)
            if len(parts) == 3 and parts[0] == routing_key:
                found.append(parts[2])
        return found

    def fanout_channel(self, exchange: str, routing_key: str = "", db: int = 0) -> str:
        """kombu's pub/sub channel for a fan-out exchange: ``/<db>.<exchange>[/<rk>]``."""
        suffix = f"/{routing_key}" if routing_key else ""
        return f"{self.prefix}/{db}.{exchange}{suffix}"

    # -- script arguments ----------------------------------------------------------------------
    def take_keys(self, queues: Sequence[str]) -> list[str]:
        """KEYS of the take script: bookkeeping, then per queue delayed, held and its lists."""
        keys = [self.unacked, self.unacked_index, self.deliveries, self.dead_letters]
        keys.append(self.dead_index)
        for queue in queues:
            keys += [self.delayed_key(queue), self.held_key(queue), *self.list_keys(queue)]
        return keys


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


def parse_unacked_value(value: bytes | str) -> tuple[str, str, str]:
    """``(envelope JSON, exchange, routing_key)`` from an ``unacked`` hash value (kombu's dumps)."""
    envelope, exchange, routing_key = json.loads(value)
    return json.dumps(envelope), str(exchange or ""), str(routing_key or "")


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
