"""RQ (a peer, with ``--peers``): a ``Queue`` on Redis and ``rq worker-pool``.

An RQ worker runs one job at a time, each in a work horse it forks for the job (RQ's default
``Worker``), so concurrency 2 is two workers: ``rq worker-pool -n 2``. Results: ``result_ttl``
(RQ's default, 500 s) for ``add``, ``result_ttl=0`` (no result kept) for ``add_nr``; ``get``
blocks on the job's result stream (``job.latest_result(timeout=...)``, XREAD BLOCK).

Bulk path: ``queue.enqueue_many(...)`` (one pipeline). A message is a job hash
(``rq:job:<id>``) whose id waits in the list ``rq:queue:default``; the size shown is the
hash's fields and values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from bench.frameworks import Adapter, count_keys, hash_bytes

#: per task: the options it is enqueued with
OPTIONS: dict[str, dict[str, Any]] = {"add_nr": {"result_ttl": 0}}


class RQAdapter(Adapter):
    name = "rq"
    app_module = "bench.apps.rq_app"
    queue_key = "rq:queue:default"

    def __init__(self) -> None:
        import redis
        from rq import Queue

        self.url = os.environ["BENCH_BROKER_URL"]
        self.queue = Queue("default", connection=redis.Redis.from_url(self.url))

    def delay(self, task: str, *args: Any) -> Any:
        return self.queue.enqueue(self.task(task), *args, **OPTIONS.get(task, {}))

    def get(self, handle: Any, timeout: float) -> Any:
        result = handle.latest_result(timeout=max(1, int(timeout)))
        if result is None:
            raise TimeoutError(f"no result for job {handle.id} within {timeout} s")
        if result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"job {handle.id}: {result.type.name}: {result.exc_string}")
        return result.return_value

    def _bulk(self, task: str, count: int) -> None:
        from rq import Queue

        func, options = self.task(task), OPTIONS.get(task, {})
        jobs = [Queue.prepare_data(func, (i, i), **options) for i in range(count)]
        self.queue.enqueue_many(jobs)

    def bulk_paths(self) -> dict[str, Callable[[str, int], None]]:
        return {"queue.enqueue_many(...)": self._bulk}

    def preload(self, task: str, count: int) -> str:
        for start in range(0, count, 1000):
            self._bulk(task, min(1000, count - start))
        return "queue.enqueue_many(...), 1,000 a call"

    def message_bytes(self, client: Any) -> int | None:
        job_id = client.lindex(self.queue_key, 0)
        return hash_bytes(client, "rq:job:" + job_id.decode()) if job_id else None

    def results_stored(self, client: Any) -> int:
        return count_keys(client, "rq:results:*")

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "rq.cli", "worker-pool", "-u", self.url,
            "-n", str(concurrency), "-q", "default",
        ]  # fmt: skip
