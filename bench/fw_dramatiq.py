"""Dramatiq (a peer, with ``--peers``): ``RedisBroker`` with the ``Results`` middleware.

Concurrency 2 is ``dramatiq --processes 1 --threads 2``: one worker process with two worker
threads (Dramatiq's main process forks it and stays beside it; the idle RSS counts both).
``get`` blocks on the result key (``RedisBackend``: BRPOPLPUSH; whole seconds only).

No bulk path: ``group(...).run()`` enqueues its messages one by one, as a ``send()`` loop
does, so the enqueue row shows the ``send()`` loop only. A message is a list entry (its id,
``dramatiq:default``) plus a field of a hash (its body, ``dramatiq:default.msgs``); the size
shown is the body's. The queue before a drain is filled by a ``send()`` loop.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.frameworks import Adapter, count_keys

QUEUE = "dramatiq:default"


class DramatiqAdapter(Adapter):
    name = "dramatiq"
    app_module = "bench.apps.dramatiq_app"
    queue_key = QUEUE

    def __init__(self) -> None:
        from bench.apps import dramatiq_app

        self.module = dramatiq_app

    def delay(self, task: str, *args: Any) -> Any:
        return self.task(task).send(*args)

    def get(self, handle: Any, timeout: float) -> Any:
        ms = max(1000, int(timeout * 1000))
        return handle.get_result(backend=self.module.backend, block=True, timeout=ms)

    def preload(self, task: str, count: int) -> str:
        actor = self.task(task)
        for i in range(count):
            actor.send(i, i)
        return "a send() loop"

    def message_bytes(self, client: Any) -> int | None:
        message_id = client.lindex(QUEUE, 0)
        body = client.hget(QUEUE + ".msgs", message_id) if message_id else None
        return len(body) if body else None

    def results_stored(self, client: Any) -> int:
        return count_keys(client, self.module.backend.namespace + ":*")

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        return [
            sys.executable, "-m", "dramatiq", self.app_module,
            "--processes", "1", "--threads", str(concurrency),
        ]  # fmt: skip
