"""Shutting down a prefork worker (``celeriac worker -P prefork`` in a subprocess, SQLite broker):
warm, cold, soft, and the worker itself killed. No task is lost and no child process is left.

Each test runs a worker with two children, sends six one-second tasks (two run, four are
prefetched), signals the worker while two run, and checks the exit code, which tasks finished,
what went back to the queue, and that the children are gone; then another worker drains the
queue and every task has succeeded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from celeriac import Celeriac, states
from celeriac.testing.worker import start_worker

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the prefork pool runs on Linux"),
    pytest.mark.timeout(90),
]

SRC = Path(__file__).resolve().parents[2] / "src"
TASKS = 6
SECONDS = 1.0

MODULE = """
import os
import time
from pathlib import Path

from celeriac import Celeriac

app = Celeriac("shutproj", broker="{url}", backend="{url}")
app.conf.worker_soft_shutdown_timeout = float(os.environ.get("SOFT_SHUTDOWN", "0"))
MARKS = Path("{marks}")


@app.task(name="shut.work")
def work(i, seconds):
    (MARKS / f"start-{{i}}-{{os.getpid()}}").touch()
    time.sleep(seconds)
    (MARKS / f"done-{{i}}-{{os.getpid()}}").touch()
    return i
"""


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.marks = root / "marks"
        self.marks.mkdir()
        self.url = f"sqlite:///{root}/db.sqlite3"
        (root / "shutproj.py").write_text(MODULE.format(url=self.url, marks=self.marks))
        self.client = Celeriac("client", broker=self.url, backend=self.url)

        @self.client.task(name="shut.work")
        def work(i: int, seconds: float) -> int:  # what the draining worker runs
            time.sleep(seconds)
            return i

        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "worker.log"

    def marked(self, kind: str) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.marks.glob(f"{kind}-*"))

    def start_worker(self, **env: str) -> psutil.Process:
        command = [sys.executable, "-m", "celeriac.cli", "-A", "shutproj", "worker"]
        args = ["-P", "prefork", "-c", "2", "--prefetch-multiplier", "3", "-l", "info"]
        environ = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{self.root}", **env}
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [*command, *args],
                cwd=self.root,
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_for(self.ready, 30, "the worker to be ready")
        return psutil.Process(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text()

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log()
        return " ready." in self.log()

    def send(self) -> list[str]:
        return [self.client.send_task("shut.work", (i, SECONDS)).id for i in range(TASKS)]

    def signal_when_two_run(self, worker: psutil.Process, *signums: int) -> list[int]:
        """Wait for two running tasks; note the worker's processes; send the signals; wait for
        the worker to exit."""
        wait_for(lambda: len(self.marked("start")) == 2, 20, "two running tasks")
        children = [c.pid for c in worker.children(recursive=True)]
        assert len(children) == 3  # the fork server and its two children
        for count, signum in enumerate(signums, 1):
            worker.send_signal(signum)
            # the next signal only once this one was handled (pending signals may coalesce)
            wait_for(lambda n=count: self.log().count(" shutdown (") >= n, 10, "the signal")  # type: ignore[misc]
        assert self.proc is not None
        self.proc.wait(30)
        return children

    def drain(self, ids: list[str]) -> None:
        """Another worker finishes what went back to the queue: every task has succeeded."""
        with start_worker(self.client, pool="threads", concurrency=TASKS):
            for task_id in ids:
                assert self.client.AsyncResult(task_id).get(timeout=30) is not None
        assert all(self.client.AsyncResult(i).state == states.SUCCESS for i in ids)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.client.close()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    made = Project(tmp_path)
    yield made
    made.close()


def test_warm_shutdown_finishes_running_tasks_and_returns_the_rest(project: Project) -> None:
    worker = project.start_worker()
    ids = project.send()
    children = project.signal_when_two_run(worker, signal.SIGTERM)
    assert project.proc is not None and project.proc.returncode == 0
    assert project.marked("done") == project.marked("start")  # the running two finished
    assert project.client.transport.qsize("celery") == TASKS - 2
    assert all(gone(pid) for pid in children)
    assert "Warm shutdown" in project.log_path.read_text()
    project.drain(ids)


@pytest.mark.parametrize("signums", [[signal.SIGQUIT], [signal.SIGTERM, signal.SIGTERM]])
def test_cold_shutdown_kills_children_and_requeues_their_tasks(
    project: Project, signums: list[int]
) -> None:
    worker = project.start_worker()
    ids = project.send()
    children = project.signal_when_two_run(worker, *signums)
    assert project.proc is not None and project.proc.returncode == 1
    assert project.marked("done") == []  # killed mid-task
    assert project.client.transport.qsize("celery") == TASKS
    assert all(gone(pid) for pid in children)
    assert "Cold shutdown" in project.log_path.read_text()
    project.drain(ids)


def test_soft_shutdown_gives_running_tasks_time_before_going_cold(project: Project) -> None:
    worker = project.start_worker(SOFT_SHUTDOWN="10")
    ids = project.send()
    children = project.signal_when_two_run(worker, signal.SIGQUIT)
    assert project.proc is not None and project.proc.returncode == 1
    assert len(project.marked("done")) == 2  # finished within the soft shutdown
    assert project.client.transport.qsize("celery") == TASKS - 2
    assert all(gone(pid) for pid in children)
    assert "Soft shutdown" in project.log_path.read_text()
    project.drain(ids)


def test_children_die_with_a_killed_worker(project: Project) -> None:
    worker = project.start_worker()
    children = [c.pid for c in worker.children(recursive=True)]
    assert len(children) == 3  # the fork server and its two children
    worker.kill()
    assert project.proc is not None
    project.proc.wait(10)
    wait_for(lambda: all(gone(pid) for pid in children), 10, "the children to die")
