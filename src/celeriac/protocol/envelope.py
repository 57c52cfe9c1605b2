"""``RawMessage`` — a message as a transport carries it — and kombu's Redis envelope.

A ``RawMessage`` is the AMQP-shaped triple Celery uses on every broker: ``headers`` (task metadata
in protocol v2), ``properties`` (``correlation_id``, ``reply_to``, ``delivery_mode``, ``priority``,
``expiration``, ...), and ``body`` (serialised, possibly compressed, bytes) with its
``content_type`` / ``content_encoding``.

kombu's Redis transport folds these into one JSON text (spec §3.1)::

    {"body": "<base64>", "content-encoding": "utf-8", "content-type": "application/json",
     "headers": {...}, "properties": {..., "delivery_info": {"exchange": "", "routing_key": q},
     "priority": 0, "body_encoding": "base64", "delivery_tag": "<uuid4>"}}

``dumps_envelope`` / ``loads_envelope`` convert between the two. The SQLite and memory transports
store the same envelope text, so a message looks the same on every broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message as carried by a transport (bytes body, headers, properties)."""

    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        value = self.properties.get("priority")
        return int(value) if isinstance(value, (int, float)) else 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded kombu envelope: the message plus kombu's delivery bookkeeping."""

    message: RawMessage
    delivery_tag: str
    exchange: str
    routing_key: str
    redelivered: bool = False


def dumps_envelope(
    message: RawMessage, *, routing_key: str, exchange: str = "", delivery_tag: str | None = None
) -> bytes:
    """kombu's envelope JSON for ``message`` (base64 body, fresh uuid4 delivery tag by default)."""
    raise NotImplementedError


def loads_envelope(data: bytes | str) -> Envelope:
    """Parse kombu's envelope JSON; raises ``DecodeError`` naming the bad field."""
    raise NotImplementedError


def mark_redelivered(data: bytes | str) -> bytes:
    """The same envelope with ``redelivered: true`` in headers and delivery_info (kombu restore)."""
    raise NotImplementedError
