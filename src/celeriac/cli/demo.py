"""``celeriac demo``: a worker, three tasks and their results, with nothing to install or configure.

The demo makes a temporary directory, uses the embedded SQLite broker and result store in it (the
file ``celeriac.sqlite3``, as the default ``sqlite://`` would in the working directory), starts a
worker in this process (threads pool, in a background thread), and sends three tasks:

- ``demo.add(2, 3)`` succeeds;
- ``demo.flaky()`` fails once with a transient error, retries itself half a second later
  (``self.retry(countdown=0.5)``) and then succeeds;
- ``demo.fail()`` raises ``ValueError``.

It prints each task's id, state and result (or exception), stops the worker (warm shutdown) and
removes the temporary directory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli.base import pretty

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac
    from celeriac.result import AsyncResult

#: how long the demo waits for its three tasks, at most (they take about a second)
DEADLINE_SECONDS = 30.0


def create_app(url: str) -> Celeriac:
    """The demo's app: broker and results in the SQLite file ``url``, and its three tasks."""
    from celeriac.app.base import Celeriac

    app = Celeriac("demo", broker=url, backend=url, set_as_current=False)

    @app.task(name="demo.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="demo.flaky", bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        if self.request.retries == 0:
            # the first attempt meets a "transient" error and asks to run again in 0.5 s
            raise self.retry(exc=ConnectionError("transient error"), countdown=0.5)
        return f"succeeded after {self.request.retries} retry"

    @app.task(name="demo.fail")
    def fail() -> None:
        raise ValueError("this task always fails")

    return app


def _send(app: Celeriac) -> list[AsyncResult[Any]]:
    return [
        app.tasks["demo.add"].delay(2, 3),
        app.tasks["demo.flaky"].delay(),
        app.tasks["demo.fail"].delay(),
    ]


def _wait(results: list[AsyncResult[Any]]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    for found in results:
        remaining = max(0.1, deadline - time.monotonic())
        found.get(timeout=remaining, propagate=False)


def _outcome(found: AsyncResult[Any]) -> str:
    value = found.result
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return pretty(value)


def _table(results: list[AsyncResult[Any]]) -> list[str]:
    rows = [("TASK", "ID", "STATE", "RESULT")]
    rows += [(r.name or "?", r.id, r.state, _outcome(r)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
        for row in rows
    ]


@contextmanager
def _quiet_logs(verbose: bool) -> Iterator[None]:
    """Keep the worker's log (e.g. the failing task's traceback) out of the demo's table."""
    logger = logging.getLogger("celeriac")
    previous = logger.level
    if verbose:
        from celeriac.app.log import setup_logging

        setup_logging("INFO")
    else:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@click.command(short_help="Run a worker and three tasks, print their results.")
@click.option("-v", "--verbose", is_flag=True, help="Show the worker's log (level INFO) on stderr.")
def demo(verbose: bool) -> None:
    """Run a worker and three tasks on the embedded SQLite default; print their results.

    Needs no server and no -A: everything happens in a temporary directory, removed at the end.
    """
    from celeriac.testing.worker import start_worker

    with tempfile.TemporaryDirectory(prefix="celeriac-demo-") as tmp:
        path = Path(tmp) / "celeriac.sqlite3"
        app = create_app(f"sqlite:///{path}")
        click.echo("Celeriac demo: broker and results in one SQLite file, a worker in this process")
        click.echo(f"  database: {path}")
        click.echo("  worker:   threads pool, concurrency 2\n")
        try:
            with _quiet_logs(verbose), start_worker(app, pool="threads", concurrency=2):
                results = _send(app)
                _wait(results)
        finally:
            app.close()
        for line in _table(results):
            click.echo(line)
    click.echo(f"\nThe worker stopped; the database {path} was removed with its directory.")
