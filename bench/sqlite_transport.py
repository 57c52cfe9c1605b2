"""Benchmark of the SQLite broker and result store (not a test).

    .venv/bin/python bench/sqlite_transport.py [--messages 20000] [--samples 60] [--roundtrips 1000]
        [--polling-interval S] [--no-wake] [--only micro,wake,e2e]

Prints, on one SQLite file in a temporary directory:
- ``micro``: publish rate (one transaction per message, and batches), fetch+ack rate with batches,
  and the CPU an idle ``fetch`` burns;
- ``wake``: publish -> fetch latency while the consumer is idle (same process; other process),
  and result ``set`` -> ``wait_for_change`` latency from another process (p50/p90/max), with
  random gaps so that every sample starts from an idle wait;
- ``e2e``: a worker process (``celeriac worker -P threads -c 4``) and this process doing
  ``--roundtrips`` sequential ``add.delay(1, 1).get()``: p50/p90/p99 of the round trip.
``--no-wake`` turns the socket wake-ups off (``broker_transport_options={"wake": False}``), so
only polling (``--polling-interval``) finds other processes' writes: the figures before them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celeriac.backends.sqlite import SQLiteStore
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.sqlite import SQLiteTransport

HEADERS = {
    "lang": "py",
    "task": "tasks.add",
    "id": "00000000-0000-0000-0000-000000000000",
    "retries": 0,
    "eta": None,
    "expires": None,
    "root_id": "00000000-0000-0000-0000-000000000000",
    "parent_id": None,
    "argsrepr": "(2, 3)",
    "kwargsrepr": "{}",
    "origin": "gen1@bench",
}
PROPERTIES = {"correlation_id": "x", "reply_to": "y", "delivery_mode": 2, "priority": 0}
BODY = b'[[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def message(i: int = 0, **headers: object) -> RawMessage:
    return RawMessage(BODY, headers={**HEADERS, "n": i, **headers}, properties=PROPERTIES)


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:10,.0f} msg/s  ({count} in {seconds:.2f} s)"


def bench_publish(url: str, count: int) -> None:
    transport = SQLiteTransport(url)
    start = time.perf_counter()
    for i in range(count):
        transport.publish("single", message(i))
    print(f"publish, 1 per transaction     {rate(count, time.perf_counter() - start)}")
    for batch in (10, 100):
        start = time.perf_counter()
        for first in range(0, count, batch):
            transport.publish_many(
                [("batch", message(i), None) for i in range(first, first + batch)]
            )
        print(f"publish_many, batches of {batch:<5} {rate(count, time.perf_counter() - start)}")
    transport.purge("batch")
    transport.close()


def bench_consume(url: str, count: int) -> None:
    transport = SQLiteTransport(url)
    for batch in (1, 10, 100):
        transport.publish_many([("consume", message(i), None) for i in range(count)])
        start = time.perf_counter()
        done = 0
        while done < count:
            got = transport.fetch(["consume"], batch, 1.0)
            transport.ack(got)
            done += len(got)
        print(f"fetch+ack, batches of {batch:<8} {rate(count, time.perf_counter() - start)}")
    transport.close()


def _consumer(url: str, samples: int, ready: Any, out: Any, options: dict[str, Any]) -> None:
    transport = SQLiteTransport(url, options=options)
    latencies: list[float] = []
    ready.set()
    while len(latencies) < samples:
        for delivery in transport.fetch(["latency"], 1, 10.0):
            latencies.append(time.time() - float(delivery.message.headers["sent"]))
            transport.ack([delivery])
    out.put(latencies)
    transport.close()


def _gaps(samples: int) -> list[float]:
    rng = random.Random(7)
    return [rng.uniform(0.0, 0.6) for _ in range(samples)]


def bench_latency_other_process(url: str, samples: int, options: dict[str, Any]) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_consumer, args=(url, samples, ready, out, options))
    child.start()
    ready.wait(30)
    producer = SQLiteTransport(url)
    time.sleep(0.5)  # let the consumer reach its idle pace
    for i, gap in enumerate(_gaps(samples)):
        time.sleep(gap)
        producer.publish("latency", message(i, sent=time.time()))
    latencies: list[float] = out.get(timeout=60)
    child.join(30)
    producer.close()
    return latencies


def bench_latency_same_process(url: str, samples: int, options: dict[str, Any]) -> list[float]:
    import queue
    import threading

    ready, out = threading.Event(), queue.Queue[list[float]]()
    thread = threading.Thread(target=_consumer, args=(url, samples, ready, out, options))
    thread.start()
    ready.wait(30)
    producer = SQLiteTransport(url)
    for i, gap in enumerate(_gaps(samples)):
        time.sleep(gap)
        producer.publish("latency", message(i, sent=time.time()))
    latencies: list[float] = out.get(timeout=60)
    thread.join(30)
    producer.close()
    return latencies


def _setter(url: str, samples: int, ready: Any, options: dict[str, Any]) -> None:
    store = SQLiteStore(url, options=options)
    store.get("warm")
    ready.wait(30)
    time.sleep(0.5)
    for i, gap in enumerate(_gaps(samples)):
        time.sleep(gap)
        store.set(f"result-{i}", repr(time.time()).encode(), None)
    store.close()


def bench_result_wake_other_process(url: str, samples: int, options: dict[str, Any]) -> list[float]:
    """A result set in another process -> ``wait_for_change`` returns here."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_setter, args=(url, samples, ready, options))
    child.start()
    store = SQLiteStore(url, options=options)
    store.get("warm")
    ready.set()
    latencies: list[float] = []
    for i in range(samples):
        value = store.wait_for_change(f"result-{i}", None, 30.0)
        if value is None:
            raise RuntimeError(f"result-{i} never came")
        latencies.append(time.time() - float(value))
    child.join(30)
    store.close()
    return latencies


def show_latency(label: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p90 = ms[int(len(ms) * 0.9)]
    print(
        f"{label:<31} p50 {statistics.median(ms):6.2f} ms  p90 {p90:6.2f} ms  "
        f"max {ms[-1]:6.1f} ms  ({len(ms)} samples)"
    )


def bench_idle_cpu(url: str, options: dict[str, Any], seconds: float = 3.0) -> None:
    transport = SQLiteTransport(url, options=options)
    start_cpu, start = time.process_time(), time.perf_counter()
    transport.fetch(["idle"], 1, seconds)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    print(f"idle fetch CPU                  {100 * cpu / wall:.2f} % of one core over {wall:.1f} s")
    transport.close()


# -- end to end: a worker process and a client -------------------------------------------------
E2E_APP = """
import json, os
from celeriac import Celeriac

app = Celeriac("bench_e2e", broker=os.environ["BENCH_E2E_URL"], backend=os.environ["BENCH_E2E_URL"])
app.conf.broker_transport_options = json.loads(os.environ["BENCH_E2E_OPTIONS"])
app.conf.result_backend_transport_options = json.loads(os.environ["BENCH_E2E_OPTIONS"])


@app.task(name="bench_e2e.add")
def add(x, y):
    return x + y
"""


def bench_roundtrip(tmp: Path, count: int, options: dict[str, Any]) -> list[float]:
    """``count`` sequential ``add.delay(1, 1).get()`` against a worker process (seconds each)."""
    (tmp / "bench_e2e_app.py").write_text(E2E_APP)
    env = {
        **os.environ,
        "BENCH_E2E_URL": f"sqlite:///{tmp / 'e2e.db'}",
        "BENCH_E2E_OPTIONS": json.dumps(options),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp), os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, "-m", "celeriac.cli", "-A", "bench_e2e_app", "worker"]
    worker = subprocess.Popen(
        [*argv, "-P", "threads", "-c", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ.update({k: env[k] for k in ("BENCH_E2E_URL", "BENCH_E2E_OPTIONS")})
    sys.path.insert(0, str(tmp))
    try:
        import bench_e2e_app

        add = bench_e2e_app.add
        add.delay(0, 0).get(timeout=60)  # the worker is up
        for _ in range(50):
            add.delay(1, 1).get(timeout=10)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            add.delay(1, 1).get(timeout=10)
            times.append(time.perf_counter() - start)
        return times
    finally:
        sys.path.remove(str(tmp))
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)


def show_roundtrip(times: list[float]) -> None:
    ms = sorted(x * 1000 for x in times)
    p90, p99 = (ms[min(len(ms) - 1, int(len(ms) * q))] for q in (0.9, 0.99))
    print(
        f"delay().get() round trip        p50 {statistics.median(ms):6.2f} ms  "
        f"p90 {p90:6.2f} ms  p99 {p99:6.2f} ms  ({len(ms)} sequential)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--roundtrips", type=int, default=1000)
    parser.add_argument(
        "--polling-interval", type=float, default=None, help="the transport option (s)"
    )
    parser.add_argument("--no-wake", action="store_true", help="polling only (no sockets)")
    parser.add_argument("--only", default="micro,wake,e2e", help="sections (comma-separated)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    only = set(args.only.split(","))
    options: dict[str, Any] = (
        {} if args.polling_interval is None else {"polling_interval": args.polling_interval}
    )
    if args.no_wake:
        options["wake"] = False
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        url = f"sqlite:///{tmp / 'bench.db'}"
        print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}")
        probe = SQLiteTransport(url, options=options)
        wake = "off" if args.no_wake else "on"
        print(f"polling_interval {probe.poll_max * 1000:.0f} ms, socket wake-ups {wake}")
        probe.close()
        if "micro" in only:
            bench_publish(url, args.messages)
            bench_consume(url, args.messages)
            bench_idle_cpu(url, options)
        if "wake" in only:
            same = bench_latency_same_process(url, args.samples, options)
            show_latency("wake latency, same process", same)
            other = bench_latency_other_process(url, args.samples, options)
            show_latency("wake latency, other process", other)
            results = bench_result_wake_other_process(url, args.samples, options)
            show_latency("result set -> wait, other proc.", results)
        if "e2e" in only and args.roundtrips > 0:
            show_roundtrip(bench_roundtrip(tmp, args.roundtrips, options))


if __name__ == "__main__":
    main()
