"""Identifiers: task ids, client "oid", node names."""

from __future__ import annotations

import os
import socket
import threading
import uuid


def new_id() -> str:
    """A fresh task id (uuid4 string, as Celery uses)."""
    return str(uuid.uuid4())


def hostname() -> str:
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
    seed = f"{hostname()}-{os.getpid()}-{threading.get_ident()}-{id(threading.current_thread())}"
    return str(uuid.uuid3(uuid.NAMESPACE_OID, seed))


def origin() -> str:
    """The ``origin`` header of a message a client sends: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{hostname()}"
