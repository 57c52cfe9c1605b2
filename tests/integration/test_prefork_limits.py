"""Worker-level limits on the SQLite broker (prefork) and the memory broker (other pools): a rate
limit of 10/s is held over 5 s without holding up other tasks, rate limits apply in every pool
and waiting requests go back at shutdown; ``autoscale`` grows the pool from its minimum."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.testing.worker import start_worker
from celeriac.worker.pools.prefork import PreforkPool

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the prefork pool runs on Linux"),
    pytest.mark.timeout(60),
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celeriac]:
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    application = Celeriac("limits", broker=url, backend=url)
    yield application
    application.close()


def test_rate_limit_of_10_per_second_is_held_and_other_tasks_run_meanwhile(app: Celeriac) -> None:
    @app.task(name="t.tick", rate_limit="10/s")
    def tick() -> float:
        return time.time()

    @app.task(name="t.free")
    def free() -> float:
        return time.time()

    # 14 limited messages before the free one: more than the prefetch (8) could hold if the
    # waiting ones counted against it; then the free one would wait for 7 ticks (0.7 s)
    first = [tick.delay() for _ in range(14)]
    unlimited = free.delay()
    rest = [tick.delay() for _ in range(42)]
    with start_worker(app, pool="prefork", concurrency=2):
        stamps = sorted(r.get(timeout=30) for r in first + rest)
        free_at = unlimited.get(timeout=30)
    start = stamps[0]
    in_five_seconds = sum(1 for s in stamps if s < start + 5.0)
    assert 45 <= in_five_seconds <= 55, in_five_seconds  # 10/s within 10 %
    rate = (len(stamps) - 1) / (stamps[-1] - start)
    assert 9.0 <= rate <= 11.0, rate
    assert free_at < stamps[4], "the unlimited task waited behind the rate-limited ones"


def test_autoscale_starts_at_the_minimum_and_grows_with_load(app: Celeriac) -> None:
    @app.task(name="t.nap")
    def nap(seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    with start_worker(app, pool="prefork", autoscale="3,1") as worker:
        pool = worker.pool
        assert isinstance(pool, PreforkPool)
        assert worker.concurrency == 3 and len(pool.processes) == 1
        results = [nap.delay(0.5) for _ in range(3)]
        pids = {r.get(timeout=20) for r in results}
        assert len(pids) == 3 and pool.counters["forked"] == 3
        assert "autoscale 1..3" in worker.banner()


@pytest.mark.parametrize("pool", ["threads", "asyncio", "solo"])
def test_rate_limits_apply_in_every_pool(pool: str) -> None:
    app = Celeriac("limits-pools", broker=f"memory://rl-{pool}", backend=f"memory://rl-{pool}")

    @app.task(name="t.tick", rate_limit="20/s")
    def tick() -> float:
        return time.monotonic()

    results = [tick.delay() for _ in range(6)]
    started = time.monotonic()
    with start_worker(app, pool=pool, concurrency=2):
        stamps = sorted(r.get(timeout=10) for r in results)
    # bookings are 50 ms apart from the first: the sixth cannot start before 250 ms
    assert stamps[-1] - started >= 0.25, [s - started for s in stamps]
    app.close()


def test_requests_waiting_for_a_token_go_back_to_the_queue_at_shutdown(app: Celeriac) -> None:
    @app.task(name="t.rare", rate_limit="1/m")
    def rare() -> None:
        return None

    results = [rare.delay() for _ in range(3)]
    with start_worker(app, pool="prefork", concurrency=2) as worker:
        assert worker.state.wait_for(lambda s: s.succeeded == 1 and len(s.reserved) == 2, 10)
    assert worker.state.counters.requeued == 2
    assert app.transport.qsize("celery") == 2
    assert sum(r.ready() for r in results) == 1


def test_autoscale_needs_prefork_and_sets_the_concurrency(app: Celeriac) -> None:
    from celeriac.exceptions import ImproperlyConfigured
    from celeriac.worker import Worker

    with pytest.raises(ImproperlyConfigured, match="prefork"):
        Worker(app, pool="threads", autoscale="4,2")
    worker = Worker(app, pool="prefork", autoscale="4,2", prefetch_multiplier=2)
    assert (worker.concurrency, worker.prefetch, worker.autoscale) == (4, 8, (4, 2))


def test_worker_command_passes_the_prefork_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from celeriac.cli.main import main
    from celeriac.worker import Worker

    url = f"sqlite:///{tmp_path}/cli.sqlite3"
    (tmp_path / "prefork_cli_app.py").write_text(
        "from celeriac import Celeriac\n"
        f"app = Celeriac('cli', broker='{url}', backend='{url}', worker_hijack_root_logger=False)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[Worker] = []

    def fake_run(self: Worker) -> int:
        seen.append(self)
        return 0

    monkeypatch.setattr(Worker, "run", fake_run)
    args = ["--max-tasks-per-child", "3", "--max-memory-per-child", "200000", "--autoscale", "3,1"]
    result = CliRunner().invoke(
        main, ["-A", "prefork_cli_app", "worker", "-P", "prefork", "--time-limit", "9", *args]
    )
    assert result.exit_code == 0, result.output
    (worker,) = seen
    assert (worker.pool_name, worker.concurrency, worker.autoscale) == ("prefork", 3, (3, 1))
    assert (worker.max_tasks_per_child, worker.max_memory_per_child) == (3, 200000)
    assert worker.app.conf.task_time_limit == 9
    assert "3 (prefork, autoscale 1..3)" in result.output
    worker.app.close()
