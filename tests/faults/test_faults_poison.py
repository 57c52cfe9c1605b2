"""5. A task that kills its own process every time ends in the dead-letter queue, not in a loop.

``faults.suicide`` SIGKILLs the process running it. With the ``threads`` pool that is the whole
worker: a supervisor (as systemd or Kubernetes would) starts a new one each time it dies. Each
death leaves the message leased; when the lease runs out it is delivered again, with a higher
delivery count. The delivery after ``broker_max_deliveries`` (5) is not run: the message goes to
the dead-letter queue and the task's state is FAILURE with ``WorkerLostError``. With the
``prefork`` pool only the child dies; the worker stays up and the same guard applies.

Ordinary tasks sent behind the poison message all run (the worker holds one message at a time
here, ``-c 1`` and prefetch multiplier 1: with a larger prefetch, messages held beside the poison
one by a worker that it kills also count deliveries).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable

import pytest
from faults_harness import (
    SOAK,
    FaultEnv,
    Row,
    WorkerProcess,
    diagnostics,
    record_row,
    wait_for,
)

from celeriac import states
from celeriac.exceptions import WorkerLostError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if SOAK else 180)]

LEASE = 2.0
MAX_DELIVERIES = 5
HAS_PREFORK = importlib.util.find_spec("celeriac.worker.pools.prefork") is not None
NO_PREFORK = "the prefork pool (celeriac.worker.pools.prefork, issue 5) does not exist yet"


class Supervisor:
    """Restarts the worker whenever it dies, like a process manager; counts the restarts."""

    def __init__(self, env: FaultEnv, pool: str) -> None:
        self.env = env
        self.pool = pool
        self.restarts = 0
        self.worker: WorkerProcess = env.worker(pool=pool, concurrency=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Supervisor:
        self.worker.wait_ready()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if not self.worker.alive():
                self.restarts += 1
                self.worker = self.env.worker(pool=self.pool, concurrency=1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.env.stop_workers()


@pytest.mark.parametrize(
    "pool",
    [
        "threads",
        pytest.param("prefork", marks=pytest.mark.skipif(not HAS_PREFORK, reason=NO_PREFORK)),
    ],
)
def test_self_killing_task_is_dead_lettered(
    fault_env: Callable[..., FaultEnv], broker_kind: str, pool: str
) -> None:
    env = fault_env(
        broker_transport_options={"visibility_timeout": LEASE},
        broker_max_deliveries=MAX_DELIVERIES,
        worker_prefetch_multiplier=1,
    )
    good_count = 20
    with diagnostics(env):
        supervisor = Supervisor(env, pool).start()
        try:
            began = time.monotonic()
            poison = env.client.send_task("faults.suicide")
            good = env.send_work(good_count, 0.1)
            backend = env.client.backend
            assert backend is not None
            wait_for(
                lambda: backend.get_meta(poison.id).status == states.FAILURE,
                90,
                "the poison task to be given up",
                interval=0.1,
            )
            given_up = time.monotonic() - began
            error = poison.get(timeout=5, propagate=False)
            env.wait_finished(good, timeout=60)
            # the FAILURE record and the dead letter are separate writes: wait for the letter
            wait_for(
                lambda: any(
                    dl.message.headers.get("id") == poison.id
                    for dl in env.client.transport.dead_letters()
                ),
                10,
                "the poison message in the dead-letter queue",
                interval=0.1,
            )
            letters = env.client.transport.dead_letters()
        finally:
            supervisor.stop()
        runs = env.tally([poison.id]).starts[poison.id]
        tally = env.tally(good)
        record_row(
            Row(
                f"5. self-killing task ({pool})",
                broker_kind,
                1 + good_count,
                len(tally.lost()),
                tally.duplicated(),
                f"dead-lettered {given_up:.1f} s after it was sent",
                f"{runs} runs, {supervisor.restarts} worker restarts, then FAILURE "
                f"WorkerLostError; lease {LEASE:g} s",
            )
        )
        assert isinstance(error, WorkerLostError), error
        assert f"delivered {MAX_DELIVERIES + 1} times" in str(error)
        assert runs == MAX_DELIVERIES
        if pool == "threads":
            assert supervisor.restarts == MAX_DELIVERIES
        else:
            assert supervisor.restarts == 0, "a child's death must not kill the worker"
        (letter,) = [dl for dl in letters if dl.message.headers.get("id") == poison.id]
        assert letter.queue == env.queue
        assert "broker_max_deliveries" in letter.reason
        assert tally.lost() == []
        assert tally.duplicated() == 0
