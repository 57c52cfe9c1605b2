"""Huey (a peer, with ``--peers``): ``RedisHuey(notify_result=True)`` and ``huey_consumer``.

Huey's wire format is its own (pickled), so its queue is filled by its own calls; its bulk path
is ``task.map(...)``; its worker is ``huey_consumer -k thread -w N``; ``get`` blocks on the result
notice (``notify_result``) rather than polling; its results are the fields of one hash.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from bench.frameworks import Adapter


class HueyAdapter(Adapter):
    name = "huey"
    app_module = "bench.apps.huey_app"
    queue_key = "huey.redis.bench"

    def __init__(self) -> None:
        from bench.apps import huey_app

        self.module = huey_app

    def delay(self, task: str, *args: Any) -> Any:
        return self.task(task)(*args)

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(blocking=True, timeout=timeout)

    def bulk_paths(self) -> dict[str, Callable[[str, int], None]]:
        def send(task: str, count: int) -> None:
            self.task(task).map((i, i) for i in range(count))

        return {"task.map(...)": send}

    def preload(self, task: str, count: int) -> str:
        self.task(task).map((i, i) for i in range(count))
        return "task.map(...)"

    def results_stored(self, client: Any) -> int:
        """Huey keeps every result as a field of one hash."""
        return int(client.hlen(self.module.huey.storage.result_key))

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "huey.bin.huey_consumer", f"{self.app_module}.huey",
            "-k", pool, "-w", str(concurrency), "-q",
        ]  # fmt: skip
