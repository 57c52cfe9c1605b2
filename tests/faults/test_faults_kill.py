"""Killing workers: SIGKILL of the whole worker, SIGKILL of one pool child, SIGTERM (warm).

1. SIGKILL of every process of a worker mid-load, then a fresh worker: nothing is lost, and the
   tasks that were running when it died run again within 15 s of the new worker starting (their
   leases, ``visibility_timeout`` = 5 s, run out; a live worker renews them, so it keeps its long
   tasks). Runs that finished but whose ack died with the worker run again: counted as
   duplicates (at-least-once), never more than the worker held.
2. SIGKILL of one prefork child running a task: nothing is lost, the pool starts a new child
   and the worker goes on; the task runs again when its lease runs out
   (``task_reject_on_worker_lost``, set by the harness).
3. SIGTERM (warm shutdown) mid-load: running tasks finish and are acked, reserved ones go back;
   a fresh worker finishes the rest: nothing lost, nothing run twice.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import time
from collections.abc import Callable

import pytest
from faults_harness import (
    SOAK,
    FaultEnv,
    Row,
    diagnostics,
    record_row,
    scale,
    wait_for,
)

from celeriac import states

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if SOAK else 180)]

#: the new worker must have re-run the killed tasks within this many seconds of its start
RERUN_BOUND = 15.0
LEASE = 5.0

HAS_PREFORK = importlib.util.find_spec("celeriac.worker.pools.prefork") is not None
NO_PREFORK = "the prefork pool (celeriac.worker.pools.prefork, issue 5) does not exist yet"


def durations(count: int) -> Callable[[int], float]:
    """0.2 s per task; in soak mode 0.2-1 s (seeded, so a failure can be replayed)."""
    rng = random.Random(9)
    values = [round(rng.uniform(0.2, 1.0), 3) if SOAK else 0.2 for _ in range(count)]
    return lambda i: values[i]


def assert_all_succeeded(env: FaultEnv, sent: list[str]) -> None:
    backend = env.client.backend
    assert backend is not None
    metas = backend.get_many(sent)
    failed = {m.task_id: m.status for m in metas if m.status != states.SUCCESS}
    assert not failed, f"{len(failed)} task(s) not SUCCESS: {dict(list(failed.items())[:5])}"


def wait_queue_empty(env: FaultEnv, timeout: float = 15.0) -> None:
    transport = env.client.transport
    wait_for(lambda: transport.qsize(env.queue) == 0, timeout, f"queue {env.queue} to be empty")


# -- 1. SIGKILL of the whole worker --------------------------------------------------------------
def test_sigkill_whole_worker_loses_nothing(
    fault_env: Callable[..., FaultEnv], broker_kind: str
) -> None:
    env = fault_env(broker_transport_options={"visibility_timeout": LEASE})
    count = scale(200, 1000)
    rounds = scale(1, 3)
    with diagnostics(env):
        worker = env.worker(concurrency=8).wait_ready()
        sent = env.send_work(count, durations(count))
        recoveries: list[float] = []
        killed_total = 0
        for round_ in range(1, rounds + 1):
            env.wait_finished_count(sent, count * round_ // (rounds + 3), timeout=120)
            pids = worker.kill()
            assert pids, "the worker had no process to kill"
            killed = env.tally(sent).in_flight()  # started, never finished: interrupted runs
            assert killed, "no task was running when the worker was killed"
            killed_total += len(killed)
            worker = env.worker(concurrency=8)
            started = worker.started_at
            worker.wait_ready()

            def rerun(killed: set[str] = killed) -> bool:
                return killed <= env.tally(sent).finished()

            wait_for(rerun, RERUN_BOUND + 30, "the killed tasks to run again")
            finishes = [e.at for e in env.events() if e.kind == "D" and e.task_id in killed]
            recoveries.append(max(finishes) - started)
        env.wait_finished(sent, timeout=180)
        wait_queue_empty(env)
        env.stop_workers()
        tally = env.tally(sent)
        held = 8 * 4  # concurrency x prefetch multiplier: what one worker may hold
        record_row(
            Row(
                "1. SIGKILL whole worker",
                broker_kind,
                count,
                len(tally.lost()),
                tally.duplicated(),
                f"killed tasks re-ran {max(recoveries):.1f} s after the new worker started",
                f"{rounds} kill(s); {killed_total} runs interrupted; lease {LEASE:g} s",
            )
        )
        assert tally.lost() == []
        assert max(recoveries) <= RERUN_BOUND, recoveries
        # a finished run whose ack died with the worker runs again: at most what it held
        assert tally.duplicated() <= held * rounds, tally.duplicated_ids()
        assert_all_succeeded(env, sent)


# -- 1b. SIGKILL inside a restore (Redis) ----------------------------------------------------------
@pytest.mark.redis
@pytest.mark.parametrize("broker_kind", ["redis"])
def test_sigkill_inside_a_restore_delays_nothing(
    fault_env: Callable[..., FaultEnv], broker_kind: str
) -> None:
    """A Redis worker killed while it held ``unacked_mutex`` (restoring expired deliveries) leaves
    the mutex behind until it expires; no restore runs before that. The expiry must not push the
    recovery past the lease (SQLite has no such mutex: leases are taken back inside the claiming
    transaction)."""
    import redis

    from celeriac.transports.redis_keys import RedisOptions

    options = {"visibility_timeout": LEASE}
    env = fault_env(broker_transport_options=options)
    count = scale(100, 400)
    with diagnostics(env):
        worker = env.worker(concurrency=8).wait_ready()
        sent = env.send_work(count, durations(count))
        env.wait_finished_count(sent, count // 4, timeout=120)
        worker.kill()
        # what a worker killed inside a restore leaves: the mutex, with the expiry it set
        expire = RedisOptions.from_options(options, LEASE).unacked_mutex_expire
        with redis.Redis.from_url(env.broker.url) as client:
            client.set(f"{env.broker.prefix}unacked_mutex", "dead", px=int(expire * 1000))
        killed = env.tally(sent).in_flight()
        assert killed
        worker = env.worker(concurrency=8)
        started = worker.started_at
        worker.wait_ready()
        wait_for(lambda: killed <= env.tally(sent).finished(), 60, "the killed tasks to run again")
        finishes = [e.at for e in env.events() if e.kind == "D" and e.task_id in killed]
        recovery = max(finishes) - started
        env.wait_finished(sent, timeout=120)
        env.stop_workers()
        tally = env.tally(sent)
        record_row(
            Row(
                "1b. SIGKILL inside a restore",
                broker_kind,
                count,
                len(tally.lost()),
                tally.duplicated(),
                f"killed tasks re-ran {recovery:.1f} s after the new worker started",
                f"unacked_mutex left behind (expires in {expire:g} s); lease {LEASE:g} s",
            )
        )
        assert tally.lost() == []
        assert recovery <= RERUN_BOUND, recovery


# -- 2. SIGKILL of one pool child ------------------------------------------------------------------
@pytest.mark.skipif(not HAS_PREFORK, reason=NO_PREFORK)
def test_sigkill_one_pool_child(fault_env: Callable[..., FaultEnv], broker_kind: str) -> None:
    env = fault_env(broker_transport_options={"visibility_timeout": LEASE})
    count = scale(200, 600)
    concurrency = 4
    with diagnostics(env):
        worker = env.worker(pool="prefork", concurrency=concurrency).wait_ready(30)
        wait_for(lambda: len(worker.children()) >= concurrency, 30, "the pool's children")
        sent = env.send_work(count, durations(count))
        env.wait_finished_count(sent, count // 4, timeout=120)
        children = {p.pid for p in worker.children()}

        def running_in_child() -> tuple[str, int] | None:
            tally = env.tally(sent)
            running = tally.in_flight()
            for event in reversed(tally.events):
                if event.kind == "S" and event.task_id in running and event.pid in children:
                    return event.task_id, event.pid
            return None

        task_id, pid = wait_for(running_in_child, 30, "a task running in a pool child")
        signal_sent = time.time()
        os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            pids = {p.pid for p in worker.children()}
            return pid not in pids and len(pids) >= concurrency

        wait_for(replaced, 30, "the pool to replace the killed child")
        env.wait_finished(sent, timeout=180)
        assert worker.alive(), "the worker died with its child"
        wait_queue_empty(env)
        env.stop_workers()
        tally = env.tally(sent)
        rerun = [e.at for e in tally.events if e.kind == "D" and e.task_id == task_id]
        record_row(
            Row(
                "2. SIGKILL one pool child",
                broker_kind,
                count,
                len(tally.lost()),
                tally.duplicated(),
                f"killed task re-ran {min(rerun) - signal_sent:.1f} s after the kill",
                f"prefork -c {concurrency}; child replaced",
            )
        )
        assert tally.lost() == []
        assert tally.duplicated() == 0, tally.duplicated_ids()
        assert_all_succeeded(env, sent)


# -- 3. SIGTERM: warm shutdown ---------------------------------------------------------------------
def test_sigterm_warm_shutdown_loses_and_doubles_nothing(
    fault_env: Callable[..., FaultEnv], broker_kind: str
) -> None:
    env = fault_env(broker_transport_options={"visibility_timeout": LEASE})
    count = scale(200, 1000)
    rounds = scale(1, 3)
    with diagnostics(env):
        worker = env.worker(concurrency=8).wait_ready()
        sent = env.send_work(count, durations(count))
        shutdown_times = []
        for round_ in range(1, rounds + 1):
            env.wait_finished_count(sent, count * round_ // (rounds + 3), timeout=120)
            stopping = time.monotonic()
            worker.terminate()
            assert worker.wait_exit(60) == 0, "a warm shutdown exits 0"
            shutdown_times.append(time.monotonic() - stopping)
            assert env.tally(sent).in_flight() == set(), "a running task did not finish"
            worker = env.worker(concurrency=8).wait_ready()
        env.wait_finished(sent, timeout=180)
        wait_queue_empty(env)
        env.stop_workers()
        tally = env.tally(sent)
        record_row(
            Row(
                "3. SIGTERM (warm shutdown)",
                broker_kind,
                count,
                len(tally.lost()),
                tally.duplicated(),
                f"worker exited {max(shutdown_times):.1f} s after SIGTERM",
                f"{rounds} shutdown(s); {tally.interrupted()} runs interrupted",
            )
        )
        assert tally.lost() == []
        assert tally.duplicated() == 0, tally.duplicated_ids()
        assert tally.interrupted() == 0
        assert_all_succeeded(env, sent)
