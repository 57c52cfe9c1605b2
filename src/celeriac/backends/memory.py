"""The in-process result store: ``memory://`` and ``cache+memory://`` (Celery's name).

URL
    ``memory://`` (the process's default store) or ``memory://<name>`` (``cache+memory://<name>``
    is the same store). Every ``MemoryStore`` of the same name in one process shares one key
    space, whichever thread uses it; nothing crosses a process boundary, and the records live as
    long as the process (``reset_stores`` drops them). Leading/trailing ``/`` and a query string
    are ignored.

Options
    None.

Layout
    One ``_Space`` per name: ``key -> (value bytes, monotonic expiry or None)``, guarded by one
    ``threading.Condition``. Counters (``incr``) are stored as ASCII decimal bytes, as Redis does.

Guarantees
    - ``expires`` is seconds from now; ``None`` (or a non-positive number, Celery's "never" for
      ``result_expires=0``) keeps the record forever. An expired record reads as missing at once;
      ``cleanup`` removes expired records and returns how many it found.
    - ``incr`` is atomic; it keeps the record's expiry unless ``expires`` is given (as Redis
      ``INCR`` + ``EXPIRE``). Incrementing a value that is not an integer raises ``DecodeError``.
    - ``wait_for_change`` sleeps on the condition (no polling): every write wakes it, and it
      wakes by itself when the record it watches expires.
    - Chord joins (``join_add_many``...) run under the same condition, so they are atomic; a
      join's members live in ``_Space.joins`` (``<key>.s/.t/.c`` are ordinary records).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celeriac._internal.named import Named, memory_name
from celeriac.backends.base import KeyValueStore
from celeriac.backends.joins import JoinAdd, JoinState, join_decision
from celeriac.exceptions import DecodeError

__all__ = ["MemoryStore", "reset_stores", "store_name"]


@dataclass(slots=True)
class _Space:
    """One named key space. Every method expects ``cond`` to be held."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    data: dict[str, tuple[bytes, float | None]] = field(default_factory=dict)
    #: chord joins: key -> (member -> (score, value), monotonic expiry or None)
    joins: dict[str, tuple[dict[str, tuple[float, bytes]], float | None]] = field(
        default_factory=dict
    )

    def read(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None:
            return None
        value, expires_at = item
        if expires_at is not None and expires_at <= time.monotonic():
            del self.data[key]
            return None
        return value

    def write(self, key: str, value: bytes, expires: float | None) -> None:
        self.data[key] = (value, _deadline(expires))

    def ttl(self, key: str) -> float | None:
        """Seconds until ``key`` expires (None: missing or never expires)."""
        item = self.data.get(key)
        if item is None or item[1] is None:
            return None
        return max(0.0, item[1] - time.monotonic())

    def incr(self, key: str, amount: int, expires: float | None) -> int:
        current = self.read(key)
        try:
            value = (int(current) if current is not None else 0) + amount
        except ValueError:
            raise DecodeError(f"{key!r} does not hold an integer", field=key) from None
        expires_at = (
            _deadline(expires) if _positive(expires) else self.data.get(key, (b"", None))[1]
        )
        self.data[key] = (str(value).encode("ascii"), expires_at)
        return value

    def sweep(self) -> int:
        now = time.monotonic()
        expired = [k for k, (_, at) in self.data.items() if at is not None and at <= now]
        for key in expired:
            del self.data[key]
        for key in [k for k, (_, at) in self.joins.items() if at is not None and at <= now]:
            del self.joins[key]
        return len(expired)

    # -- chord joins (see KeyValueStore.join_add_many) ------------------------------------------
    def join_members(self, key: str) -> dict[str, tuple[float, bytes]]:
        item = self.joins.get(key)
        if item is None:
            return {}
        if item[1] is not None and item[1] <= time.monotonic():
            del self.joins[key]
            return {}
        return item[0]

    def join_add(self, add: JoinAdd, expires: float | None, claim_seconds: float) -> JoinState:
        key = add.key
        claim = self.read(f"{key}.c")
        if claim == b"done":
            return JoinState(-1, None, False)
        members = self.join_members(key)
        added = add.member not in members
        members.setdefault(add.member, (add.score, add.value))
        self.joins[key] = (members, _deadline(expires))
        for suffix in (".s", ".t"):
            value = self.read(key + suffix)
            if value is not None:
                self.write(key + suffix, value, expires)
        size, adjust = self.read(f"{key}.s"), self.read(f"{key}.t")
        total, claimable = join_decision(len(members), size, adjust, claim, add, added)
        if claimable:
            self.write(f"{key}.c", add.token.encode(), claim_seconds)
        return JoinState(len(members), total, claimable)


def _positive(expires: float | None) -> bool:
    return expires is not None and expires > 0


def _deadline(expires: float | None) -> float | None:
    return time.monotonic() + float(expires) if expires is not None and expires > 0 else None


_SPACES = Named(_Space)


def store_name(url: str) -> str:
    """The store name in a ``memory://`` URL (``""`` is the process's default store)."""
    return memory_name(url)


def _space(name: str) -> _Space:
    return _SPACES.get(name)


def reset_stores(name: str | None = None) -> None:
    """Forget the named store's records (every store when ``name`` is None).

    Drivers already open on it keep the old records; open new ones after a reset.
    """
    _SPACES.reset(name)


class MemoryStore(KeyValueStore):
    """A key-value store in this process's memory, shared by every store of the same name."""

    schemes = ("memory", "cache+memory")

    def __init__(self, url: str = "memory://", *, options: dict[str, Any] | None = None) -> None:
        super().__init__(url, options=options)
        self.name = store_name(url)
        self._space = _space(self.name)

    def get(self, key: str) -> bytes | None:
        with self._space.cond:
            return self._space.read(key)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._space.cond:
            return [self._space.read(key) for key in keys]

    def set(self, key: str, value: bytes, expires: float | None) -> None:
        self.set_many([(key, value, expires)])

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if not items:
            return
        with self._space.cond:
            for key, value, expires in items:
                self._space.write(key, bytes(value), expires)
            self._space.cond.notify_all()

    def delete(self, keys: Sequence[str]) -> None:
        with self._space.cond:
            removed = [self._space.data.pop(key, None) for key in keys]
            if any(item is not None for item in removed):
                self._space.cond.notify_all()

    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        with self._space.cond:
            value = self._space.incr(key, amount, expires)
            self._space.cond.notify_all()
            return value

    def wait_for_change(self, key: str, previous: bytes | None, timeout: float) -> bytes | None:
        deadline = time.monotonic() + max(0.0, timeout)
        space = self._space
        with space.cond:
            while True:
                value = space.read(key)
                remaining = deadline - time.monotonic()
                if value != previous or remaining <= 0:
                    return value
                ttl = space.ttl(key)
                space.cond.wait(remaining if ttl is None else min(remaining, ttl))

    def cleanup(self) -> int:
        with self._space.cond:
            return self._space.sweep()

    # -- chord joins (added for the canvas; see KeyValueStore.join_add_many) -------------------
    def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        with self._space.cond:
            found = [self._space.join_add(add, expires, claim_seconds) for add in adds]
            self._space.cond.notify_all()
            return found

    def join_values(self, key: str) -> list[bytes]:
        with self._space.cond:
            members = self._space.join_members(key)
            return [value for _, value in sorted(members.values(), key=lambda item: item[0])]

    def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        with self._space.cond:
            space = self._space
            if space.read(f"{key}.c") not in (token.encode(), b"done"):
                return False
            space.joins.pop(key, None)
            for suffix in (".t", ".s", ".d"):
                space.data.pop(key + suffix, None)
            space.write(f"{key}.c", b"done", done_expires)
            space.cond.notify_all()
            return True
