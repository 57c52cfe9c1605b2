"""Identifiers: task ids, client "oid", node names."""

from __future__ import annotations

import os
import threading
from typing import Any


def new_id() -> str:
    """A fresh task id: a random (version 4) UUID as text, like ``str(uuid.uuid4())``, built
    straight from 16 random bytes (without the ``uuid.UUID`` object; this is on every publish)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


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
