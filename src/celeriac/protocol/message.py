"""Celery's task message, protocol v2 (sent and read) and v1 (read only). Pure.

``TaskMessage`` holds what a task message means; ``encode`` turns it into a ``RawMessage`` whose
headers/properties/body equal what Celery 5 sends (spec §2), and ``decode`` reads a ``RawMessage``
(v2, or v1 when there is no ``task`` header) back, raising ``DecodeError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celeriac.protocol.envelope import RawMessage


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """One task invocation as Celery's protocol v2 describes it."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    # embed
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    # headers
    lang: str = "py"
    shadow: str | None = None
    eta: datetime | None = None  # aware
    expires: datetime | None = None  # aware
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)  # (hard, soft)
    root_id: str | None = None
    parent_id: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    replaced_task_nesting: int = 0
    stamped_headers: list[str] | None = None
    stamps: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, Any] = field(default_factory=dict)  # merged at the top level
    # properties
    reply_to: str | None = None
    priority: int = 0
    delivery_mode: int = 2
    extra_properties: dict[str, Any] = field(default_factory=dict)
    # how the body is (to be) serialised
    serializer: str = "json"
    compression: str | None = None
    protocol_version: int = 2  # 1 when decoded from a v1 message


def encode(message: TaskMessage, *, now: datetime | None = None) -> RawMessage:
    """The ``RawMessage`` Celery would send for ``message`` (protocol v2).

    ``argsrepr``/``kwargsrepr`` default to the reprs of args/kwargs (truncated at 1024 chars);
    ``expiration`` (ms from ``now`` until ``expires``, a string, clamped at "0") is set when
    ``expires`` is; ``correlation_id`` = id; ``root_id`` defaults to id.
    """
    raise NotImplementedError


def decode(raw: RawMessage, accept: Iterable[str] | None = None) -> TaskMessage:
    """Read a v2 or v1 task message; ``DecodeError`` / ``ContentDisallowed`` on bad input."""
    raise NotImplementedError
