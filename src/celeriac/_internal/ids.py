"""Identifiers: task ids, client "oid", node names."""

from __future__ import annotations

import os
import threading
from typing import Any

#: the variant digit of an RFC 4122 UUID (``10xx``) for each random hex digit
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
#: ids made ahead (``_fresh_ids``); emptied in a forked child, which must not reuse them
_READY: list[str] = []
#: how many ids one ``os.urandom`` call makes
_BATCH = 64


def _fresh_ids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, from one ``os.urandom`` call."""
    h = os.urandom(16 * count).hex()
    v = _VARIANT
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{v[h[i + 16]]}"
        f"{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def new_id() -> str:
    """A fresh task id: a random (version 4) UUID as text, like ``str(uuid.uuid4())``.

    Made 64 at a time from one ``os.urandom`` call, without ``uuid.UUID`` objects (a publish
    takes two: the task id and the delivery tag): 0.9 us per id instead of 1.7. ``list.pop``
    and ``list.extend`` are atomic under the GIL, so two threads never get one id; a forked
    child empties the list (``os.register_at_fork``), so it never hands out its parent's."""
    try:
        return _READY.pop()
    except IndexError:
        fresh = _fresh_ids(_BATCH)
        first = fresh.pop()
        _READY.extend(fresh)
        return first


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_READY.clear)


def hostname() -> str:
    import socket

    return socket.gethostname()


def default_nodename(name: str | None = None) -> str:
    """``name@host``, expanding ``%h`` (full host), ``%n`` (short name), ``%d`` (domain)."""
    host = hostname()
    short, _, domain = host.partition(".")
    if not name:
        return f"celery@{host}"
    name = name.replace("%h", host).replace("%n", short).replace("%d", domain)
    return name if "@" in name else f"{name}@{host}"


def client_oid() -> str:
    """A uuid3 unique per process and thread (Celery's ``reply_to`` value)."""
    import uuid

    seed = f"{hostname()}-{os.getpid()}-{threading.get_ident()}-{id(threading.current_thread())}"
    return str(uuid.uuid3(uuid.NAMESPACE_OID, seed))


_ORIGIN: list[Any] = [None, ""]  # [pid, origin]: computed once per process


def origin() -> str:
    """The ``origin`` header of a message a client sends: ``gen<pid>@<host>``."""
    pid = os.getpid()
    if _ORIGIN[0] != pid:
        _ORIGIN[1] = f"gen{pid}@{hostname()}"
        _ORIGIN[0] = pid
    return str(_ORIGIN[1])
