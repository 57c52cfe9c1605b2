"""Micro-benchmark of the Redis transport (not a test).

    .venv/bin/python bench/redis_transport.py [--messages 20000] [--url redis://...] [--rounds 3]

Without ``--url`` it starts its own ``redis-server`` (no persistence) on a free port, so other
users of the machine's Redis neither disturb nor see it; with ``--url`` it works under a fresh
``global_keyprefix`` and deletes only its own keys.

Prints, for the sync driver (``RedisTransport``) and the async one (``AsyncRedisTransport``):
publish_many rate; fetch+ack rate with fetch batches of 1, 10 and 100 (the worker fetches up to
its prefetch and acks everything that finished in one loop turn with one ``ack`` call); the
ack alone for the same batch sizes (held messages acked in batches: client rate, and the
Redis CPU time per acked message from ``INFO commandstats`` - private server only - which the
load of other processes on the machine hardly disturbs); and the time to renew 1000 held
leases. Each figure is the best of ``--rounds``.

Before/after a change: run it against the older tree too, e.g.
``PYTHONPATH=/path/to/old/src .venv/bin/python bench/redis_transport.py``, alternating runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from celeriac.protocol.envelope import RawMessage
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport

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
BATCHES = (1, 10, 100)


def message(i: int = 0) -> RawMessage:
    return RawMessage(BODY, headers={**HEADERS, "n": i}, properties=PROPERTIES)


def items(count: int, queue: str = "bench") -> list[tuple[str, RawMessage, float | None]]:
    return [(queue, message(i), None) for i in range(count)]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:10,.0f} msg/s  ({count} in {seconds:.2f} s)"


def best(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


# -- a private server --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def own_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: pass --url")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        args = [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            wait_ready(url)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def wait_ready(url: str, timeout: float = 10.0) -> None:
    import redis

    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=0.2) as client:
                client.ping()
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# -- measurements ------------------------------------------------------------------------------
class Sample:
    """Best-of-rounds figures of one batch size."""

    def __init__(self) -> None:
        self.loop = float("inf")  # fetch+ack seconds
        self.ack = float("inf")  # ack-only seconds
        self.ack_cpu: float | None = None  # Redis microseconds per acked message

    def line(self, kind: str, batch: int, n: int) -> str:
        cpu = "" if self.ack_cpu is None else f", Redis {self.ack_cpu:5.1f} us/ack"
        return (
            f"{kind} fetch+ack, batches of {batch:<6} {rate(n, self.loop)}"
            f"\n{kind}   ack alone, batches of {batch:<4} {rate(n, self.ack)}{cpu}"
        )


def script_usec(client: Any) -> tuple[int, int]:
    """(calls, microseconds) of EVALSHA so far."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def sizes(count: int) -> list[tuple[int, int]]:
    return [(batch, count if batch > 1 else count // 4) for batch in BATCHES]


# -- sync --------------------------------------------------------------------------------------
def consume_sync(transport: RedisTransport, n: int, batch: int, sample: Sample) -> None:
    transport.publish_many(items(n))
    start = time.perf_counter()
    done = 0
    while done < n:
        got = transport.fetch(["bench"], batch, 1.0)
        transport.ack(got)
        done += len(got)
    sample.loop = min(sample.loop, time.perf_counter() - start)


def ack_sync(transport: RedisTransport, n: int, batch: int, sample: Sample, raw: Any) -> None:
    transport.publish_many(items(n))
    held: list[Any] = []
    while len(held) < n:
        held += transport.fetch(["bench"], n - len(held), 1.0)
    before = script_usec(raw) if raw is not None else (0, 0)
    start = time.perf_counter()
    for first in range(0, n, batch):
        transport.ack(held[first : first + batch])
    sample.ack = min(sample.ack, time.perf_counter() - start)
    if raw is not None:
        usec = (script_usec(raw)[1] - before[1]) / n
        sample.ack_cpu = usec if sample.ack_cpu is None else min(sample.ack_cpu, usec)


def bench_sync(url: str, options: dict[str, Any], count: int, rounds: int, raw: Any) -> None:
    transport = RedisTransport(url, options=options)
    try:

        def publish() -> float:
            start = time.perf_counter()
            for first in range(0, count, 100):
                transport.publish_many(items(min(100, count - first), "pub"))
            elapsed = time.perf_counter() - start
            transport.purge("pub")
            return elapsed

        print(f"sync  publish_many, batches of 100 {rate(count, best(rounds, publish))}")
        for batch, n in sizes(count):
            sample = Sample()
            for _ in range(rounds):
                consume_sync(transport, n, batch, sample)
                ack_sync(transport, n, batch, sample, raw)
            print(sample.line("sync ", batch, n))
        transport.publish_many(items(1000))
        held = transport.fetch(["bench"], 1000, 1.0)

        def renew() -> float:
            start = time.perf_counter()
            transport.renew(held)
            return time.perf_counter() - start

        print(f"sync  renew of {len(held)} leases          {best(rounds, renew) * 1000:8.2f} ms")
        transport.ack(held)
    finally:
        transport.close()


# -- async -------------------------------------------------------------------------------------
async def consume_async(transport: AsyncRedisTransport, n: int, batch: int, s: Sample) -> None:
    await transport.publish_many(items(n))
    start = time.perf_counter()
    done = 0
    while done < n:
        got = await transport.fetch(["bench"], batch, 1.0)
        await transport.ack(got)
        done += len(got)
    s.loop = min(s.loop, time.perf_counter() - start)


async def ack_async(
    transport: AsyncRedisTransport, n: int, batch: int, sample: Sample, raw: Any
) -> None:
    await transport.publish_many(items(n))
    held: list[Any] = []
    while len(held) < n:
        held += await transport.fetch(["bench"], n - len(held), 1.0)
    before = script_usec(raw) if raw is not None else (0, 0)
    start = time.perf_counter()
    for first in range(0, n, batch):
        await transport.ack(held[first : first + batch])
    sample.ack = min(sample.ack, time.perf_counter() - start)
    if raw is not None:
        usec = (script_usec(raw)[1] - before[1]) / n
        sample.ack_cpu = usec if sample.ack_cpu is None else min(sample.ack_cpu, usec)


async def bench_async(url: str, options: dict[str, Any], count: int, rounds: int, raw: Any) -> None:
    transport = AsyncRedisTransport(url, options=options)
    try:
        for batch, n in sizes(count):
            sample = Sample()
            for _ in range(rounds):
                await consume_async(transport, n, batch, sample)
                await ack_async(transport, n, batch, sample, raw)
            print(sample.line("async", batch, n))
        await transport.publish_many(items(1000))
        held = await transport.fetch(["bench"], 1000, 1.0)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await transport.renew(held)
            times.append(time.perf_counter() - start)
        print(f"async renew of {len(held)} leases          {min(times) * 1000:8.2f} ms")
        await transport.ack(held)
    finally:
        await transport.close()


def run(url: str, count: int, rounds: int, private: bool) -> None:
    import redis

    prefix = f"celeriac-bench-{uuid.uuid4().hex[:8]}:"
    options = {"global_keyprefix": prefix}
    with redis.Redis.from_url(url) as client:
        # commandstats are server-wide: only meaningful on a server nobody else uses
        raw = client if private else None
        try:
            bench_sync(url, options, count, rounds, raw)
            asyncio.run(bench_async(url, options, count, rounds, raw))
        finally:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="use this Redis instead of a private redis-server")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.messages, args.rounds, private=False)
        return
    with own_server() as url:
        print(f"private redis-server at {url}")
        run(url, args.messages, args.rounds, private=True)


if __name__ == "__main__":
    main()
