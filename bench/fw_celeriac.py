"""Celeriac in the benchmark: ``bench.apps.celeriac_app`` and ``celeriac worker``.

Bulk paths: ``app.prepare`` + ``app.encode`` per call, then one ``transport.publish_many`` (one
pipelined round trip; what a bulk API does underneath), and ``group(...).apply_async()`` once
``celeriac.canvas`` has ``group``. The faster counts.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from bench.frameworks import Adapter, redis_client


class CeleriacAdapter(Adapter):
    name = "celeriac"
    app_module = "bench.apps.celeriac_app"
    canvas_module = "celeriac.canvas"

    def __init__(self) -> None:
        from bench.apps import celeriac_app

        self.module = celeriac_app
        self.app = celeriac_app.app

    def bulk_paths(self) -> dict[str, Callable[[str, int], None]]:
        from celeriac import canvas

        paths: dict[str, Callable[[str, int], None]] = {
            "app.prepare + transport.publish_many": lambda task, count: self.publish_many(
                self.task(task), count
            )
        }
        group = getattr(canvas, "group", None)
        if group is not None:
            paths["group(...).apply_async()"] = lambda task, count: group(
                self.task(task).s(i, i) for i in range(count)
            ).apply_async()
        return paths

    def publish_many(self, task: Any, count: int) -> None:
        app = self.app
        items = []
        for i in range(count):
            publication = app.prepare(task.name, (i, i), {}, task=task)
            items.append((publication.queue, app.encode(publication.message), publication.eta))
        app.transport.publish_many(items)

    def preload(self, task: str, count: int) -> str:
        if self.app.transport_url.startswith("redis"):
            return super().preload(task, count)
        sig = self.task(task)
        for start in range(0, count, 1000):
            self.publish_many(sig, min(1000, count - start))
        return "transport.publish_many in batches of 1,000"

    def results_stored(self, client: Any) -> int:
        """Results in Redis, or in the SQLite file when the backend is SQLite."""
        url = os.environ.get("BENCH_BACKEND_URL", "")
        if not url.startswith("sqlite"):
            return super().results_stored(client)
        import sqlite3

        from celeriac._internal.sqlite import sqlite_path

        with contextlib.closing(sqlite3.connect(sqlite_path(url))) as db:
            query = "SELECT COUNT(*) FROM celeriac_results WHERE key LIKE 'celery-task-meta-%'"
            return int(db.execute(query).fetchone()[0])

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "celeriac.cli", "-A", self.app_module, "worker",
            "-P", pool, "-c", str(concurrency), "-l", "WARNING",
        ]  # fmt: skip

    def flush_broker(self) -> None:
        url = os.environ.get("BENCH_BROKER_URL", "")
        if url.startswith("redis"):
            redis_client(url).flushdb()
