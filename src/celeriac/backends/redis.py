"""Redis result store, as Celery's Redis result backend writes it.

URLs
    ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
    ``redis+socket:///path/redis.sock[?virtual_host=db]``, and
    ``sentinel://[:password@]host:port[;sentinel://host2:port2][/db]`` with the ``master_name``
    option (and ``sentinel_kwargs``).

Options (``result_backend_transport_options``)
    ``global_keyprefix`` (on every key and channel), ``socket_timeout``,
    ``socket_connect_timeout``, ``socket_keepalive``, ``retry_on_timeout``, ``max_connections``,
    ``health_check_interval``, ``client_name``, ``username``/``password``, ``retry_policy``
    (``max_retries``, ``interval_max``): reconnect with exponential backoff.

Keys and writes (spec §5.1)
    One STRING per key (``celery-task-meta-<id>``, ``celery-taskset-meta-<id>``, counters),
    written as ``MULTI; SET <key> <value> PX <expires>; PUBLISH <key> <value>; EXEC``: the
    pub/sub channel is named like the key, which is what Celery clients blocked in ``.get()``
    subscribe to. ``set_many`` sends all its writes in one MULTI (one round trip). Expiry is
    Redis's own (``cleanup`` has nothing to do). ``delete`` is a plain DEL (no PUBLISH: Celery
    clients would fail to decode an empty message).

Waiting
    ``wait_for_change`` SUBSCRIBEs to the key's channel, then GETs the key (a write between the
    caller's read and the subscription is not missed), then wakes on each message. Deletes and
    expiry publish nothing, so the key is also re-read at most every second.

Guarantees
    Every write is atomic with its notification. Errors from redis-py are raised as
    ``OperationalError``. Connections are made on first use and are fork-safe (redis-py pools).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celeriac.backends.base import KeyValueStore
from celeriac.exceptions import ImproperlyConfigured, OperationalError

logger = logging.getLogger(__name__)

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


def _as_bytes(value: Any) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _expiry_ms(expires: float | None) -> int | None:
    return None if expires is None else max(1, round(expires * 1000))


def _unix_url(url: str) -> str:
    """kombu's ``redis+socket:///path?virtual_host=N`` as redis-py's ``unix:///path?db=N``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    db = query.pop("virtual_host", query.pop("db", "0")) or "0"
    auth = f"{parts.username or ''}:{parts.password}@" if parts.password is not None else ""
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"unix://{auth}{parts.path}?db={db}{extra}"


def _sentinel_client(url: str, options: dict[str, Any], kwargs: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

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
    sentinel = Sentinel(nodes, sentinel_kwargs=options.get("sentinel_kwargs"), **kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(master, **auth)  # type: ignore[no-untyped-call]
    return client


def make_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A redis-py client for a Celery-style Redis URL and transport options."""
    policy = dict(options.get("retry_policy") or {})
    backoff = ExponentialBackoff(cap=float(policy.get("interval_max", 2.0)), base=0.05)
    kwargs = {k: options[k] for k in _CLIENT_OPTIONS if k in options}
    kwargs["retry"] = Retry(backoff, int(policy.get("max_retries", 3)))
    scheme = url.partition("://")[0].lower()
    if scheme == "sentinel":
        return _sentinel_client(url, options, kwargs)
    if scheme in ("redis+socket", "socket"):
        url = _unix_url(url)
    elif scheme not in ("redis", "rediss", "unix"):
        raise ImproperlyConfigured(f"not a Redis URL scheme: {scheme!r}")
    return redis.Redis.from_url(url, **kwargs)


class RedisStore(KeyValueStore):
    """``KeyValueStore`` on Redis: SET+PUBLISH in one MULTI, pub/sub waits (see module doc)."""

    schemes = ("redis", "rediss", "redis+socket", "sentinel")

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.prefix = str(self.options.get("global_keyprefix", "") or "")
        self._client = make_client(url, self.options)
        self._down = False

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            if not self._down and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                self._down = True
                logger.warning("Redis %s unreachable (%s)", self.describe(), exc)
            raise OperationalError(f"Redis {what} failed on {self.describe()}: {exc}") from exc
        if self._down:
            self._down = False
            logger.warning("Redis %s reachable again", self.describe())

    def _key(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> bytes | None:
        with self._errors("get"):
            value: Any = self._client.get(self._key(key))
        return _as_bytes(value)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors("mget"):
            values: list[Any] = self._client.mget([self._key(k) for k in keys])
        return [_as_bytes(v) for v in values]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.set_many([(key, value, expires)])

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if not items:
            return
        pipe = self._client.pipeline(transaction=True)
        for key, value, expires in items:
            full = self._key(key)
            pipe.set(full, value, px=_expiry_ms(expires))
            pipe.publish(full, value)
        with self._errors("set"):
            pipe.execute()

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            with self._errors("delete"):
                self._client.delete(*[self._key(k) for k in keys])

    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        full = self._key(key)
        pipe = self._client.pipeline(transaction=True)
        pipe.incrby(full, amount)
        if expires is not None:
            pipe.pexpire(full, _expiry_ms(expires) or 1)
        with self._errors("incr"):
            return int(pipe.execute()[0])

    def wait_for_change(self, key: str, previous: bytes | None, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        full = self._key(key)
        with self._errors("wait_for_change"):
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(full)
                return self._wait(pubsub, full, previous, deadline)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _wait(
        self, pubsub: Any, full: str, previous: bytes | None, deadline: float
    ) -> bytes | None:
        step = 0.05
        while True:
            value = _as_bytes(self._client.get(full))
            remaining = deadline - time.monotonic()
            if value != previous or remaining <= 0:
                return value
            wait = min(remaining, step)
            message = pubsub.get_message(timeout=wait)
            if message is None:
                step = min(step * 2, RECHECK_SECONDS)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._client.close()
