"""Start-up and shutdown: signals, warm shutdown loses nothing, cold shutdown requeues running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, signals, states
from celeriac.exceptions import ImproperlyConfigured
from celeriac.testing.worker import start_worker
from celeriac.worker import Worker

SRC = Path(__file__).resolve().parents[2] / "src"


def blocking_app(app: Celeriac) -> tuple[Any, threading.Event, threading.Event]:
    running = threading.Event()
    release = threading.Event()

    @app.task(name="t.block")
    def block(i: int) -> int:
        running.set()
        if not release.wait(10):
            raise TimeoutError("never released")
        return i

    return block, running, release


def test_warm_shutdown_loses_nothing(app: Celeriac) -> None:
    block, running, release = blocking_app(app)
    worker = Worker(app, concurrency=1, prefetch_multiplier=4, hostname="warm@test")
    worker.start_in_thread()
    try:
        assert worker.wait_ready(5)
        results = [block.delay(i) for i in range(5)]
        assert running.wait(5)
        # one running, three prefetched (queued in the pool or reserved), one still in the queue
        assert worker.state.wait_for(lambda s: len(s.active) + len(s.reserved) == 4, timeout=5)
        worker.stop(wait=False)
        # prefetched tasks go back at once, while the running one is still running
        assert worker.state.wait_for(lambda s: s.counters.requeued == 3 and len(s.held) == 1, 5)
        assert app.transport.qsize("celery") == 5
        release.set()
        assert worker.join(5)
    finally:
        release.set()
        worker.stop(cold=True, timeout=5)
    assert worker.exitcode == 0
    assert results[0].get(timeout=1) == 0
    assert app.transport.qsize("celery") == 4
    with start_worker(app, concurrency=2):
        assert sorted(r.get(timeout=5) for r in results) == [0, 1, 2, 3, 4]
    assert app.transport.qsize("celery") == 0


@pytest.mark.parametrize("escalate", [False, True])
def test_cold_shutdown_requeues_running_tasks(app: Celeriac, escalate: bool) -> None:
    block, running, release = blocking_app(app)
    worker = Worker(app, concurrency=1, hostname="cold@test")
    worker.start_in_thread()
    try:
        assert worker.wait_ready(5)
        result = block.delay(7)
        assert running.wait(5)
        if escalate:  # warm first, then a second request makes it cold
            worker.stop(wait=False)
            assert worker.state.wait_for(lambda s: worker.shutdown == "Warm", timeout=5)
            assert not worker.join(0.05)  # warm: waits for the running task
        assert worker.stop(cold=True, timeout=5)
    finally:
        release.set()
    assert worker.exitcode == 1
    assert result.state == states.PENDING  # its outcome was discarded
    assert app.transport.qsize("celery") == 1  # and its message is back
    with start_worker(app):
        assert result.get(timeout=5) == 7


def test_worker_signals_in_order(app: Celeriac) -> None:
    seen: list[str] = []
    names = ["worker_init", "worker_ready", "worker_shutting_down", "worker_shutdown"]
    receivers = {}
    for name in names:

        def receiver(sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
            seen.append(signal.name)

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    try:
        with start_worker(app):
            pass
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    assert seen == names


def test_bad_broker_url_fails_start_up() -> None:
    app = Celeriac("bad", broker="nosuch://x", backend="memory://bad")
    with pytest.raises(ImproperlyConfigured, match="unknown scheme 'nosuch'"), start_worker(app):
        pass


def test_stop_before_start_is_honoured(app: Celeriac) -> None:
    worker = Worker(app, hostname="early@test")
    assert worker.stop(wait=False) is False
    worker.start_in_thread()
    assert worker.join(5)
    assert worker.exitcode == 0


def test_no_result_backend(app: Celeriac) -> None:
    done = threading.Event()
    app.conf.result_backend = None
    app.conf.broker_url = f"memory://nobackend-{uuid.uuid4().hex[:6]}"

    @app.task(name="t.side_effect")
    def side_effect() -> None:
        done.set()

    with start_worker(app) as worker:
        assert worker.backend is None
        side_effect.delay()
        assert done.wait(5)
        assert worker.state.wait_for(lambda s: s.succeeded == 1 and not s.held, timeout=5)


SCRIPT = """
import os, signal, sys, threading, time
from celeriac import Celeriac
from celeriac.worker import Worker

app = Celeriac("sig", broker="memory://sig", backend="memory://sig")
running = threading.Event()

@app.task(name="t.block")
def block():
    running.set()
    time.sleep(30)

worker = Worker(app, concurrency=1, hostname="sig@test")

def drive():
    assert worker.wait_ready(10)
    if sys.argv[1] == "cold":
        block.delay()
        assert running.wait(10)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT if sys.argv[1] == "cold" else signal.SIGTERM)

threading.Thread(target=drive, daemon=True).start()
code = worker.run()
print("exit", code, "queued", app.transport.qsize("celery"), flush=True)
sys.exit(code)
"""


@pytest.mark.parametrize(("how", "code", "queued"), [("warm", 0, 0), ("cold", 1, 1)])
def test_run_handles_signals(tmp_path: Path, how: str, code: int, queued: int) -> None:
    script = tmp_path / "run_worker.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(script), how],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert f"exit {code} queued {queued}" in done.stdout
    assert f"worker: {how.capitalize()} shutdown" in done.stderr


def test_start_worker_waits_for_ready_and_stops_warm(app: Celeriac) -> None:
    started = time.monotonic()
    with start_worker(app) as worker:
        assert worker.ready
    assert not worker.ready
    assert worker.exitcode == 0
    assert time.monotonic() - started < 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # tests never touch handlers


def test_cold_shutdown_keeps_outcomes_of_finished_tasks(app: Celeriac) -> None:
    """A task that finished but is still running its errback is not undone by a cold stop."""
    block, running, release = blocking_app(app)
    in_errback = threading.Event()
    finish_errback = threading.Event()

    @app.task(name="t.fail")
    def fail() -> None:
        raise ValueError("x")

    @app.task(name="t.slow_errback")
    def slow_errback(request: Any, exc: BaseException, traceback: str) -> None:
        in_errback.set()
        finish_errback.wait(5)

    worker = Worker(app, concurrency=2, hostname="cold2@test")
    worker.start_in_thread()
    try:
        assert worker.wait_ready(5)
        failed = fail.apply_async(link_error=dict(slow_errback.s()))
        blocked = block.delay(1)
        assert running.wait(5) and in_errback.wait(5)
        worker.stop(wait=False)
        assert worker.state.wait_for(lambda s: worker.shutdown == "Warm", timeout=5)
        worker.stop(cold=True, wait=False)
        assert worker.state.wait_for(lambda s: worker.shutdown == "Cold", timeout=5)
        finish_errback.set()
        assert worker.join(5)
    finally:
        release.set()
        finish_errback.set()
    assert failed.state == states.FAILURE
    assert blocked.state == states.PENDING
    assert app.transport.qsize("celery") == 1  # only the running task's message came back
