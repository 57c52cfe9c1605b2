"""The worker: one asyncio loop doing all broker/backend I/O, pools running task functions.

``Worker(app, concurrency=, pool=, queues=)`` is the entry point (``run()`` blocks; the CLI's
``celeriac worker`` uses it). Layout: ``main`` (start/stop order, signals, banner),
``consumer`` (fetch loop, dispatch, I/O batching), ``request`` (delivery -> runnable request),
``execution`` (outcome -> I/O), ``heartbeat`` (lease renewal), ``state`` (counters),
``pools`` (solo, threads, asyncio, prefork), ``ratelimit``, ``autoscale``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.worker.main import Worker

__all__ = ["Worker"]


def __getattr__(name: str) -> Any:
    if name == "Worker":
        from celeriac.worker.main import Worker

        return Worker
    raise AttributeError(f"module 'celeriac.worker' has no attribute {name!r}")
