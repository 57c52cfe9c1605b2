"""What the scenarios need from a framework, and the registry of frameworks.

An adapter is created inside a scenario subprocess (so each run imports its framework afresh)
and offers: ``delay``/``get`` for one call, ``bulk_paths`` (its bulk paths by name; ``{}`` for a
framework without one: its bulk row stays empty), ``preload`` (fill the queue before a drain),
``queued``/``message_bytes``/``results_stored`` (what the scenarios read back from Redis to check
the work: by default a kombu list and ``celery-task-meta-*`` keys; a peer with its own layout
overrides them), ``chord`` (a chord of no-op tasks summed by its body) and ``worker_argv`` (the
command of a worker with a pool and a concurrency).
``available(name)`` tells, without importing it, whether the package is installed, for the clean
"not installed" skip of ``--peers``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

#: framework name -> (adapter "module:Class", package that must be installed)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "celeriac": ("bench.fw_celeriac:CeleriacAdapter", "celeriac"),
    "celery": ("bench.fw_celery:CeleryAdapter", "celery"),
    "huey": ("bench.fw_huey:HueyAdapter", "huey"),
    "dramatiq": ("bench.fw_dramatiq:DramatiqAdapter", "dramatiq"),
    "rq": ("bench.fw_rq:RQAdapter", "rq"),
    "arq": ("bench.fw_arq:ArqAdapter", "arq"),
    "taskiq": ("bench.fw_taskiq:TaskiqAdapter", "taskiq_redis"),
}

#: the queue every framework publishes to (kombu's list key for Celery and Celeriac)
QUEUE = "celery"


def available(name: str) -> bool:
    """Whether the package behind framework ``name`` is installed (nothing is imported)."""
    return importlib.util.find_spec(FRAMEWORKS[name][1]) is not None


def implemented(name: str) -> bool:
    """Whether the benchmark has an adapter for framework ``name``."""
    return bool(FRAMEWORKS[name][0])


def load(name: str) -> Adapter:
    """Import framework ``name`` and return its adapter (call inside a scenario subprocess)."""
    path = FRAMEWORKS[name][0]
    module_name, _, attr = path.partition(":")
    adapter: Adapter = getattr(importlib.import_module(module_name), attr)()
    return adapter


def redis_client(url: str | None = None) -> Any:
    import redis

    return redis.Redis.from_url(url or os.environ["BENCH_REDIS_URL"])


class Adapter:
    """Base adapter: the parts every framework on the kombu Redis layout shares."""

    name = ""
    app_module = ""
    #: the Redis list its messages wait in
    queue_key = QUEUE
    #: the module with ``chord`` (empty: the framework has no chord in the benchmark)
    canvas_module = ""

    def task(self, name: str) -> Any:
        return getattr(importlib.import_module(self.app_module), name)

    def delay(self, task: str, *args: Any) -> Any:
        return self.task(task).delay(*args)

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def chord(self, count: int) -> Any:
        """``chord([add.s(i, i) for i in range(count)])(tsum.s())``: the body's result handle."""
        canvas = importlib.import_module(self.canvas_module)
        add, tsum = self.task("add"), self.task("tsum")
        return canvas.chord([add.s(i, i) for i in range(count)])(tsum.s())

    def bulk_paths(self) -> dict[str, Callable[[str, int], None]]:
        """Description -> function sending ``count`` calls of ``task`` by a bulk path."""
        return {}

    def preload(self, task: str, count: int) -> str:
        """Queue ``count`` calls of ``task`` before a worker starts; returns how."""
        self.delay(task, 2, 3)
        clone_head(redis_client(), QUEUE, count)
        return "one delay(), cloned with fresh ids (pipelined LPUSH)"

    def queued(self, client: Any) -> int:
        """How many messages wait in the queue (``client``: redis-py)."""
        return int(client.llen(self.queue_key))

    def message_bytes(self, client: Any) -> int | None:
        """The size on Redis of one queued message, or None when the queue is empty."""
        head = client.lindex(self.queue_key, 0)
        return len(head) if head else None

    def results_stored(self, client: Any) -> int:
        """How many task results are stored in Redis now."""
        return count_keys(client, "celery-task-meta-*")

    def worker_argv(self, pool: str, concurrency: int) -> list[str]:
        raise NotImplementedError

    def python(self) -> str:
        return sys.executable


def count_keys(client: Any, pattern: str) -> int:
    """How many keys match ``pattern`` (SCAN, not KEYS)."""
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def hash_bytes(client: Any, key: str) -> int | None:
    """The size of a hash's fields and values (a message kept as a hash), or None if absent."""
    fields = client.hgetall(key)
    return sum(len(k) + len(v) for k, v in fields.items()) or None


def clone_head(client: Any, key: str, count: int, chunk: int = 2000) -> int:
    """Replace the one message in list ``key`` by ``count`` copies with fresh task ids.

    Works on kombu's Redis envelope (Celery's and Celeriac's wire format): ``headers.id``,
    ``headers.root_id``, ``properties.correlation_id`` and ``properties.delivery_tag`` are new
    for each copy, so each copy is a distinct task with its own result key. Returns the size of
    one message in bytes.
    """
    raw = client.lindex(key, 0)
    if raw is None:
        raise RuntimeError(f"no message in {key!r} to clone")
    client.delete(key)
    envelope = json.loads(raw)
    headers, properties = envelope["headers"], envelope["properties"]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        task_id = str(uuid.uuid4())
        headers["id"] = headers["root_id"] = task_id
        properties["correlation_id"] = task_id
        properties["delivery_tag"] = str(uuid.uuid4())
        pipe.lpush(key, json.dumps(envelope))
        if (i + 1) % chunk == 0:
            pipe.execute()
    pipe.execute()
    return len(raw)
