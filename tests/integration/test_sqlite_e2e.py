"""Issue 3's acceptance tests: real worker processes (``celeriac worker -P threads``) on one SQLite
file, for broker and results alike.

(a) 4 workers and 2 client processes, 10,000 tasks: each runs exactly once, every result reads.
(b) A worker SIGKILLed in the middle of long tasks: the messages it held come back within the
    lease (``visibility_timeout``) and run on the other worker; none is given to the other worker
    while it lives, although it holds them longer than the lease (its heartbeat renews them).
(c) A corrupt row and an unreadable message go to the dead-letter table with their reasons, and
    the worker goes on with the next good task.

Workers run in their own sessions with their output in a log file; they are stopped with SIGTERM
(and must exit 0) and anything left is killed in teardown. The tasks record every execution in an
append-only file per process (``runs/<pid>.log``: event, task id, pid, time).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.sqlite import SQLiteTransport

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

SPAWN = multiprocessing.get_context("spawn")
MODULE = "sqlite_e2e_tasks"
TASKS = '''
import os
import time

from celeriac import Celeriac, signals

app = Celeriac("sqlite_e2e", broker=os.environ["E2E_URL"], backend=os.environ["E2E_URL"])
app.conf.broker_transport_options = {"visibility_timeout": float(os.environ["E2E_LEASE"])}
_files = {}


def note(event, task_id):
    """Append one line to this process's record (one write: lines never interleave)."""
    fd = _files.get(os.getpid())
    if fd is None:
        path = os.path.join(os.environ["E2E_RUNS"], f"{os.getpid()}.log")
        fd = _files[os.getpid()] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{event} {task_id} {os.getpid()} {time.time():.6f}\\n".encode())


@signals.worker_ready.connect
def ready(**kwargs):
    note("ready", "-")


@app.task(bind=True, name="e2e.record")
def record(self, n):
    note("run", self.request.id)
    return n * 2


@app.task(bind=True, name="e2e.slow")
def slow(self, n, seconds):
    note("start", self.request.id)
    time.sleep(seconds)
    note("end", self.request.id)
    return n
'''


@dataclass(frozen=True)
class Event:
    kind: str
    task_id: str
    pid: int
    at: float


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition()`` until it is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


class Cluster:
    """Worker subprocesses on one SQLite file, and what their tasks recorded."""

    def __init__(self, tmp: Path, lease: float) -> None:
        self.tmp = tmp
        self.db = tmp / "celeriac.db"
        self.url = f"sqlite:///{self.db}"
        self.runs = tmp / "runs"
        self.runs.mkdir()
        (tmp / f"{MODULE}.py").write_text(TASKS)
        self.env = {
            **os.environ,
            "E2E_URL": self.url,
            "E2E_RUNS": str(self.runs),
            "E2E_LEASE": str(lease),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])),
        }
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.module: ModuleType | None = None

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "celeriac.cli", "-A", MODULE, "worker", "-P", "threads"]
        with (self.tmp / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*argv, "-n", f"{name}@e2e", *args],
                env=self.env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.workers[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def events(self, kind: str | None = None) -> list[Event]:
        found = []
        for path in self.runs.glob("*.log"):
            for line in path.read_text().splitlines():
                event, task_id, pid, at = line.split()
                if kind is None or event == kind:
                    found.append(Event(event, task_id, int(pid), float(at)))
        return sorted(found, key=lambda e: e.at)

    def wait_ready(self, *names: str, timeout: float = 30.0) -> None:
        def ready() -> bool:
            for name in names:
                proc = self.workers[name]
                assert proc.poll() is None, f"worker {name} exited:\n{self.log(name)}"
            pids = {e.pid for e in self.events("ready")}
            return all(self.workers[name].pid in pids for name in names)

        wait_for(ready, timeout, f"workers {names} to be ready")

    def stop(self, name: str, timeout: float = 30.0) -> int:
        """Warm shutdown (SIGTERM); the exit code."""
        proc = self.workers[name]
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {name} did not stop within {timeout} s:\n{self.log(name)}")

    def kill_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its processes
                proc.wait(10)

    def tasks(self) -> ModuleType:
        """The task module, imported here (as a client)."""
        os.environ.update({k: self.env[k] for k in ("E2E_URL", "E2E_RUNS", "E2E_LEASE")})
        sys.path.insert(0, str(self.tmp))
        try:
            sys.modules.pop(MODULE, None)
            self.module = __import__(MODULE)
            return self.module
        finally:
            sys.path.remove(str(self.tmp))

    def close(self) -> None:
        self.kill_all()
        if self.module is not None:
            self.module.app.close()


@pytest.fixture
def make_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []
    for name in ("E2E_URL", "E2E_RUNS", "E2E_LEASE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test

    def make(lease: float = 60.0) -> Cluster:
        cluster = Cluster(tmp_path, lease)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
    sys.modules.pop(MODULE, None)


# -- (a) 4 workers, 2 clients, 10,000 tasks: each exactly once ------------------------------------
def _client(tmp: str, env: dict[str, str], count: int, out: str) -> None:
    os.environ.update(env)
    sys.path.insert(0, tmp)
    tasks = __import__(MODULE)
    ids = []
    for i in range(count):
        if i % 10 == 9:
            ids.append(tasks.record.apply_async((i,), priority=i % 10).id)
        else:
            ids.append(tasks.record.delay(i).id)
    Path(out).write_text(json.dumps(ids))


@pytest.mark.slow
def test_four_workers_two_clients_every_task_runs_exactly_once(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    names = [f"w{i}" for i in range(4)]
    for name in names:
        cluster.start(name, "-c", "2")
    cluster.wait_ready(*names, timeout=60)
    env = {k: cluster.env[k] for k in ("E2E_URL", "E2E_RUNS", "E2E_LEASE")}
    outs = [str(cluster.tmp / f"client-{c}.json") for c in range(2)]
    clients = [
        SPAWN.Process(target=_client, args=(str(cluster.tmp), env, 5000, out)) for out in outs
    ]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
            assert client.exitcode == 0, "a client failed"
    finally:
        for client in clients:
            if client.is_alive():
                client.kill()
    sent = [task_id for out in outs for task_id in json.loads(Path(out).read_text())]
    assert len(set(sent)) == 10_000

    tasks = cluster.tasks()
    values = {task_id: tasks.app.AsyncResult(task_id).get(timeout=60) for task_id in sent}
    runs = Counter(e.task_id for e in cluster.events("run"))
    assert set(runs) == set(sent)
    assert [task_id for task_id, n in runs.items() if n > 1] == []
    assert sorted(values.values()) == sorted(2 * i for i in range(5000) for _ in range(2))
    by_worker = Counter(e.pid for e in cluster.events("run"))
    assert len(by_worker) >= 2, f"the load was not shared: {by_worker}"
    transport = SQLiteTransport(cluster.url)
    assert transport.qsize("celery") == 0
    transport.close()
    for name in names:
        assert cluster.stop(name) == 0, cluster.log(name)


# -- (b) a worker SIGKILLed in the middle of long tasks -------------------------------------------
LEASE = 3.0
TASK_SECONDS = 2.0


def held_by(db: Path, pid: int) -> dict[str, float]:
    """Task id -> lease expiry of the messages a worker process holds now."""
    owner = f"{socket.gethostname()}:{pid}"
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute(
            "SELECT headers, visible_at FROM celeriac_messages WHERE state = 2 AND lease_owner = ?",
            (owner,),
        ).fetchall()
    finally:
        conn.close()
    return {json.loads(headers)["id"]: float(expiry) for headers, expiry in rows}


@pytest.mark.slow
def test_a_killed_workers_tasks_run_on_the_other_worker_within_the_lease(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(lease=LEASE)
    tasks = cluster.tasks()
    results = {tasks.slow.delay(i, TASK_SECONDS).id: i for i in range(20)}
    victim = cluster.start("victim", "-c", "2")  # prefetches 8, runs 2 at a time
    first = wait_for(lambda: cluster.events("start"), 30, "the victim to start tasks")
    taken = held_by(cluster.db, victim.pid)
    assert len(taken) >= 2
    cluster.start("survivor", "-c", "8")
    cluster.wait_ready("survivor")

    # the victim keeps its messages for longer than the lease: its heartbeat renews them
    wait_for(lambda: time.time() >= first[0].at + LEASE + 0.5, 30, "a lease to pass")
    assert victim.poll() is None, cluster.log("victim")
    still = held_by(cluster.db, victim.pid)
    finished = {e.task_id for e in cluster.events("end") if e.pid == victim.pid}
    assert set(still) == set(taken) - finished
    assert all(expiry > time.time() for expiry in still.values()), "a lease was not renewed"
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait(10)

    values = {tid: tasks.app.AsyncResult(tid).get(timeout=30) for tid in results}
    assert values == results
    starts: dict[str, list[Event]] = defaultdict(list)
    for event in cluster.events("start"):
        starts[event.task_id].append(event)
    survivor = cluster.workers["survivor"].pid
    for task_id in results:
        runs = starts[task_id]
        if task_id in still:  # held by the victim when it died: once more, on the survivor
            assert runs[-1].pid == survivor
            assert killed_at < runs[-1].at <= killed_at + LEASE + 1.5, runs
            assert [e.pid for e in runs[:-1]] in ([], [victim.pid])
        else:
            assert len(runs) == 1, f"{task_id} ran {len(runs)} times"
    assert any(len(starts[task_id]) == 2 for task_id in still), "no task was interrupted"
    assert cluster.stop("survivor") == 0, cluster.log("survivor")


# -- (c) a corrupt row and an unreadable message go to the dead letters ----------------------------
def test_corrupt_rows_and_unreadable_messages_are_dead_lettered_and_the_worker_goes_on(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start("w", "-c", "2")
    cluster.wait_ready("w")
    tasks = cluster.tasks()
    transport = SQLiteTransport(cluster.url)
    assert transport.qsize("celery") == 0  # the tables exist
    conn = sqlite3.connect(cluster.db, timeout=10)
    with conn:
        conn.execute(
            "INSERT INTO celeriac_messages (queue, priority, state, visible_at, published_at, "
            "content_type, content_encoding, headers, properties, body) "
            "VALUES ('celery', 0, 0, 0, 0, 'application/json', 'utf-8', '{not json', '{}', 'x')"
        )
    conn.close()
    unreadable = RawMessage(
        b"\xff\xfe not json",
        headers={"id": "unreadable-1", "task": "e2e.record", "lang": "py"},
        properties={"correlation_id": "unreadable-1", "priority": 0},
    )
    transport.publish("celery", unreadable)
    assert tasks.record.delay(21).get(timeout=30) == 42

    dead = wait_for(
        lambda: (found := transport.dead_letters()) and len(found) >= 2 and found,
        30,
        "two dead letters",
    )
    reasons = sorted(d.reason for d in dead)
    assert len(dead) == 2, reasons
    assert any("corrupt message row" in r and "headers" in r for r in reasons), reasons
    assert any("undecodable message" in r for r in reasons), reasons
    assert {d.queue for d in dead} == {"celery"}
    assert cluster.workers["w"].poll() is None, cluster.log("w")
    assert tasks.record.delay(50).get(timeout=30) == 100
    wait_for(lambda: transport.qsize("celery") == 0, 30, "the acks")
    transport.close()
    assert cluster.stop("w") == 0, cluster.log("w")
