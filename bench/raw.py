"""The raw ceiling of this machine: plain redis-py, no framework, the same payload size.

``python -m bench.raw JSON`` (``{"count": N, "payload_bytes": B, "rtt_count": M}``) measures,
from one client on the private Redis (``BENCH_REDIS_URL``):

- ``ping_p50``/``ping_p99``: one synchronous round trip (PING), ms;
- ``lpush_single``: LPUSH one at a time, messages/s; ``lpush_pipelined``: in pipelines of 1,000;
- ``brpop_single``: BRPOP one at a time; ``rpop_batched``: RPOP with a count of 1,000;
- ``reliable_2proc``: two consumer processes, each BLMOVE to its own processing list and then
  LREM it there (the ack): the minimal reliable consumer, messages/s from first to last take;
- ``echo_p50``/``echo_p99``: LPUSH a request, an echo process BRPOPs it and LPUSHes a reply,
  the client BRPOPs the reply: the floor of a task round trip between two processes, ms.

``python -m bench.raw consumer QUEUE`` and ``python -m bench.raw echo`` are the helper processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.stats import percentile

QUEUE = "raw:queue"
PIPELINE = 1000


def _client() -> Any:
    import redis

    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def ping(client: Any, count: int) -> tuple[float, float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - start) * 1000)
    return percentile(times, 50), percentile(times, 99)


def push_pop(client: Any, count: int, payload: bytes) -> dict[str, float]:
    client.delete(QUEUE)
    start = time.perf_counter()
    for _ in range(count):
        client.lpush(QUEUE, payload)
    single = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(count):
        client.brpop([QUEUE], 1)
    brpop = time.perf_counter() - start
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.lpush(QUEUE, payload)
        if (i + 1) % PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    pipelined = time.perf_counter() - start
    start = time.perf_counter()
    popped = 0
    while popped < count:
        popped += len(client.rpop(QUEUE, PIPELINE) or [])
    batched = time.perf_counter() - start
    return {
        "lpush_single": _rate(count, single),
        "lpush_pipelined": _rate(count, pipelined),
        "brpop_single": _rate(count, brpop),
        "rpop_batched": _rate(count, batched),
    }


def _helper(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.raw", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def reliable(client: Any, count: int, payload: bytes, consumers: int = 2) -> float:
    client.delete(QUEUE)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.lpush(QUEUE, payload)
        if (i + 1) % PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    procs = [_helper("consumer", QUEUE) for _ in range(consumers)]
    reports = [json.loads(proc.communicate(timeout=120)[0]) for proc in procs]
    taken = sum(r["count"] for r in reports)
    if taken != count:
        raise RuntimeError(f"reliable consumers took {taken} of {count}")
    first = min(r["first"] for r in reports if r["count"])
    last = max(r["last"] for r in reports if r["count"])
    return _rate(count, last - first)


def consumer(queue: str) -> None:
    """Helper: BLMOVE to a private processing list, ack with LREM; stop when idle 0.5 s."""
    client = _client()
    processing = f"raw:processing:{os.getpid()}"
    count, first, last = 0, 0.0, 0.0
    while True:
        message = client.blmove(queue, processing, 0.5, "RIGHT", "LEFT")
        if message is None:
            break
        now = time.time()
        if not count:
            first = now
        count, last = count + 1, now
        client.lrem(processing, 1, message)
    print(json.dumps({"count": count, "first": first, "last": last}), flush=True)


def echo_roundtrip(client: Any, count: int, payload: bytes) -> tuple[float, float]:
    client.delete("raw:req", "raw:rep")
    proc = _helper("echo")
    try:
        client.lpush("raw:req", payload)
        client.brpop(["raw:rep"], 10)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            client.lpush("raw:req", payload)
            client.brpop(["raw:rep"], 10)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        client.lpush("raw:req", b"stop")
        proc.wait(10)
    return percentile(times, 50), percentile(times, 99)


def echo() -> None:
    """Helper: BRPOP a request, LPUSH it back as the reply, until ``stop``."""
    client = _client()
    while True:
        item = client.brpop(["raw:req"], 30)
        if item is None or item[1] == b"stop":
            return
        client.lpush("raw:rep", item[1])


def measure(count: int, payload_bytes: int = 945, rtt_count: int = 1000) -> dict[str, Any]:
    client = _client()
    client.flushdb()
    payload = b"x" * payload_bytes
    ping(client, 100)
    result: dict[str, Any] = {"payload_bytes": payload_bytes}
    result["ping_p50"], result["ping_p99"] = ping(client, rtt_count)
    result.update(push_pop(client, count, payload))
    result["reliable_2proc"] = reliable(client, count, payload)
    result["echo_p50"], result["echo_p99"] = echo_roundtrip(client, rtt_count, payload)
    client.flushdb()
    return result


def main(argv: list[str]) -> int:
    if argv and argv[0] == "consumer":
        consumer(argv[1])
    elif argv and argv[0] == "echo":
        echo()
    else:
        params = json.loads(argv[0]) if argv else {}
        print("BENCH-RESULT " + json.dumps(measure(**params)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
