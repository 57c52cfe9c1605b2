"""Private redis-servers for the integration tests that need their own (``RedisServer``).

A test that restarts, kills the connections of, reconfigures or reads the statistics of a
server starts its own on a free port (never the shared Redis on 6379): ``RedisServer(workdir,
*args)`` builds the command line (no RDB snapshots, AOF only if asked, extra ``args`` last),
``start`` launches it and waits (with a deadline) until it answers ``PING``, with the
``--requirepass`` password among ``args`` if there is one (one that never answers is stopped);
``start`` again reuses the port and directory. ``stop`` ends it by PID (SIGTERM, SIGKILL if it
lingers). Subclasses change
``command`` and ``answers`` for another kind of process (a sentinel).

``need_binary`` skips a test whose program is missing, and fails it under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")


def need_binary(name: str) -> str:
    """The path of program ``name``; skip the test without it (fail it under ``CI=true``)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed (CI=true: servers are required)")
        pytest.skip(f"{name} is not installed")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll ``condition`` until it is truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


class RedisServer:
    """A private redis-server on a free port (see the module docstring)."""

    def __init__(self, workdir: Path, *args: str, appendonly: bool = False) -> None:
        self.binary = need_binary("redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.args = args
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str | None:
        """The ``--requirepass`` among the extra arguments, if any."""
        args = self.args
        return args[args.index("--requirepass") + 1] if "--requirepass" in args else None

    @property
    def log(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def url(self, db: int = 0, auth: str = "") -> str:
        """``redis://{auth}127.0.0.1:{port}/{db}`` (``auth``: ``user:password@`` or empty)."""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0, **options: Any) -> Any:
        """A new redis-py client of this server (with its password), 1 s to connect."""
        options.setdefault("socket_connect_timeout", 1)
        return redis.Redis(port=self.port, db=db, password=self.password, **options)

    def command(self) -> list[str]:
        return [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir)),
            *self.args,
        ]

    def answers(self) -> bool:
        """Whether it answers ``PING`` (over RESP2: the one every server speaks)."""
        try:
            with self.client(socket_connect_timeout=0.2, protocol=2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        """Launch it and wait until it ``answers`` (AssertionError with its log if it exits)."""
        with self.log.open("ab") as log:
            proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        self.proc = proc

        def up() -> bool:
            assert proc.poll() is None, self.log.read_text()[-2000:]
            return self.answers()

        try:
            wait_until(up, timeout, f"{self.binary} on port {self.port} answers", interval=0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by PID (SIGKILL after 10 s); nothing if it is not running."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
