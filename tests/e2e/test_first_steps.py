"""Celery's first-steps tutorial, with only ``celery`` changed to ``celeriac``: ``tasks.py`` with
``add``, a worker started as ``celeriac -A tasks worker --loglevel=INFO``, and a separate client
process calling ``add.delay(4, 4).get(timeout=10)``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TASKS = """
from celeriac import Celery

app = Celery('tasks', broker='sqlite:///{db}', backend='sqlite:///{db}')


@app.task
def add(x, y):
    return x + y
"""

CLIENT = """
from tasks import add

result = add.delay(4, 4)
print(result.get(timeout=10))
print(result.ready(), result.successful(), result.state)
"""


def celeriac_command() -> list[str]:
    script = shutil.which("celeriac", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "celeriac.cli"]


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS.format(db=tmp_path / "b.db")))
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [*celeriac_command(), "-A", "tasks", "worker", "--loglevel=INFO"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 30
        while " ready." not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"worker not ready in 30 s:\n{log.read_text()}"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def test_first_steps(tmp_path: Path, worker: subprocess.Popen[bytes]) -> None:
    client = subprocess.run(
        [sys.executable, "-c", CLIENT], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert client.returncode == 0, client.stderr
    assert client.stdout.splitlines() == ["8", "True True SUCCESS"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
