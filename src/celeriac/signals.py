"""Signals with Celery's names: ``connect`` a receiver, ``send`` from the sender.

Receivers are called in connection order with ``sender=`` and keyword arguments; a receiver that
raises is logged and does not stop the others (Celery's ``send_robust`` behaviour).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Receiver = Callable[..., Any]


class Signal:
    """A named hook that any number of receivers can connect to."""

    def __init__(self, name: str, providing_args: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.providing_args = providing_args
        self._receivers: list[tuple[Receiver, Any]] = []
        self._lock = threading.Lock()

    def connect(
        self, receiver: Receiver | None = None, *, sender: Any = None, weak: bool = False
    ) -> Any:
        """Connect ``receiver``; usable as ``@sig.connect`` or ``@sig.connect(sender=...)``."""

        def _connect(func: Receiver) -> Receiver:
            with self._lock:
                if not any(r is func and s is sender for r, s in self._receivers):
                    self._receivers.append((func, sender))
            return func

        if receiver is None:
            return _connect
        return _connect(receiver)

    def disconnect(self, receiver: Receiver, *, sender: Any = None) -> bool:
        with self._lock:
            before = len(self._receivers)
            self._receivers = [
                (r, s) for r, s in self._receivers if not (r is receiver and s is sender)
            ]
            return len(self._receivers) != before

    @property
    def receivers(self) -> list[Receiver]:
        return [r for r, _ in self._receivers]

    def send(self, sender: Any = None, **named: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver; exceptions are logged and returned, never raised."""
        if not self._receivers:
            return []
        results: list[tuple[Receiver, Any]] = []
        for receiver, wanted in list(self._receivers):
            if (
                wanted is not None
                and wanted is not sender
                and wanted != getattr(sender, "name", sender)
            ):
                continue
            try:
                results.append((receiver, receiver(signal=self, sender=sender, **named)))
            except Exception as exc:
                import logging  # here: ``import celeriac`` does not load logging

                logging.getLogger("celeriac.signals").exception(
                    "Signal handler %r raised: %r", receiver, exc
                )
                results.append((receiver, exc))
        return results

    send_robust = send

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_retry = Signal("task_retry")
task_failure = Signal("task_failure")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")
celeryd_init = Signal("celeryd_init")
celeryd_after_setup = Signal("celeryd_after_setup")
import_modules = Signal("import_modules")
worker_init = Signal("worker_init")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_shutting_down = Signal("worker_shutting_down")
heartbeat_sent = Signal("heartbeat_sent")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
beat_init = Signal("beat_init")
eventlet_pool_started = Signal("eventlet_pool_started")
