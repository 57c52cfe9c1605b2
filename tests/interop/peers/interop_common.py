"""What the Celery and the Celeriac peers share: configuration, gates, type reports.

Pure Python plus redis-py (present in the main virtualenv and in both Celery ones). Each peer
process reads its configuration from the JSON in ``INTEROP_CONFIG``:

``redis_url``            broker and result backend (its own database index)
``prefix``               the broker's ``global_keyprefix`` (both sides)
``result_prefix``        the result backend's ``global_keyprefix`` as Celery is given it
``celeriac_result_prefix``  the same for Celeriac (see ``fleet.default_prefixes``)
``visibility_timeout``   seconds (the same on every side of a fleet)
``default_queue``        where a client sends by default (a worker: what it consumes)
``routes``               ``task_routes`` (task name -> queue)
``hostname``             node name of a worker
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import time
import uuid
from typing import Any

import redis

CONFIG_ENV = "INTEROP_CONFIG"


def load_config() -> dict[str, Any]:
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set: the interop peers are started by the tests")
    config: dict[str, Any] = json.loads(raw)
    return config


def broker_options(config: dict[str, Any]) -> dict[str, Any]:
    """``broker_transport_options``, identical on both sides (Celery's names)."""
    return {
        "global_keyprefix": config["prefix"],
        "visibility_timeout": config["visibility_timeout"],
        # Celery >= 5.6 (kombu): sweep ``unacked`` every second instead of every 100 s
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # Celeriac (proposed, .notes/interop-eta-delivery.diff): publish eta/countdown messages
        # to the queue list as Celery does, not to Celeriac's delayed zset; ignored by kombu
        "eta_delivery": "list",
    }


def backend_options(config: dict[str, Any], impl: str) -> dict[str, Any]:
    """``result_backend_transport_options`` of ``impl`` ("celery" or "celeriac")."""
    key = "celeriac_result_prefix" if impl == "celeriac" else "result_prefix"
    return {"global_keyprefix": config[key]}


class Gates:
    """Named flags in Redis (under the fleet's prefix) that tests open to let tasks go on."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.prefix = config["prefix"] + "interop.gate."
        self.client = redis.Redis.from_url(config["redis_url"])

    def is_open(self, name: str) -> bool:
        return bool(self.client.exists(self.prefix + name))

    def mark(self, name: str) -> bool:
        """Set flag ``name``; True if this call set it (it was not set before)."""
        return bool(self.client.set(self.prefix + name, "1", nx=True, ex=3600))

    def incr(self, name: str) -> int:
        value = int(self.client.incr(self.prefix + name))
        self.client.expire(self.prefix + name, 3600)
        return value

    def wait_open(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_open(name):
                return True
            time.sleep(0.05)
        return False


def type_report(value: Any) -> Any:
    """The Python types a worker decoded ``value`` into, as plain JSON (names only)."""
    if isinstance(value, dict):
        return {str(k): type_report(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [type_report(v) for v in value]
    kind = type(value).__name__
    if isinstance(value, datetime.datetime):
        return f"datetime({'aware' if value.tzinfo is not None else 'naive'})"
    if isinstance(value, (datetime.date, datetime.time, decimal.Decimal, uuid.UUID, bytes)):
        return kind
    return kind


def iso(value: Any) -> str | None:
    """A request's ``eta``/``expires`` as ISO-8601 (they are datetimes or strings or None)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)
