"""CPU per task of a Redis drain, A/B: ``python -m bench.drain_cpu --src DIR [--src DIR ...]``.

With ``--roundtrip N``: instead of a drain, ``N`` ``delay().get()`` round trips against an idle
worker of each checkout (p50/p99 in ms, the worker's CPU per round trip in microseconds, and
the p50 of the send and result legs).

Each ``--src`` is a Celeriac checkout (its ``src/`` is put first on the worker's
``PYTHONPATH``); the runs alternate between them (A B A B ...) for ``--rounds`` rounds on one
private Redis. A run queues ``--count`` ``add`` tasks (results stored), starts
``celeriac worker -P <pool> -c <concurrency>``, and measures from the first task's mark to the
last: the drain rate and the CPU time (user + sys) of the worker with its descendants and of
redis-server, in microseconds per task. On 2 shared cores the CPU per task is the figure to
trust; the rate swings with what else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import frameworks, marks
from bench.servers import RedisServer
from bench.workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def _cpu(proc: psutil.Process) -> float:
    """User + sys seconds of ``proc`` and its live descendants."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def one_run(
    adapter: Any, server: RedisServer, src: str, args: argparse.Namespace
) -> dict[str, float]:
    client = frameworks.redis_client()
    client.flushdb()  # the private server of this run only
    client.config_resetstat()
    adapter.preload(args.task, args.count)
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}/src:{ROOT}",
        "BENCH_MARK_URL": server.url,
    }
    argv = adapter.worker_argv(args.pool, args.concurrency) + list(args.worker_args)
    redis_proc = psutil.Process(server.process.pid if server.process else 0)
    with WorkerProcess(argv, env=env, cwd=str(ROOT)) as worker:
        proc = psutil.Process(worker.pid)
        cpu0 = rcpu0 = None
        deadline = time.monotonic() + 60 + args.count / 50
        while time.monotonic() < deadline:
            done = int(client.get(marks.DONE) or 0)
            if cpu0 is None and done > 0:
                cpu0, rcpu0, done0 = _cpu(proc), _cpu(redis_proc), done
            if done >= args.count:
                break
            worker.check()
            time.sleep(0.005)
        cpu1, rcpu1 = _cpu(proc), _cpu(redis_proc)
        _, first, last = marks.read(client)
    if cpu0 is None or rcpu0 is None or first is None or last is None or done < args.count:
        raise RuntimeError(f"only {done} of {args.count} ran")
    counted = args.count - done0
    stored = adapter.results_stored(client) if args.task == "add" else 0
    if args.task == "add" and stored != args.count:
        raise RuntimeError(f"{stored} results stored, not {args.count}")
    stats = client.info("commandstats")
    evals = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    return {
        "tasks_per_evalsha": args.count / max(evals, 1),
        "rate": args.count / (last - first),
        "worker_us": (cpu1 - cpu0) / counted * 1e6,
        "redis_us": (rcpu1 - rcpu0) / counted * 1e6,
    }


def one_roundtrip(
    adapter: Any, server: RedisServer, src: str, args: argparse.Namespace
) -> dict[str, float]:
    from bench.scenario import _legs, _until_up
    from bench.stats import percentile

    frameworks.redis_client().flushdb()
    env = {**os.environ, "PYTHONPATH": f"{src}/src:{ROOT}"}
    argv = adapter.worker_argv(args.pool, args.concurrency) + list(args.worker_args)
    with WorkerProcess(argv, env=env, cwd=str(ROOT)) as worker:
        _until_up(adapter, worker)
        proc = psutil.Process(worker.pid)
        for i in range(50):
            adapter.get(adapter.delay("add", i, i), timeout=10)
        times = []
        cpu0 = _cpu(proc)
        for i in range(args.roundtrip):
            start = time.perf_counter()
            adapter.get(adapter.delay("add", i, i), timeout=10)
            times.append((time.perf_counter() - start) * 1000)
        worker_us = (_cpu(proc) - cpu0) / max(args.roundtrip, 1) * 1e6
        legs = _legs(adapter, max(50, args.roundtrip // 5))
    return {
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "worker_us": worker_us,
        **legs,
    }


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):8,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain_cpu", description=__doc__)
    parser.add_argument("--src", action="append", required=True, help="a Celeriac checkout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--task", default="add")
    parser.add_argument("--roundtrip", type=int, default=0, metavar="N")
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("worker_args", nargs="*", help="after --: extra worker options")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        os.environ.update(
            BENCH_BROKER_URL=server.url, BENCH_BACKEND_URL=server.url, BENCH_REDIS_URL=server.url
        )
        os.environ["PYTHONPATH"] = str(ROOT)
        adapter = frameworks.load("celeriac")
        runs: dict[str, list[dict[str, float]]] = {src: [] for src in args.src}
        for r in range(args.rounds):
            for src in args.src:
                if args.roundtrip:
                    run = one_roundtrip(adapter, server, src, args)
                    runs[src].append(run)
                    print(f"round {r + 1} {src}: {run}", flush=True)
                    continue
                run = one_run(adapter, server, src, args)
                runs[src].append(run)
                print(
                    f"round {r + 1} {src}: {run['rate']:,.0f}/s worker {run['worker_us']:.1f} "
                    f"us/task redis {run['redis_us']:.1f} us/task, "
                    f"{run['tasks_per_evalsha']:.1f} tasks/EVALSHA",
                    flush=True,
                )
    if args.roundtrip:
        print(f"\n{args.pool} -c {args.concurrency}, {args.roundtrip} round trips (ms): median")
        for src, got in runs.items():
            print(src, {k: round(statistics.median(g[k] for g in got), 3) for k in got[0]})
        return 0
    print(f"\n{args.pool} -c {args.concurrency}, {args.count} x {args.task}: median (range)")
    for src, got in runs.items():
        print(
            f"{src}\n  rate {_summary([g['rate'] for g in got])}/s   worker "
            f"{_summary([g['worker_us'] for g in got])} us/task   redis "
            f"{_summary([g['redis_us'] for g in got])} us/task"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
