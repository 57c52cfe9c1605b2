"""Celery 5 in the benchmark: ``bench.apps.celery_app`` and ``celery worker``.

Two bulk paths are timed, ``group(...).apply_async()`` and an ``apply_async`` loop with one
shared producer; the faster counts. The worker
runs with ``--without-gossip --without-mingle --without-heartbeat`` (no cluster chatter, as
benchmarks of Celery usually do; it does not slow the task path) and Celery's defaults otherwise
(prefetch multiplier 4, early ack).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench.frameworks import Adapter


class CeleryAdapter(Adapter):
    name = "celery"
    app_module = "bench.apps.celery_app"
    canvas_module = "celery"

    def __init__(self) -> None:
        from bench.apps import celery_app

        self.module = celery_app
        self.app = celery_app.app

    def bulk_paths(self) -> dict[str, Callable[[str, int], None]]:
        return {
            "group(...).apply_async()": self._group,
            "apply_async loop, one shared producer": self._producer_loop,
        }

    def _group(self, task: str, count: int) -> None:
        from celery import group

        sig = self.task(task)
        group(sig.s(i, i) for i in range(count)).apply_async()

    def _producer_loop(self, task: str, count: int) -> None:
        sig = self.task(task)
        with self.app.producer_or_acquire() as producer:
            for i in range(count):
                sig.apply_async((i, i), producer=producer)

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "-P", pool, "-c", str(concurrency), "-l", "WARNING", "-n", "bench@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
