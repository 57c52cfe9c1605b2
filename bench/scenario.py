"""One scenario for one framework, in its own process: ``python -m bench.scenario FW NAME JSON``.

Prints ``BENCH-RESULT <json>`` as its last line. The URLs come from the environment:
``BENCH_REDIS_URL`` (the private Redis: flushed before each step, and where execution marks go),
``BENCH_BROKER_URL`` and ``BENCH_BACKEND_URL`` (the framework's; the same Redis, or a SQLite file).

Scenarios
    ``enqueue``    ``count`` single ``delay()`` calls, then ``count`` through the bulk path.
    ``drain``      ``count`` calls of ``task`` queued first, then a worker (``pool``,
                   ``concurrency``): first to last execution (``bench.marks``); checks that
                   ``add`` left ``count`` results in Redis and ``add_nr`` none.
    ``roundtrip``  a worker, then ``count`` sequential ``delay().get()``, each result checked;
                   raw PING RTT beside.
    ``chord``      a worker, then one chord of ``count`` no-op tasks summed by its body.
    ``idle``       a worker, one round trip to know it is up, then its peak RSS over a while.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from bench import frameworks, marks
from bench.stats import percentile
from bench.workers import WorkerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flush() -> None:
    frameworks.redis_client().flushdb()


def _worker(adapter: frameworks.Adapter, pool: str, concurrency: int, **env: str) -> WorkerProcess:
    full_env = {**os.environ, "PYTHONPATH": ROOT, **env}
    return WorkerProcess(adapter.worker_argv(pool, concurrency), env=full_env, cwd=ROOT)


def ping_rtt(count: int = 1000) -> dict[str, float]:
    """Raw Redis round trip (PING) p50/p99 in ms, measured now from this process."""
    client = frameworks.redis_client()
    client.ping()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def enqueue(adapter: frameworks.Adapter, count: int, task: str = "add") -> dict[str, Any]:
    client = frameworks.redis_client()
    _flush()
    paths = adapter.bulk_paths()
    for i in range(min(200, count)):  # warm up: connections, script loading, imports
        adapter.delay(task, i, i)
    for send in paths.values():
        send(task, 10)
    payload = b"x" * (adapter.message_bytes(client) or 1)
    _flush()
    single, raw_single = _delay_beside_raw(adapter, task, count, client, payload)
    queued = adapter.queued(client)
    if queued != count:
        raise RuntimeError(f"delay() loop: {queued} queued, not {count}")
    size = adapter.message_bytes(client)
    _flush()
    result: dict[str, Any] = {
        "single_rate": count / single,
        "raw_single_rate": count / raw_single,
        "single_vs_raw": raw_single / single,
        "message_bytes": size,
        "bulk": {},
    }
    for name, send in paths.items():
        start = time.perf_counter()
        send(task, count)
        seconds = time.perf_counter() - start
        queued = adapter.queued(client)
        if queued != count:
            raise RuntimeError(f"{name}: {queued} queued, not {count}")
        result["bulk"][name] = count / seconds
        _flush()
    if paths:
        best = max(result["bulk"], key=result["bulk"].get)
        result["bulk_rate"], result["bulk_path"] = result["bulk"][best], best
    return result


#: blocks of the ``delay()`` loop, each followed by as many raw LPUSHes
PAIRED_BLOCKS = 5
#: where the raw LPUSHes beside the ``delay()`` loop go (deleted after)
RAW_KEY = "bench:raw-beside-delay"


def _delay_beside_raw(
    adapter: frameworks.Adapter, task: str, count: int, client: Any, payload: bytes
) -> tuple[float, float]:
    """Seconds of ``count`` ``delay()`` calls and of ``count`` plain redis-py ``LPUSH`` of a
    message of the same size, in alternating blocks in this process: on a VM whose lone round
    trips swing with the other vCPU's load, the ratio of the two is only meaningful when they
    run side by side (the raw ceiling job runs minutes apart)."""
    single = raw = 0.0
    done = 0
    for block in range(PAIRED_BLOCKS):
        size = count // PAIRED_BLOCKS if block < PAIRED_BLOCKS - 1 else count - done
        start = time.perf_counter()
        for i in range(done, done + size):
            adapter.delay(task, i, i)
        single += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(size):
            client.lpush(RAW_KEY, payload)
        raw += time.perf_counter() - start
        done += size
    client.delete(RAW_KEY)
    return single, raw


def _wait_done(
    worker: WorkerProcess, count: int, timeout: float
) -> tuple[int, float | None, float | None]:
    client = frameworks.redis_client()
    deadline = time.monotonic() + timeout
    done, first, last = 0, None, None
    while time.monotonic() < deadline:
        done, first, last = marks.read(client)
        if done >= count:
            break
        worker.check()
        time.sleep(0.02)
    return done, first, last


def drain(
    adapter: frameworks.Adapter, count: int, task: str, pool: str, concurrency: int
) -> dict[str, Any]:
    _flush()
    if hasattr(adapter, "flush_broker"):
        adapter.flush_broker()
    start = time.perf_counter()
    how = adapter.preload(task, count)
    preload_seconds = time.perf_counter() - start
    timeout = 60 + count / 50
    env = {"BENCH_MARK_URL": os.environ["BENCH_REDIS_URL"]}
    with _worker(adapter, pool, concurrency, **env) as worker:
        done, first, last = _wait_done(worker, count, timeout)
        started_at = worker.started_at
    client = frameworks.redis_client()
    results = adapter.results_stored(client)
    _flush()
    if done < count or first is None or last is None:
        raise RuntimeError(f"only {done} of {count} tasks ran within {timeout:.0f} s")
    expected = count if task == "add" else 0
    if results != expected:
        raise RuntimeError(f"{task}: {results} results stored after the drain, not {expected}")
    seconds = last - first
    return {
        "rate": count / seconds if seconds > 0 else float("inf"),
        "seconds": seconds,
        "startup_to_first": first - started_at,
        "preload": how,
        "preload_seconds": preload_seconds,
        "results_stored": results,
    }


def _until_up(adapter: frameworks.Adapter, worker: WorkerProcess, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    handle = adapter.delay("add", 1, 1)
    while True:
        worker.check()
        try:
            adapter.get(handle, timeout=1.0)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def roundtrip(
    adapter: frameworks.Adapter, count: int, pool: str, concurrency: int
) -> dict[str, Any]:
    _flush()
    with _worker(adapter, pool, concurrency) as worker:
        _until_up(adapter, worker)
        for i in range(50):
            adapter.get(adapter.delay("add", i, i), timeout=10)
        raw_before = ping_rtt()
        times = []
        for i in range(count):
            start = time.perf_counter()
            value = adapter.get(adapter.delay("add", i, i), timeout=10)
            times.append((time.perf_counter() - start) * 1000)
            if value != i + i:
                raise RuntimeError(f"add({i}, {i}) returned {value!r}, not {i + i}")
        raw_after = ping_rtt()
        legs = _legs(adapter, max(50, count // 5))
    _flush()
    return {
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "mean": sum(times) / len(times),
        "raw_ping_p50": (raw_before["p50"] + raw_after["p50"]) / 2,
        **legs,
    }


def _legs(adapter: frameworks.Adapter, count: int) -> dict[str, float]:
    """p50 of the two legs of a round trip, from ``bench.stamp`` (wall clock, ms): from before
    ``delay()`` to the task running, and from the task running to ``get()`` returning."""
    send, back = [], []
    for _ in range(count):
        start = time.time()
        ran = float(adapter.get(adapter.delay("stamp"), timeout=10))
        end = time.time()
        send.append((ran - start) * 1000)
        back.append((end - ran) * 1000)
    return {"send_leg_p50": percentile(send, 50), "result_leg_p50": percentile(back, 50)}


def idle(
    adapter: frameworks.Adapter, pool: str, concurrency: int, seconds: float = 2.0
) -> dict[str, Any]:
    _flush()
    with _worker(adapter, pool, concurrency) as worker:
        _until_up(adapter, worker)
        time.sleep(0.5)
        peak = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, worker.rss())
            time.sleep(0.05)
    _flush()
    return {"rss_mb": peak / 2**20}


def chord(
    adapter: frameworks.Adapter, count: int, pool: str, concurrency: int, timeout: float
) -> dict[str, Any]:
    """A running worker, a warm-up chord of 10, then ``chord([add.s(i, i) ...])(tsum.s())`` of
    ``count`` header tasks: the client's send (building the signatures included) and the call to
    ``get()`` returning the body's result. A chord not done within ``timeout`` s is reported as
    timed out (``timed_out``, a ``note``), not as a failure of the run."""
    _flush()
    expected = sum(i + i for i in range(count))
    with _worker(adapter, pool, concurrency) as worker:
        _until_up(adapter, worker)
        warm = adapter.get(adapter.chord(10), timeout=60)
        if warm != 90:
            raise RuntimeError(f"warm-up chord of 10: body returned {warm!r}, not 90")
        start = time.perf_counter()
        handle = adapter.chord(count)
        sent = time.perf_counter()
        try:
            value = adapter.get(handle, timeout=timeout)
        except Exception as exc:
            if "timeout" not in type(exc).__name__.lower() and "timed out" not in str(exc):
                raise
            note = f"chord of {count:,} on {adapter.name}: timed out after {timeout:.0f} s"
            return {"timed_out": True, "note": note, "send_seconds": sent - start}
        done = time.perf_counter()
    _flush()
    if value != expected:
        raise RuntimeError(f"chord of {count}: body returned {value!r}, not {expected}")
    return {"seconds": done - start, "send_seconds": sent - start, "sum_ok": True}


SCENARIOS = {
    "enqueue": enqueue,
    "drain": drain,
    "roundtrip": roundtrip,
    "idle": idle,
    "chord": chord,
}


def main(argv: list[str]) -> int:
    framework, name, params = argv[0], argv[1], json.loads(argv[2] if len(argv) > 2 else "{}")
    adapter = frameworks.load(framework)
    result = SCENARIOS[name](adapter, **params)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
