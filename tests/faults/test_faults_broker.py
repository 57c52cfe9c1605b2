"""4. The broker goes away mid-load and comes back: workers and clients carry on by themselves.

Redis
    A redis-server this test starts on a free port (``--appendonly yes --appendfsync always``) is
    SIGKILLed by PID mid-load (a crash, not a clean shutdown) and started again on the same port
    and directory ``OUTAGE`` seconds later. Meanwhile a client keeps sending tasks (its publishes
    wait out the outage). A probe task sent during the outage, to a queue the worker serves
    first, must start within 10 s of the server's return (so both the client and the worker are
    connected again, whatever the backlog); nothing is lost. Duplicates are counted: a publish
    whose reply was lost is retried (the same task id twice), and a run whose ack was lost runs
    again after its lease.

SQLite
    The "broker" is a file, not a server: there is nothing to restart, and the file is kept. The
    fault that remains is the file becoming unusable for a while: another process takes the
    database's write lock (``BEGIN EXCLUSIVE``, with an uncommitted insert) and is SIGKILLed
    ``OUTAGE`` seconds later, as a crashed writer. The worker's ``busy_timeout`` is set to 1 s so
    its fetches, result writes and acks fail during the outage and take their retry paths; the
    client (default ``busy_timeout``, 10 s) waits. Same bounds as Redis.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults_harness import (
    SOAK,
    FaultEnv,
    Reaper,
    RedisServer,
    Row,
    clean_env,
    diagnostics,
    record_row,
    scale,
    wait_for,
)

from celeriac import states

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if SOAK else 180)]

#: how long the broker is away
OUTAGE = 3.0
#: the worker must run tasks again within this many seconds of the broker's return
RECONNECT_BOUND = 10.0
#: reconnect quickly (the defaults back off up to 2 s between attempts)
FAST_RECONNECT = {"interval_start": 0.05, "interval_step": 0.2, "interval_max": 0.5}

LOCK_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("CREATE TABLE IF NOT EXISTS faults_half_written (x)")
conn.execute("INSERT INTO faults_half_written VALUES (1)")
print("locked", flush=True)
time.sleep(3600)
"""


class Outage:
    """Takes the broker away (``begin``) and brings it back (``end``)."""

    def __init__(self, kind: str, reaper: Reaper, tmp: Path, server: RedisServer | None) -> None:
        self.kind = kind
        self.reaper = reaper
        self.tmp = tmp
        self.server = server
        self._holder: subprocess.Popen[bytes] | None = None

    def begin(self) -> None:
        if self.server is not None:
            self.server.kill()
            return
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(self.tmp / "faults.db")],
            stdout=subprocess.PIPE,
            env=clean_env(),
        )
        self.reaper.add(holder)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        self._holder = holder

    def end(self) -> None:
        if self.server is not None:
            self.server.start()
            return
        assert self._holder is not None
        self._holder.kill()  # SIGKILL: the OS drops its lock, SQLite rolls its write back
        self._holder.wait(10)


def test_broker_restart_mid_load(
    fault_env: Callable[..., FaultEnv], broker_kind: str, reaper: Reaper, tmp_path: Path
) -> None:
    server = None
    if broker_kind == "redis":
        server = RedisServer(reaper, tmp_path / "redis")
        server.start()
        env = fault_env(
            broker_url=server.url,
            broker_transport_options={"visibility_timeout": 10.0, **FAST_RECONNECT},
        )
        env.conf["result_backend_transport_options"].update(FAST_RECONNECT)
        env.configure()
    else:
        env = fault_env(
            broker_transport_options={"visibility_timeout": 10.0, "busy_timeout": 1.0},
            result_backend_transport_options={"busy_timeout": 1.0},
        )
    # a probe task sent during the outage to a queue the worker serves first: it can only start
    # once both the client and the worker are connected again, whatever the backlog
    probe_queue = f"{env.queue}-probe"
    env.extra_queues.append(probe_queue)
    outage = Outage(broker_kind, reaper, tmp_path, server)
    count = scale(200, 1000)
    rounds = scale(1, 3)
    with diagnostics(env):
        worker = env.worker(concurrency=8).wait_ready()
        first = env.send_work(count // 2, 0.2)
        later: list[str] = []
        probes: list[str] = []
        reconnects: list[float] = []
        client_waits: list[float] = []
        for round_ in range(1, rounds + 1):
            env.wait_finished_count(first, len(first) * round_ // (rounds + 2), timeout=120)
            outage.begin()
            # a client sends during the outage: its publishes wait until the broker is back
            batch = count // 2 // rounds

            def send(n: int = batch) -> None:
                probes.append(env.client.send_task("faults.work", (0.01,), queue=probe_queue).id)
                later.extend(env.send_work(n, 0.2))

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(OUTAGE)  # the length of the fault, not a wait for a condition
            outage.end()
            back = time.time()

            sender.join(RECONNECT_BOUND + 20)
            assert not sender.is_alive(), "the client did not get its messages out"
            client_waits.append(time.time() - back)
            probe = probes[-1]

            def started(probe: str = probe) -> list[float]:
                return [e.at for e in env.events() if e.kind == "S" and e.task_id == probe]

            wait_for(started, RECONNECT_BOUND + 20, "the probe sent during the outage to start")
            reconnects.append(min(started()) - back)
        sent = first + later + probes
        env.wait_finished(sent, timeout=180)
        assert worker.alive(), "the worker exited during the outage"
        transport = env.client.transport
        wait_for(lambda: transport.qsize(env.queue) == 0, 30, "the queue to be empty")
        env.stop_workers()
        tally = env.tally(sent)
        stderr = worker.stderr()
        record_row(
            Row(
                "4. broker restart" if server else "4. broker outage (file locked)",
                broker_kind,
                len(sent),
                len(tally.lost()),
                tally.duplicated(),
                f"a task sent during the outage started {max(reconnects):.2f} s after the "
                "broker was back",
                (
                    f"{rounds} SIGKILL(s) + restart, {OUTAGE:g} s down, AOF always"
                    if server
                    else f"{rounds} write lock(s) held {OUTAGE:g} s by a killed process"
                )
                + f"; the client's sends completed {max(client_waits):.1f} s after",
            )
        )
        assert tally.lost() == []
        assert max(reconnects) <= RECONNECT_BOUND, reconnects
        assert tally.interrupted() == 0, "no run may be cut short: the worker lived"
        # duplicates are allowed (at-least-once) but must be rare and explained in the docs
        assert tally.duplicated() <= 8 * 4 * rounds, tally.duplicated_ids()
        backend = env.client.backend
        assert backend is not None
        statuses = {m.status for m in backend.get_many(sent)}
        assert statuses == {states.SUCCESS}, statuses
        if server is not None:
            assert "unreachable" in stderr and "reachable again" in stderr
