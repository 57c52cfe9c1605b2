"""``start_worker``: a real worker on a background thread for tests (Celery's
``celery.contrib.testing.worker.start_worker``).

::

    app = Celeriac("tests", broker="memory://t1", backend="memory://t1")

    @app.task
    def add(x, y):
        return x + y

    with start_worker(app, pool="threads", concurrency=2) as worker:
        assert add.delay(2, 3).get(timeout=5) == 5
    assert worker.state.succeeded == 1

The worker is ready (fetching) when the block starts; leaving the block stops it warm
(running tasks finish, prefetched ones go back to the queue) and re-raises an error the worker
died of. ``worker.state`` has counters (``processed``, ``succeeded``, ``failed``,
``dead_lettered``...) and ``wait_for(predicate, timeout)`` to wait on them with a deadline.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celeriac._internal.ids import hostname as host_name

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.worker.main import Worker

_numbers = itertools.count(1)


class WorkerDidNotStart(RuntimeError):
    """The worker was not ready within ``ready_timeout``."""


class WorkerDidNotStop(RuntimeError):
    """The worker did not stop within ``shutdown_timeout`` (a task may be hanging)."""


@contextmanager
def start_worker(
    app: Celeriac,
    pool: str = "threads",
    concurrency: int = 2,
    queues: str | Sequence[str] | None = None,
    *,
    hostname: str | None = None,
    prefetch_multiplier: int | None = None,
    heartbeat_interval: float | None = None,
    ready_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    **options: Any,
) -> Iterator[Worker]:
    """Run a ``Worker`` for ``app`` on a background thread for the duration of the block."""
    from celeriac.worker.main import Worker

    worker = Worker(
        app,
        hostname=hostname or f"testworker{next(_numbers)}@{host_name()}",
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        prefetch_multiplier=prefetch_multiplier,
        heartbeat_interval=heartbeat_interval,
        **options,
    )
    worker.start_in_thread()
    try:
        if not worker.wait_ready(ready_timeout):
            raise WorkerDidNotStart(f"worker {worker.hostname} not ready in {ready_timeout}s")
    except BaseException:
        worker.stop(cold=True, timeout=shutdown_timeout)
        raise
    try:
        yield worker
    finally:
        stopped = worker.stop(timeout=shutdown_timeout)
        if not stopped:
            worker.stop(cold=True, timeout=shutdown_timeout)
    if not stopped:
        raise WorkerDidNotStop(
            f"worker {worker.hostname} did not stop warm within {shutdown_timeout}s"
        )
    if worker.error is not None:
        raise worker.error


__all__ = ["WorkerDidNotStart", "WorkerDidNotStop", "start_worker"]
