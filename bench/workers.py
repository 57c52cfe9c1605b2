"""Worker processes for the scenarios: start one from its command line, measure it, stop it.

A worker runs in its own session (process group) with its output in a log file. ``stop()``
sends SIGTERM to its PID (a warm shutdown for Celery and Celeriac alike), waits, and only then
kills what is left of *its* process group by that group's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class WorkerProcess:
    """One worker subprocess (see the module docstring); a context manager."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str) -> None:
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        handle, name = tempfile.mkstemp(prefix="celeriac-bench-worker-", suffix=".log")
        os.close(handle)
        self.log = Path(name)

    def start(self) -> WorkerProcess:
        with self.log.open("wb") as out:
            self.started_at = time.time()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check(self) -> None:
        """Raise with the log's tail when the worker has already exited."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with {self.process.returncode}: {' '.join(self.argv)}\n"
                + self.tail()
            )

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> int:
        """Resident bytes of the worker and all its descendants, now."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        return total

    def stop(self, timeout: float = 20.0) -> int | None:
        """Warm shutdown by SIGTERM; SIGKILL to the worker's own process group after timeout."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers: children of this worker only
        code = process.wait()
        with contextlib.suppress(OSError):
            self.log.unlink()
        return code

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.process is not None:
            self.check_quiet()
        self.stop()

    def check_quiet(self) -> None:
        tail = self.tail()
        if tail:
            print(f"--- worker log ({' '.join(self.argv[:6])} ...) ---\n{tail}", flush=True)
