"""The jobs of one round, in the order they run, and which metric each result feeds.

Within a round every comparison runs Celeriac then Celery (then the peers) back to back, so
rounds give A B A B ... Each job is a subprocess; ``fields`` maps a key of its JSON result to a
metric id (``bench.report`` knows the metric ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How much work each scenario does (``--quick`` makes it small)."""

    rounds: int = 3
    enqueue: int = 5000
    drain: int = 20000
    sqlite_drain: int = 10000
    roundtrips: int = 1000
    sqlite_roundtrips: int = 1000
    raw: int = 20000
    import_repeats: int = 5
    concurrency: int = 2
    chord: int = 10000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rounds=1,
            enqueue=1000,
            drain=2000,
            sqlite_drain=1000,
            roundtrips=200,
            sqlite_roundtrips=200,
            raw=5000,
            import_repeats=2,
            chord=1000,
        )


@dataclass(frozen=True)
class Job:
    """One subprocess: a scenario of one framework on one broker, or raw/import timing."""

    label: str
    kind: str  # "scenario" | "raw" | "import"
    column: str  # "celeriac", "celery", a peer ("huey", "rq", ...), "sqlite", "raw"
    framework: str = ""
    scenario: str = ""
    broker: str = "redis"  # "redis" | "sqlite"
    params: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


#: the pool of each framework for round trips and idle RSS (Celeriac drains with several)
POOLS = {
    "celeriac": "threads",
    "celery": "prefork",
    "huey": "thread",
    "dramatiq": "threads",  # --processes 1 --threads 2
    "rq": "fork",  # rq worker-pool -n 2, a work horse forked per job
    "arq": "asyncio",  # max_jobs = 2
    "taskiq": "asyncio",  # --workers 1 --max-async-tasks 2
}
#: at most this many tasks per drain, for a framework too slow to drain ``Sizes.drain`` in a
#: reasonable time (RQ forks a work horse per job: about 80 tasks/s here, 20,000 would take
#: 4 minutes a drain); its rate is still first to last execution over the tasks it ran
DRAIN_CAP = {"rq": 2000}
#: Celeriac's pools for drains, by default (prefork is added when it exists; ``--pools``)
CELERIAC_POOLS = ["threads"]


def celeriac_pools(variant: str, available: list[str]) -> list[str]:
    """Celeriac's pools for a drain: all of ``available`` with results stored (the headline),
    and without asyncio for ``ignore_result`` (to keep the run near 10 minutes)."""
    if variant == "results":
        return available
    return [p for p in available if p != "asyncio"] or available[:1]


def drain_jobs(frameworks: list[str], sizes: Sizes, pools: list[str]) -> list[Job]:
    """``pools``: Celeriac's pools to drain with (the others use ``POOLS``)."""
    jobs = []
    c = sizes.concurrency
    for variant, task in (("results", "add"), ("noresults", "add_nr")):
        for fw in frameworks:  # Celeriac's metric names its pool; the others' do not
            fw_pools = celeriac_pools(variant, pools) if fw == "celeriac" else [POOLS[fw]]
            count = min(sizes.drain, DRAIN_CAP.get(fw, sizes.drain))
            capped = f" ({count:,} tasks)" if count < sizes.drain else ""
            for pool in fw_pools:
                metric = f"drain.{variant}"
                if fw == "celeriac":
                    metric += f".{pool}"
                jobs.append(
                    Job(
                        label=f"drain {variant} {fw} -P {pool} -c {c}{capped}",
                        kind="scenario",
                        column=fw,
                        framework=fw,
                        scenario="drain",
                        params={"count": count, "task": task, "pool": pool,
                                "concurrency": c},
                        fields={"rate": metric},
                    )
                )  # fmt: skip
    return jobs


def round_jobs(frameworks: list[str], sizes: Sizes, pools: list[str]) -> list[Job]:
    """All the jobs of one round (``frameworks``: celeriac, celery, then installed peers).

    The raw ceiling runs after the enqueue jobs: it pushes payloads of the size they measured.
    """
    c = sizes.concurrency
    jobs = []
    jobs.append(  # one job: the samples alternate between the frameworks
        Job(label=f"import {', '.join(frameworks)}", kind="import", column="",
            params={"frameworks": frameworks})
    )  # fmt: skip
    for fw in frameworks:
        jobs.append(
            Job(
                label=f"enqueue {fw}",
                kind="scenario",
                column=fw,
                framework=fw,
                scenario="enqueue",
                params={"count": sizes.enqueue},
                fields={"single_rate": "enqueue.single", "bulk_rate": "enqueue.bulk",
                        "single_vs_raw": "enqueue.single_vs_raw",
                        "message_bytes": "message.bytes"},
            )
        )  # fmt: skip
    jobs += [
        Job(
            label="raw redis-py ceiling",
            kind="raw",
            column="raw",
            params={"count": sizes.raw, "rtt_count": sizes.roundtrips},
            fields={
                k: f"raw.{k}"
                for k in ("ping_p50", "ping_p99", "lpush_single", "lpush_pipelined",
                          "brpop_single", "rpop_batched", "reliable_2proc", "echo_p50",
                          "echo_p99")
            },
        ),
    ]  # fmt: skip
    jobs += drain_jobs(frameworks, sizes, pools)
    for fw in frameworks:
        jobs.append(
            Job(
                label=f"round trip {fw} -P {POOLS[fw]} -c {c}",
                kind="scenario",
                column=fw,
                framework=fw,
                scenario="roundtrip",
                params={"count": sizes.roundtrips, "pool": POOLS[fw], "concurrency": c},
                fields={
                    "p50": "rtt.p50",
                    "p99": "rtt.p99",
                    "raw_ping_p50": "rtt.raw_ping",
                    "send_leg_p50": "rtt.send_leg",
                    "result_leg_p50": "rtt.result_leg",
                },
            )
        )
    for fw in frameworks:
        jobs.append(
            Job(
                label=f"idle RSS {fw} -P {POOLS[fw]} -c {c}",
                kind="scenario",
                column=fw,
                framework=fw,
                scenario="idle",
                params={"pool": POOLS[fw], "concurrency": c},
                fields={"rss_mb": "idle.rss"},
            )
        )
    jobs += chord_jobs(frameworks, sizes)
    jobs += sqlite_jobs(sizes)
    return jobs


def chord_jobs(frameworks: list[str], sizes: Sizes) -> list[Job]:
    """A chord of ``sizes.chord`` no-op tasks with a worker ``-c 2`` in the round trip's pool,
    for each framework that has a chord (Celery and Celeriac). A generous timeout: a chord
    that does not finish is reported as timed out, the run goes on."""
    c, n = sizes.concurrency, sizes.chord
    return [
        Job(
            label=f"chord of {n} {fw} -P {POOLS[fw]} -c {c}",
            kind="scenario",
            column=fw,
            framework=fw,
            scenario="chord",
            params={"count": n, "pool": POOLS[fw], "concurrency": c, "timeout": 60 + n / 20},
            fields={"seconds": "chord.total", "send_seconds": "chord.send"},
        )
        for fw in frameworks
        if fw in ("celeriac", "celery")
    ]


def sqlite_jobs(sizes: Sizes) -> list[Job]:
    c = sizes.concurrency
    return [
        Job(
            label=f"SQLite drain results celeriac -P threads -c {c}",
            kind="scenario",
            column="sqlite",
            framework="celeriac",
            scenario="drain",
            broker="sqlite",
            params={"count": sizes.sqlite_drain, "task": "add", "pool": "threads",
                    "concurrency": c},
            fields={"rate": "sqlite.drain"},
        ),
        Job(
            label=f"SQLite round trip celeriac -P threads -c {c}",
            kind="scenario",
            column="sqlite",
            framework="celeriac",
            scenario="roundtrip",
            broker="sqlite",
            params={"count": sizes.sqlite_roundtrips, "pool": "threads", "concurrency": c},
            fields={"p50": "sqlite.p50", "p99": "sqlite.p99", "raw_ping_p50": "sqlite.raw_ping",
                    "send_leg_p50": "sqlite.send_leg", "result_leg_p50": "sqlite.result_leg"},
        ),
    ]  # fmt: skip
