"""Micro-benchmark of the Redis transport (not a test).

    .venv/bin/python bench/redis_transport.py [--messages 20000] [--url redis://...] [--rounds 3]

Without ``--url`` it starts its own ``redis-server`` (no persistence) on a free port, so other
users of the machine's Redis neither disturb nor see it; with ``--url`` it works under a fresh
``global_keyprefix`` and deletes only its own keys.

Prints, for the sync driver (``RedisTransport``) and the async one (``AsyncRedisTransport``):
publish_many rate, fetch+ack rate with fetch batches of 1, 10 and 100 (the worker fetches up to
its prefetch and acks everything that finished in one loop turn with one ``ack`` call), and
the time to renew 1000 held leases. Each figure is the best of ``--rounds``.
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


# -- sync --------------------------------------------------------------------------------------
def bench_sync(url: str, options: dict[str, Any], count: int, rounds: int) -> None:
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
        for batch in BATCHES:
            n = count if batch > 1 else count // 4

            def consume(batch: int = batch, n: int = n) -> float:
                transport.publish_many(items(n))
                start = time.perf_counter()
                done = 0
                while done < n:
                    got = transport.fetch(["bench"], batch, 1.0)
                    transport.ack(got)
                    done += len(got)
                return time.perf_counter() - start

            print(f"sync  fetch+ack, batches of {batch:<6} {rate(n, best(rounds, consume))}")
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
async def bench_async(url: str, options: dict[str, Any], count: int, rounds: int) -> None:
    transport = AsyncRedisTransport(url, options=options)
    try:
        for batch in BATCHES:
            n = count if batch > 1 else count // 4
            times = []
            for _ in range(rounds):
                await transport.publish_many(items(n))
                start = time.perf_counter()
                done = 0
                while done < n:
                    got = await transport.fetch(["bench"], batch, 1.0)
                    await transport.ack(got)
                    done += len(got)
                times.append(time.perf_counter() - start)
            print(f"async fetch+ack, batches of {batch:<6} {rate(n, min(times))}")
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


def run(url: str, count: int, rounds: int) -> None:
    prefix = f"celeriac-bench-{uuid.uuid4().hex[:8]}:"
    options = {"global_keyprefix": prefix}
    try:
        bench_sync(url, options, count, rounds)
        asyncio.run(bench_async(url, options, count, rounds))
    finally:
        import redis

        with redis.Redis.from_url(url) as client:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="use this Redis instead of a private redis-server")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.messages, args.rounds)
        return
    with own_server() as url:
        print(f"private redis-server at {url}")
        run(url, args.messages, args.rounds)


if __name__ == "__main__":
    main()
