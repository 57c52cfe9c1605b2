"""``python -m bench`` (or ``bench/run``): Celeriac beside Celery 5, and SQLite figures.

Starts a private ``redis-server`` (free port, no persistence), then runs ``--rounds`` rounds of
every job in ``bench.plan`` (each a subprocess; Celeriac and Celery alternate), prints the table
(``bench.report``) and writes all samples to ``bench/results/<timestamp>.json``.

Options: ``--quick`` (small counts, one round: a smoke run), ``--rounds N``, ``--peers`` (also
Huey, Dramatiq, RQ, arq and taskiq; a "not installed" note for any that is not), ``--only WORDS``
(jobs whose label contains one of the comma-separated words, e.g. ``--only raw,enqueue``),
``--no-sqlite``, ``--drain N`` (tasks per drain on Redis), ``--pools threads,asyncio,prefork``
(Celeriac's pools for drains; ``asyncio`` is drained with results stored only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import frameworks, imports, machine, report
from bench.plan import CELERIAC_POOLS, Job, Sizes, round_jobs
from bench.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("huey", "dramatiq", "rq", "arq", "taskiq")
JOB_TIMEOUT = 900


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one round")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--peers", action="store_true", help="also Huey, Dramatiq, RQ, arq, taskiq")
    parser.add_argument("--only", help="comma-separated words: run the jobs whose label has one")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite jobs")
    parser.add_argument("--drain", type=int, metavar="N", help="tasks per drain (default 20,000)")
    parser.add_argument("--pools", help="Celeriac's pools for drains (default: threads[,prefork])")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    return parser.parse_args(argv)


def run_subprocess(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a ``bench`` subprocess and return the JSON of its ``BENCH-RESULT`` line."""
    out = subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            result: dict[str, Any] = json.loads(line[len("BENCH-RESULT ") :])
            return result
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"exit {out.returncode}:\n{tail}")


class Runner:
    """Runs jobs against one Redis server and collects their samples."""

    def __init__(self, server: RedisServer, sizes: Sizes) -> None:
        self.server = server
        self.sizes = sizes
        self.samples: report.Samples = {}
        self.details: list[dict[str, Any]] = []
        self.errors: list[str] = []
        #: what a job reported without failing (e.g. a chord that timed out)
        self.notes: list[str] = []

    def env(self, broker: str, sqlite_dir: str | None = None) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_REDIS_URL": self.server.url}
        url = self.server.url if broker == "redis" else f"sqlite:///{sqlite_dir}/bench.sqlite3"
        env.update(BENCH_BROKER_URL=url, BENCH_BACKEND_URL=url)
        return env

    def add(self, metric: str, column: str, value: float) -> None:
        self.samples.setdefault(metric, {}).setdefault(column, []).append(value)

    def run(self, job: Job, round_no: int) -> None:
        start = time.monotonic()
        try:
            result = self._execute(job)
        except Exception as exc:
            message = f"round {round_no}, {job.label}: {exc}"
            self.errors.append(message)
            print(f"  {job.label}: FAILED\n    " + str(exc).replace("\n", "\n    "), flush=True)
            return
        if result.get("note"):
            self.notes.append(f"round {round_no}, {job.label}: {result['note']}")
        for key, metric in job.fields.items():
            if result.get(key) is not None:
                self.add(metric, job.column, float(result[key]))
        self.details.append(
            {"round": round_no, "job": job.label, "load": machine.load(), "result": result}
        )
        seconds = time.monotonic() - start
        print(f"  {job.label}: {_brief(result)}  [{seconds:.1f} s]", flush=True)

    def _execute(self, job: Job) -> dict[str, Any]:
        if job.kind == "import":
            return self._imports(job)
        if job.kind == "raw":
            params = dict(job.params)
            sizes = self.samples.get("message.bytes", {}).get("celeriac")
            if sizes:
                params["payload_bytes"] = int(sizes[-1])
            argv = [sys.executable, "-m", "bench.raw", json.dumps(params)]
            return run_subprocess(argv, self.env("redis"))
        argv = [sys.executable, "-m", "bench.scenario", job.framework, job.scenario]
        argv.append(json.dumps(job.params))
        if job.broker == "sqlite":
            with tempfile.TemporaryDirectory(prefix="celeriac-bench-sqlite-") as tmp:
                return run_subprocess(argv, self.env("sqlite", tmp))
        return run_subprocess(argv, self.env("redis"))

    def _imports(self, job: Job) -> dict[str, Any]:
        """Import times, each sample a fresh interpreter, alternating between the frameworks."""
        times: dict[str, list[float]] = {}
        result: dict[str, Any] = {}
        for fw in job.params["frameworks"]:
            for statement in imports.STATEMENTS[fw].values():
                imports.warm_up(statement, self.env("redis"), str(ROOT))
        for _ in range(self.sizes.import_repeats):
            for fw in job.params["frameworks"]:
                for name, statement in imports.STATEMENTS[fw].items():
                    sample = imports.measure(statement, self.env("redis"), str(ROOT))
                    ms = float(sample["seconds"]) * 1000
                    self.add(f"import.{name}", fw, ms)
                    times.setdefault(f"{fw}_{name}_ms", []).append(ms)
                    result[f"{fw}_{name}_redis_loaded"] = sample["redis_loaded"]
        for key, values in times.items():
            result[key] = sorted(values)[len(values) // 2]
        return result


def _brief(result: dict[str, Any]) -> str:
    shown = ["TIMED OUT"] if result.get("timed_out") else []
    for key, value in result.items():
        if isinstance(value, float):
            shown.append(f"{key}={value:,.3g}" if value < 100 else f"{key}={value:,.0f}")
        elif isinstance(value, int) and not isinstance(value, bool):
            shown.append(f"{key}={value}")
    return " ".join(shown[:6])


def choose_frameworks(peers: bool) -> tuple[list[str], list[str], list[str]]:
    """(frameworks to run, peers among them, notes on peers skipped)."""
    chosen, ran, notes = ["celeriac", "celery"], [], []
    for name in ("celery",):
        if not frameworks.available(name):
            raise SystemExit(f"{name} is not installed: pip install -e '.[bench,redis]'")
    if not peers:
        return chosen, ran, notes
    for name in PEERS:
        if not frameworks.available(name):
            notes.append(f"{name}: not installed, skipped")
        elif not frameworks.implemented(name):
            notes.append(f"{name}: installed, but the benchmark has no adapter for it yet")
        else:
            chosen.append(name)
            ran.append(name)
    return chosen, ran, notes


def celeriac_has_prefork() -> bool:
    code = "import importlib.util as u, sys; "
    code += "sys.exit(u.find_spec('celeriac.worker.pools.prefork') is None)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def select(jobs: list[Job], only: str | None, sqlite: bool) -> list[Job]:
    if not sqlite:
        jobs = [j for j in jobs if j.broker != "sqlite"]
    if only:
        words = [w.strip().lower() for w in only.split(",") if w.strip()]
        jobs = [j for j in jobs if any(w in j.label.lower() for w in words)]
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.rounds:
        sizes = replace(sizes, rounds=args.rounds)
    if args.drain:
        sizes = replace(sizes, drain=args.drain)
    names, peers, notes = choose_frameworks(args.peers)
    pools = list(CELERIAC_POOLS)
    if celeriac_has_prefork():
        pools.append("prefork")
    else:
        notes.append("Celeriac has no prefork pool yet: its drains use -P threads only")
    if args.pools:
        pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    jobs = select(round_jobs(names, sizes, pools), args.only, not args.no_sqlite)
    command = " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])])
    started = time.time()
    with RedisServer() as server:
        info = machine.describe(str(ROOT), server.version())
        print(
            f"celeriac bench: {info['cpus']} CPUs ({info['cpu_model']}), "
            f"load {info['load_at_start']}, Python {info['python']}, "
            f"Redis {info['redis_server']} on port {server.port}",
            flush=True,
        )
        load = info["load_at_start"]
        if load and load[0] > 0.5 * (info["cpus"] or 1):
            print(f"warning: the machine is busy (load {load[0]}): figures will be noisy")
        runner = Runner(server, sizes)
        for round_no in range(1, sizes.rounds + 1):
            print(f"round {round_no}/{sizes.rounds}", flush=True)
            for job in jobs:
                runner.run(job, round_no)
    info["load_at_end"] = machine.load()
    results = {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "sizes": sizes.__dict__,
        "machine": info,
        "peers": peers,
        "notes": notes + runner.notes,
        "errors": runner.errors,
        "samples": runner.samples,
        "runs": runner.details,
    }
    print()
    print(report.render(results))
    path = report.write_json(results, args.output)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"\n{results['seconds']:.0f} s, load {info['load_at_start']} -> {info['load_at_end']}")
    print(f"JSON: {shown}")
    return 1 if runner.errors else 0
