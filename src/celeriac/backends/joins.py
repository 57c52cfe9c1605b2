"""The chord join primitive's values and its default implementation (spec §5.5).

A *join* collects a chord's header results under one base key
(``celery-taskset-meta-<group_id>``): each header task adds its entry once (``member`` =
``<task_id>:<group_index>``, so a redelivered task counts once), and the add that brings the
count to the size stored at ``<key>.s`` (plus ``<key>.t``) takes the claim ``<key>.c``: its
caller fires the body, then ``finish`` marks the join ``done``. ``KeyValueStore.join_add_many``,
``join_values`` and ``join_finish`` are the driver hooks; ``join_decision`` is the rule drivers
without a script share.

The default below keeps the members in one JSON record (``<key>.j``) written with the store's
``get``/``set``, under one process-wide lock: atomic within a process only. The memory, SQLite
and Redis drivers override it with their own atomic operations.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.backends.base import KeyValueStore

#: how long a claim on a full join lasts: the claimant fires the body well within it; a claimant
#: that dies leaves the join to a redelivered header task once it lapses
JOIN_CLAIM_SECONDS = 30.0
#: how long a completed join stays marked "done" (late duplicates are ignored), as Celery 5.7
JOIN_DONE_SECONDS = 300.0
_LOCK = threading.RLock()


@dataclass(frozen=True, slots=True)
class JoinAdd:
    """One member reported to the join ``key`` (a chord header task that finished)."""

    key: str  # the join's base key, e.g. "celery-taskset-meta-<group_id>"
    member: str  # added once: "<task_id>:<group_index>"
    score: float  # the order of its value (group_index; inf when unknown)
    value: bytes  # the entry
    token: str  # the caller's claim token (the same on a retried call)
    claim_now: bool = False  # claim before the join is full (a failure ends a chord early)


@dataclass(frozen=True, slots=True)
class JoinState:
    """The join after one ``JoinAdd``."""

    count: int  # members in the join; -1 when the join was already completed
    total: int | None  # members expected (size + adjustment); None while no size is stored
    claimed: bool  # the caller holds the claim: it must complete the join (join_finish)


def join_decision(
    count: int,
    size: bytes | None,
    adjust: bytes | None,
    claim: bytes | None,
    add: JoinAdd,
    added: bool,
) -> tuple[int | None, bool]:
    """(total, whether ``add``'s caller may take the claim) for drivers without a script.

    ``claim_now`` counts only for a member added now: a failure reported again after its task
    had succeeded (a redelivery) must not end the chord.
    """
    if size is None:
        return None, False
    total = int(size) + int(adjust or 0)
    if count < total and not (add.claim_now and added):
        return total, False
    return total, claim is None or claim == add.token.encode()


def _record(payload: bytes | None) -> dict[str, list[Any]]:
    if payload is None:
        return {}
    data: dict[str, list[Any]] = json.loads(payload)
    return data


def _add(store: KeyValueStore, add: JoinAdd, expires: float | None, claim: float) -> JoinState:
    key = add.key
    size, adjust, holder, record = store.mget([f"{key}.s", f"{key}.t", f"{key}.c", f"{key}.j"])
    if holder == b"done":
        return JoinState(-1, None, False)
    members = _record(record)
    added = add.member not in members
    if added:
        score = None if math.isinf(add.score) else add.score
        members[add.member] = [score, base64.b64encode(add.value).decode("ascii")]
        store.set(f"{key}.j", json.dumps(members).encode("ascii"), expires)
    total, claimable = join_decision(len(members), size, adjust, holder, add, added)
    if claimable:
        store.set(f"{key}.c", add.token.encode(), claim)
    return JoinState(len(members), total, claimable)


def add_many(
    store: KeyValueStore, adds: Sequence[JoinAdd], expires: float | None, claim_seconds: float
) -> list[JoinState]:
    """The default ``KeyValueStore.join_add_many``."""
    with _LOCK:
        return [_add(store, add, expires, claim_seconds) for add in adds]


def values(store: KeyValueStore, key: str) -> list[bytes]:
    """The default ``KeyValueStore.join_values``."""
    members = _record(store.get(f"{key}.j"))
    ordered = sorted(members.values(), key=lambda m: math.inf if m[0] is None else m[0])
    return [base64.b64decode(value) for _, value in ordered]


def finish(store: KeyValueStore, key: str, token: str, done_expires: float) -> bool:
    """The default ``KeyValueStore.join_finish``."""
    with _LOCK:
        if store.get(f"{key}.c") not in (token.encode(), b"done"):
            return False
        store.delete([f"{key}.j", f"{key}.t", f"{key}.s", f"{key}.d"])
        store.set(f"{key}.c", b"done", done_expires)
        return True
