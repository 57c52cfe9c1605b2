"""The result-backend contract: key-value primitives below, Celery's record logic above, once.

A driver implements ``KeyValueStore`` (get/mget/set/delete/incr/wait_for_change/cleanup/close).
``ResultBackend`` turns task states into Celery's ``celery-task-meta-<id>`` records on top of any
store: serialisation with ``result_serializer``, "a SUCCESS is never overwritten", waiting for a
ready state, group records (``celery-taskset-meta-<id>``), expiry (``result_expires``).

Chords: ``join_add_many``/``join_values``/``join_finish`` are the one atomic primitive the
chord join needs (add a header task's result once, count, claim the right to fire the body); the
default implementation is atomic within one process, and every shared driver overrides it
(Redis: Celery's ``.j/.s/.t/.d/.c`` keys and a Lua script; SQLite: one transaction; memory: its
lock). ``ResultBackend.set_chord_size``/``chord_join_many``/``chord_entries``/``chord_finish``
encode Celery's ``[1, task_id, state, result]`` entries on top (spec §5.5).

``AsyncResultBackend`` is the worker's view (records written in batches per loop turn). A driver
whose client library is async-native also implements ``AsyncKeyValueStore`` (the same primitives,
awaited) and registers it in ``celeriac.backends.urls.ASYNC_STORES``: ``AsyncResultBackend``
then runs on the event loop with the same record logic (a batch of records costs one read of
the records it might not overwrite, and one pipelined write). For other drivers it runs the
synchronous ``ResultBackend`` on one I/O thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from celeriac import states
from celeriac.backends import joins
from celeriac.backends.joins import JOIN_CLAIM_SECONDS, JOIN_DONE_SECONDS, JoinAdd, JoinState
from celeriac.exceptions import DecodeError, TimeoutError
from celeriac.protocol import serialization
from celeriac.protocol.result_meta import (
    ResultMeta,
    exception_from_dict,
    exception_to_dict,
    group_key,
    meta_from_dict,
    meta_to_dict,
    task_key,
)

DEFAULT_RESULT_EXPIRES = 86400.0


class KeyValueStore(ABC):
    """The primitives a result-backend driver implements. Values are bytes; keys are str."""

    schemes: tuple[str, ...] = ()
    #: ``wait_for_change`` starts listening, then reads the key, in about the cost of one
    #: ``get`` (Redis): ``ResultBackend.wait_for`` then skips its own first ``get``
    watches = False

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get(k) for k in keys]

    @abstractmethod
    def set(self, key: str, value: bytes, expires: float | None) -> None:
        """Store ``value``; it disappears ``expires`` seconds from now (never when None)."""

    def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Several sets in one round trip where the driver can."""
        for key, value, expires in items:
            self.set(key, value, expires)

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int:
        """Atomically add ``amount`` to an integer counter (missing = 0); returns the new value."""

    def wait_for_change(self, key: str, previous: bytes | None, timeout: float) -> bytes | None:
        """Block until ``key`` holds something other than ``previous`` or ``timeout`` passes;
        returns the current value. The default polls with backoff; drivers with notifications
        (Redis pub/sub, in-process conditions) override it.
        """
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            value = self.get(key)
            if value != previous:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return value
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    def cleanup(self) -> int:
        """Remove expired records; returns how many. Drivers with native expiry return 0."""
        return 0

    # -- joins (chords) --------------------------------------------------------------------------
    def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        """For each add, in order and atomically: unless the join is done (``<key>.c`` holds
        ``done``), add ``value`` under ``member`` once; count the members; and when the count
        reaches the size stored at ``<key>.s`` (+ ``<key>.t``), or with ``claim_now`` when the
        member is new, take the claim ``<key>.c`` for ``claim_seconds`` (a caller that holds
        it with the same token keeps it). The join's keys expire ``expires`` seconds after the
        last add.

        This default (``celeriac.backends.joins``) keeps the members in one record and is
        atomic only within this process; drivers shared between processes override it.
        """
        return joins.add_many(self, adds, expires, claim_seconds)

    def join_values(self, key: str) -> list[bytes]:
        """The values of the join ``key``, ordered by score."""
        return joins.values(self, key)

    def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        """If ``token`` holds the claim (or the join is done already): delete the join's members
        and size, and mark it done for ``done_expires`` seconds. False when another holds it."""
        return joins.finish(self, key, token, done_expires)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections/files. Idempotent."""

    def describe(self) -> str:
        from celeriac._internal.urls import redact_url

        return redact_url(self.url)


class AsyncKeyValueStore(ABC):
    """``KeyValueStore``'s primitives for an event loop, for drivers with a native async client.

    Same keys, values and semantics as the driver's ``KeyValueStore`` (both are views of one
    store): the worker writes through this one while clients read through the other.
    """

    schemes: tuple[str, ...] = ()
    #: implements ``join_add_many``/``join_values``/``join_finish`` (chords)
    supports_joins = False

    def __init__(self, url: str, *, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(k) for k in keys]

    @abstractmethod
    async def set(self, key: str, value: bytes, expires: float | None) -> None: ...

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Several sets in one round trip where the driver can."""
        for key, value, expires in items:
            await self.set(key, value, expires)

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None: ...

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, expires: float | None = None) -> int: ...

    async def wait_for_change(
        self, key: str, previous: bytes | None, timeout: float
    ) -> bytes | None:
        """As ``KeyValueStore.wait_for_change``; the default polls with backoff."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            value = await self.get(key)
            remaining = deadline - time.monotonic()
            if value != previous or remaining <= 0:
                return value
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    async def cleanup(self) -> int:
        return 0

    async def join_add_many(
        self, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
    ) -> list[JoinState]:
        """As ``KeyValueStore.join_add_many``; a driver without it leaves joins to the sync
        store (``AsyncResultBackend`` then runs them on its I/O thread)."""
        raise NotImplementedError

    async def join_values(self, key: str) -> list[bytes]:
        raise NotImplementedError

    async def join_finish(self, key: str, token: str, done_expires: float) -> bool:
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""

    def describe(self) -> str:
        from celeriac._internal.urls import redact_url

        return redact_url(self.url)


class ResultBackend:
    """Celery's result records on top of a ``KeyValueStore``."""

    def __init__(
        self,
        store: KeyValueStore,
        *,
        serializer: str = "json",
        accept: Iterable[str] | None = None,
        expires: float | None = DEFAULT_RESULT_EXPIRES,
        key_prefix: str = "",
        extended: bool = False,
    ) -> None:
        self.store = store
        self.serializer = serializer
        self.accept = list(accept) if accept is not None else None
        self.expires = expires
        self.key_prefix = key_prefix
        self.extended = extended

    # -- encoding ------------------------------------------------------------------------------
    def key_for(self, task_id: str) -> str:
        return self.key_prefix + task_key(task_id)

    def group_key_for(self, group_id: str) -> str:
        return self.key_prefix + group_key(group_id)

    def encode_meta(self, meta: ResultMeta) -> bytes:
        _, _, payload = serialization.dumps(meta_to_dict(meta), self.serializer)
        return payload

    def decode_meta(self, task_id: str, payload: bytes) -> ResultMeta:
        content_type, encoding, _ = serialization.dumps(None, self.serializer)
        data = serialization.loads(payload, content_type, encoding, accept=self.accept)
        if not isinstance(data, dict):
            raise DecodeError(f"result record of {task_id} is not a mapping", field="meta")
        return meta_from_dict(data)

    def pending(self, task_id: str) -> ResultMeta:
        return ResultMeta(task_id=task_id, status=states.PENDING, children=[])

    # -- writing -------------------------------------------------------------------------------
    def store_result(self, meta: ResultMeta) -> None:
        """Write ``meta`` unless a SUCCESS is already stored for that task."""
        self.store_many([meta])

    def store_many(self, metas: Sequence[ResultMeta]) -> None:
        if not metas:
            return
        keys, reads = self._plan(metas)
        current = dict(zip(reads, self.store.mget(reads), strict=True)) if reads else {}
        self.store.set_many(self._writes(metas, keys, current))

    def _plan(self, metas: Sequence[ResultMeta]) -> tuple[list[str], list[str]]:
        """(the key of each meta, the keys to read first: a non-SUCCESS record is not written
        over a stored SUCCESS, so only those writes need the current record)."""
        keys = [self.key_for(m.task_id) for m in metas]
        reads = [k for k, m in zip(keys, metas, strict=True) if m.status != states.SUCCESS]
        return keys, list(dict.fromkeys(reads))

    def _writes(
        self, metas: Sequence[ResultMeta], keys: Sequence[str], current: dict[str, bytes | None]
    ) -> list[tuple[str, bytes, float | None]]:
        """The (key, record, expiry) writes of ``metas``, given the records read by ``_plan``."""
        items: list[tuple[str, bytes, float | None]] = []
        for key, meta in zip(keys, metas, strict=True):
            existing = current.get(key) if meta.status != states.SUCCESS else None
            if existing is not None:
                try:
                    if self.decode_meta(meta.task_id, existing).status == states.SUCCESS:
                        continue
                except DecodeError:
                    pass
            items.append((key, self.encode_meta(meta), self.expires))
        return items

    def forget(self, task_id: str) -> None:
        self.store.delete([self.key_for(task_id)])

    # -- reading -------------------------------------------------------------------------------
    def get_meta(self, task_id: str) -> ResultMeta:
        payload = self.store.get(self.key_for(task_id))
        return self.pending(task_id) if payload is None else self.decode_meta(task_id, payload)

    def get_many(self, task_ids: Sequence[str]) -> list[ResultMeta]:
        payloads = self.store.mget([self.key_for(t) for t in task_ids])
        return [
            self.pending(t) if p is None else self.decode_meta(t, p)
            for t, p in zip(task_ids, payloads, strict=True)
        ]

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5
    ) -> ResultMeta:
        """Block until the task is in a ready state; ``TimeoutError`` after ``timeout``.

        The record is read once before the deadline counts (a ready result is returned even
        with ``timeout=0``). A store that ``watches`` reads it inside its first
        ``wait_for_change`` (after it starts listening: one round trip on Redis) instead of
        with a separate ``get`` first.
        """
        key = self.key_for(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.store.watches:
            first = 5.0 if timeout is None else max(0.0, min(timeout, 5.0))
            payload = self.store.wait_for_change(key, None, first)
        else:
            payload = self.store.get(key)
        while True:
            if payload is not None:
                meta = self.decode_meta(task_id, payload)
                if meta.status in states.READY_STATES:
                    return meta
            if deadline is None:
                step = 5.0
            else:
                step = deadline - time.monotonic()
                if step <= 0:
                    raise TimeoutError(f"The operation timed out waiting for task {task_id}")
                step = min(step, 5.0)
            payload = self.store.wait_for_change(key, payload, step)

    # -- groups --------------------------------------------------------------------------------
    def save_group(self, group_id: str, result_ids: Sequence[str]) -> None:
        value = {"result": [[group_id, None], [[[tid, None], None] for tid in result_ids]]}
        _, _, payload = serialization.dumps(value, self.serializer)
        self.store.set(self.group_key_for(group_id), payload, self.expires)

    def restore_group(self, group_id: str) -> list[str] | None:
        payload = self.store.get(self.group_key_for(group_id))
        if payload is None:
            return None
        content_type, encoding, _ = serialization.dumps(None, self.serializer)
        data = serialization.loads(payload, content_type, encoding, accept=self.accept)
        try:
            return [str(item[0][0]) for item in data["result"][1]]
        except (KeyError, IndexError, TypeError) as exc:
            raise DecodeError(f"group record {group_id} is malformed", field="result") from exc

    def delete_group(self, group_id: str) -> None:
        self.store.delete([self.group_key_for(group_id)])

    # -- chords (spec §5.5) ----------------------------------------------------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        """Before a chord's header is sent: how many header results its join waits for (Celery
        5.7: ``DEL <gid>.c``, ``SET <gid>.s <n>``)."""
        key = self.group_key_for(group_id)
        self.store.delete([f"{key}.c"])
        self.store.set(f"{key}.s", str(int(size)).encode("ascii"), self.expires)

    def chord_add(
        self,
        group_id: str,
        task_id: str,
        group_index: int | None,
        state: str,
        value: Any,
        token: str,
        claim_now: bool = False,
    ) -> JoinAdd:
        """The ``JoinAdd`` of a header task's outcome: Celery's entry ``[1, task_id, state,
        result]`` (exceptions as dicts), scored by ``group_index``, deduplicated by
        ``<task_id>:<group_index>``."""
        if isinstance(value, BaseException):
            value = exception_to_dict(value, serializer=self.serializer)
        _, _, entry = serialization.dumps([1, task_id, state, value], self.serializer)
        index = "+inf" if group_index is None else str(int(group_index))
        score = math.inf if group_index is None else float(group_index)
        key = self.group_key_for(group_id)
        return JoinAdd(key, f"{task_id}:{index}", score, entry, token, claim_now)

    def chord_join_many(self, adds: Sequence[JoinAdd]) -> list[JoinState]:
        return self.store.join_add_many(adds, self.expires, JOIN_CLAIM_SECONDS)

    def decode_chord_entries(self, payloads: Sequence[bytes]) -> list[tuple[str, str, Any]]:
        """``(task_id, state, result)`` of each entry; exceptions rebuilt."""
        content_type, encoding, _ = serialization.dumps(None, self.serializer)
        entries: list[tuple[str, str, Any]] = []
        for payload in payloads:
            data = serialization.loads(payload, content_type, encoding, accept=self.accept)
            if not isinstance(data, (list, tuple)) or len(data) != 4:
                raise DecodeError(f"chord entry is not [1, id, state, result]: {data!r}", "entry")
            _, task_id, state, result = data
            if state in states.EXCEPTION_STATES and isinstance(result, dict):
                result = exception_from_dict(result)
            entries.append((str(task_id), str(state), result))
        return entries

    def chord_entries(self, group_id: str) -> list[tuple[str, str, Any]]:
        """The header results joined so far, in header order."""
        return self.decode_chord_entries(self.store.join_values(self.group_key_for(group_id)))

    def chord_finish(self, group_id: str, token: str) -> bool:
        return self.store.join_finish(self.group_key_for(group_id), token, JOIN_DONE_SECONDS)

    def cleanup(self) -> int:
        return self.store.cleanup()

    def close(self) -> None:
        self.store.close()

    def describe(self) -> str:
        return self.store.describe()


class AsyncResultBackend:
    """The worker's view of a ``ResultBackend``: the same calls, awaited.

    ``store``: an ``AsyncKeyValueStore`` over the same data as ``backend.store``. When omitted,
    the native async store of ``backend.store``'s driver is used if it has one
    (``celeriac.backends.urls.ASYNC_STORES``; ``native=False`` declines it); without one, the
    calls run the synchronous ``backend`` on one I/O thread. ``close`` closes what this object
    opened (the native store, or the thread), never ``backend``.
    """

    def __init__(
        self,
        backend: ResultBackend,
        store: AsyncKeyValueStore | None = None,
        *,
        native: bool = True,
    ) -> None:
        self.sync = backend
        self._owns_store = False
        if store is None and native:
            from celeriac.backends.urls import native_async_store

            store = native_async_store(backend.store)
            self._owns_store = store is not None
        self.store = store
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if store is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "celeriac-results")

    async def _run(self, func: Any, *args: Any) -> Any:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, func, *args)

    async def store_many(self, metas: Sequence[ResultMeta]) -> None:
        if not metas:
            return
        if self.store is None:
            await self._run(self.sync.store_many, list(metas))
            return
        await self.store.set_many(await self.writes_for(metas))

    async def writes_for(
        self, metas: Sequence[ResultMeta]
    ) -> list[tuple[str, bytes, float | None]]:
        """The (key, record, expiry) writes ``store_many`` makes for ``metas`` (it reads what
        it must first: a non-SUCCESS record is not written over a stored SUCCESS). Needs the
        native store (``self.store``)."""
        assert self.store is not None
        keys, reads = self.sync._plan(metas)
        current = dict(zip(reads, await self.store.mget(reads), strict=True)) if reads else {}
        return self.sync._writes(metas, keys, current)

    async def get_meta(self, task_id: str) -> ResultMeta:
        if self.store is None:
            meta: ResultMeta = await self._run(self.sync.get_meta, task_id)
            return meta
        payload = await self.store.get(self.sync.key_for(task_id))
        if payload is None:
            return self.sync.pending(task_id)
        return self.sync.decode_meta(task_id, payload)

    # -- chords --------------------------------------------------------------------------------
    def _joins_native(self) -> bool:
        return self.store is not None and self.store.supports_joins

    async def _run_sync(self, func: Any, *args: Any) -> Any:
        if self._pool is None:  # a native store without joins: a thread for the sync calls
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "celeriac-results")
        return await self._run(func, *args)

    async def set_chord_size(self, group_id: str, size: int) -> None:
        if self.store is None:
            await self._run(self.sync.set_chord_size, group_id, size)
            return
        key = self.sync.group_key_for(group_id)
        await self.store.delete([f"{key}.c"])
        await self.store.set(f"{key}.s", str(int(size)).encode("ascii"), self.sync.expires)

    async def chord_join_many(self, adds: Sequence[JoinAdd]) -> list[JoinState]:
        if not adds:
            return []
        if self.store is not None and self._joins_native():
            return await self.store.join_add_many(adds, self.sync.expires, JOIN_CLAIM_SECONDS)
        found: list[JoinState] = await self._run_sync(self.sync.chord_join_many, list(adds))
        return found

    async def chord_entries(self, group_id: str) -> list[tuple[str, str, Any]]:
        if self.store is not None and self._joins_native():
            payloads = await self.store.join_values(self.sync.group_key_for(group_id))
            return self.sync.decode_chord_entries(payloads)
        found: list[tuple[str, str, Any]] = await self._run_sync(self.sync.chord_entries, group_id)
        return found

    async def chord_finish(self, group_id: str, token: str) -> bool:
        if self.store is not None and self._joins_native():
            key = self.sync.group_key_for(group_id)
            return await self.store.join_finish(key, token, JOIN_DONE_SECONDS)
        done: bool = await self._run_sync(self.sync.chord_finish, group_id, token)
        return done

    async def incr(self, key: str, amount: int = 1) -> int:
        if self.store is None:
            value: int = await self._run(self.sync.store.incr, key, amount, self.sync.expires)
            return value
        return await self.store.incr(key, amount, self.sync.expires)

    async def cleanup(self) -> int:
        if self.store is None:
            removed: int = await self._run(self.sync.cleanup)
            return removed
        return await self.store.cleanup()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.store is not None and self._owns_store:
            await self.store.close()

    def describe(self) -> str:
        return self.sync.describe()


def now_utc() -> datetime:
    from celeriac._internal.timeutils import utcnow

    return utcnow()
