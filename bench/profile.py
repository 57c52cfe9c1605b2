"""Where Celeriac spends its time: ``python -m bench.profile enqueue|drain|trace [options]``.

Runs on a private Redis like the benchmark, and prints what costs most:

``enqueue``  cProfile of ``delay()`` and of the bulk path in this process: the functions with
             the most own time, and Celeriac's functions by cumulative time.
``drain``    a worker draining ``--count`` tasks under ``py-spy record`` (``pip install py-spy``):
             own and inclusive share of samples per function; ``--speedscope FILE`` also keeps
             the whole profile for https://www.speedscope.app. Extra worker options after ``--``
             (e.g. ``-- --prefetch-multiplier 64``); ``--pool``, ``--task add|add_nr``.
``trace``    Redis MONITOR during one ``delay().get()`` against a running worker: every command
             of one round trip, with the server's timestamps (where the milliseconds go).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import frameworks, marks
from bench.servers import RedisServer
from bench.workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def _setup(server: RedisServer) -> frameworks.Adapter:
    os.environ.update(
        BENCH_BROKER_URL=server.url, BENCH_BACKEND_URL=server.url, BENCH_REDIS_URL=server.url
    )
    # this checkout's sources first (a venv may hold an editable install of another one)
    os.environ["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    return frameworks.load("celeriac")


def _worker(adapter: frameworks.Adapter, args: argparse.Namespace, **env: str) -> WorkerProcess:
    argv = adapter.worker_argv(args.pool, args.concurrency) + list(args.worker_args)
    return WorkerProcess(argv, env={**os.environ, **env}, cwd=str(ROOT)).start()


def profile_enqueue(adapter: Any, args: argparse.Namespace) -> None:
    task = adapter.task(args.task)
    for i in range(200):
        task.delay(i, i)
    for name, call in (
        ("delay() loop", lambda: [task.delay(i, i) for i in range(args.count)]),
        ("bulk: prepare + publish_many", lambda: adapter.publish_many(task, args.count)),
    ):
        start = time.perf_counter()
        call()
        rate = args.count / (time.perf_counter() - start)
        profiler = cProfile.Profile()
        profiler.runcall(call)
        print(f"\n=== {name}: {rate:,.0f} tasks/s unprofiled")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats("celeriac", args.top)


def _frame(text: str) -> str:
    name, _, where = text.partition(" (")
    path = where.split(":")[0]
    for prefix in (str(ROOT / "src") + "/", "site-packages/", "/lib/python3"):
        if prefix in path:
            path = path.split(prefix, 1)[1]
    return f"{name} ({path})"


def summarize_collapsed(path: Path, top: int) -> None:
    """Own and inclusive shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples (non-idle, all threads)")
    print("--- own time")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame}")
    print("--- inclusive, Celeriac's functions")
    shown = [(f, n) for f, n in inclusive.most_common() if "celeriac/" in f and "cli/" not in f]
    for frame, n in shown[:top]:
        print(f"{100 * n / total:5.1f}%  {frame}")


def _py_spy(pid: int, out: Path, fmt: str, rate: int = 250) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    argv = [exe, "record", "-p", str(pid), "-r", str(rate), "-f", fmt, "-o", str(out)]
    argv += ["--nonblocking", "-s", *(["--gil"] if os.environ.get("BENCH_PY_SPY_GIL") else [])]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_drain(adapter: Any, args: argparse.Namespace) -> None:
    adapter.preload(args.task, args.count)
    worker = _worker(adapter, args, BENCH_MARK_URL=os.environ["BENCH_REDIS_URL"])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        spies = [_py_spy(worker.pid, raw, "raw", args.rate)]
        if args.speedscope:
            spies.append(_py_spy(worker.pid, Path(args.speedscope), "speedscope", args.rate))
        client = frameworks.redis_client()
        try:
            while True:
                done, first, last = marks.read(client)
                if done >= args.count:
                    break
                worker.check()
                time.sleep(0.05)
        finally:
            for spy in spies:
                spy.send_signal(2)
                spy.wait(60)
            worker.stop()
        assert first is not None and last is not None
        print(f"drained {args.count} in {last - first:.2f} s: {args.count / (last - first):,.0f}/s")
        summarize_collapsed(raw, args.top)


def trace_roundtrip(adapter: Any, args: argparse.Namespace) -> None:
    import redis

    worker = _worker(adapter, args)
    try:
        adapter.get(adapter.delay("add", 1, 1), timeout=60)
        for i in range(50):
            adapter.get(adapter.delay("add", i, i), timeout=10)
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def monitor() -> None:
            with redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]).monitor() as m:
                for command in m.listen():
                    seen.append(command)
                    if stop.is_set():
                        return

        threading.Thread(target=monitor, daemon=True).start()
        time.sleep(0.5)
        start = time.time()
        adapter.get(adapter.delay("add", 7, 7), timeout=10)
        elapsed = (time.time() - start) * 1000
        time.sleep(0.05)
        stop.set()
        frameworks.redis_client().ping()
        time.sleep(0.2)
    finally:
        worker.stop()
    print(f"one delay().get(): {elapsed:.2f} ms; server time (ms), client, command:")
    t0 = seen[0]["time"] if seen else 0.0
    for c in seen:
        who = f"{c.get('client_address', '')}:{c.get('client_port', '')}"
        print(f"{(c['time'] - t0) * 1000:8.3f}  {who:<22} {c['command'][:110]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("what", choices=["enqueue", "drain", "trace"])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--task", default="add")
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--speedscope", help="also write a speedscope profile (drain)")
    parser.add_argument("worker_args", nargs="*", help="after --: extra worker options")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        adapter = _setup(server)
        {"enqueue": profile_enqueue, "drain": profile_drain, "trace": trace_roundtrip}[args.what](
            adapter, args
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
