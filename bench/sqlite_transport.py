"""Micro-benchmark of the SQLite transport (not a test).

    .venv/bin/python bench/sqlite_transport.py [--messages 20000] [--samples 100]

Prints: publish rate (one transaction per message, and batches), fetch+ack rate with batches,
publish -> fetch latency when the consumer is idle (same process: in-process wake; other process:
bounded by the polling backoff), and the CPU an idle fetch burns.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def show_latency(label: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p90 = ms[int(len(ms) * 0.9)]
    print(
        f"{label:<31} p50 {statistics.median(ms):6.1f} ms  p90 {p90:6.1f} ms  "
        f"max {ms[-1]:6.1f} ms  ({len(ms)} samples)"
    )


def bench_idle_cpu(url: str, options: dict[str, Any], seconds: float = 3.0) -> None:
    transport = SQLiteTransport(url, options=options)
    start_cpu, start = time.process_time(), time.perf_counter()
    transport.fetch(["idle"], 1, seconds)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    print(f"idle fetch CPU                  {100 * cpu / wall:.2f} % of one core over {wall:.1f} s")
    transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument(
        "--polling-interval", type=float, default=None, help="the transport option (s)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}")
        bench_publish(url, args.messages)
        bench_consume(url, args.messages)
        options = (
            {} if args.polling_interval is None else {"polling_interval": args.polling_interval}
        )
        probe = SQLiteTransport(url, options=options)
        print(f"polling_interval                {probe.poll_max * 1000:.0f} ms")
        probe.close()
        bench_idle_cpu(url, options)
        same = bench_latency_same_process(url, args.samples, options)
        show_latency("wake latency, same process", same)
        other = bench_latency_other_process(url, args.samples, options)
        show_latency("wake latency, other process", other)


if __name__ == "__main__":
    main()
