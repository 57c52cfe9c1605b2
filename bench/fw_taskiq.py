"""taskiq (a peer, with ``--peers``): taskiq-redis's ``ListQueueBroker`` and result backend.

Concurrency 2 is ``taskiq worker ... --workers 1 --max-async-tasks 2``: one worker process
(beside taskiq's supervising main process; the idle RSS counts both) running up to two async
tasks at once. It logs at ERROR: ``add_nr`` stores no result by raising ``NoResultError``, which
taskiq logs as a warning for every task. taskiq has no result notification: ``get`` is
``wait_result(check_interval=0.001)``, a poll every millisecond (its default is 0.2 s). The
client's coroutines run on one event loop that the adapter keeps.

No bulk path: a message is sent by one ``kiq()`` (one LPUSH) at a time; the queue before a drain
is filled by ``kiq()`` calls, 50 at a time with ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from bench.frameworks import Adapter, count_keys


class TaskiqAdapter(Adapter):
    name = "taskiq"
    app_module = "bench.apps.taskiq_app"
    queue_key = "taskiq"

    def __init__(self) -> None:
        from bench.apps import taskiq_app

        self.module = taskiq_app
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(taskiq_app.broker.startup())

    def delay(self, task: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.task(task).kiq(*args))

    def get(self, handle: Any, timeout: float) -> Any:
        wait = handle.wait_result(check_interval=0.001, timeout=timeout)
        result = self.loop.run_until_complete(wait)
        if result.is_err:
            raise RuntimeError(f"task {handle.task_id} failed: {result.error!r}")
        return result.return_value

    def preload(self, task: str, count: int) -> str:
        kiq = self.task(task).kiq

        async def fill() -> None:
            for start in range(0, count, 50):
                calls = range(start, min(count, start + 50))
                await asyncio.gather(*(kiq(i, i) for i in calls))

        self.loop.run_until_complete(fill())
        return "kiq(), 50 at a time (asyncio.gather)"

    def results_stored(self, client: Any) -> int:
        return count_keys(client, self.module.RESULT_PREFIX + ":*")

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "taskiq", "worker", f"{self.app_module}:broker",
            "--workers", "1", "--max-async-tasks", str(concurrency), "--log-level", "ERROR",
        ]  # fmt: skip
