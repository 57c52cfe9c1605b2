"""The table on stdout and the JSON file: medians, min-max, ratios to Celery, targets.

``python -m bench.report bench/results/<file>.json [--markdown]`` prints a saved run again (as
Markdown for ``docs/benchmarks.md``).

``samples[metric][column]`` holds the values of every round. A ratio is Celeriac's median over
Celery's, both from this run; the arrow after the unit says which way is better.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import number, summary

Samples = dict[str, dict[str, list[float]]]


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    unit: str
    higher_is_better: bool = True
    #: the metric Celery (and the peers) report for this row, when it is not ``metric``
    versus: str = ""
    #: context for the row above it (no ratio: lower is not "better" there)
    context: bool = False

    @property
    def theirs(self) -> str:
        return self.versus or self.metric


COMPARED = [
    Row("enqueue.single", "enqueue: delay() loop, one client", "tasks/s"),
    Row(
        "enqueue.single_vs_raw",
        "  its rate / raw redis-py LPUSH rate, side by side",
        "x",
        context=True,
    ),
    Row("enqueue.bulk", "enqueue: bulk path, one client", "tasks/s"),
    Row(
        "drain.results.threads",
        "drain, results stored (Celeriac threads)",
        "tasks/s",
        versus="drain.results",
    ),
    Row(
        "drain.results.asyncio",
        "drain, results stored (Celeriac asyncio)",
        "tasks/s",
        versus="drain.results",
    ),
    Row(
        "drain.results.prefork",
        "drain, results stored (Celeriac prefork)",
        "tasks/s",
        versus="drain.results",
    ),
    Row(
        "drain.noresults.threads",
        "drain, ignore_result (Celeriac threads)",
        "tasks/s",
        versus="drain.noresults",
    ),
    Row(
        "drain.noresults.prefork",
        "drain, ignore_result (Celeriac prefork)",
        "tasks/s",
        versus="drain.noresults",
    ),
    Row("rtt.p50", "delay().get() round trip p50", "ms", False),
    Row("rtt.p99", "delay().get() round trip p99", "ms", False),
    Row("rtt.send_leg", "  of which delay() -> task runs, p50", "ms", False),
    Row("rtt.result_leg", "  of which task runs -> get() returns, p50", "ms", False),
    Row("rtt.raw_ping", "  raw Redis PING p50 during it", "ms", False, context=True),
    Row("chord.total", "chord of {chord:,} no-op tasks: call -> body's result", "s", False),
    Row("chord.send", "  of which the client sends it", "s", False),
    Row("idle.rss", "idle worker RSS (with children)", "MiB", False),
    Row("import.pkg", "import package + app class", "ms", False),
    Row("import.app", "import task module (app + 2 tasks)", "ms", False),
    Row("message.bytes", "message size on Redis", "bytes", False, context=True),
]

RAW = [
    Row("raw.ping_p50", "PING round trip p50", "ms", False),
    Row("raw.ping_p99", "PING round trip p99", "ms", False),
    Row("raw.lpush_single", "LPUSH one at a time", "msg/s"),
    Row("raw.lpush_pipelined", "LPUSH pipelined (1,000)", "msg/s"),
    Row("raw.brpop_single", "BRPOP one at a time", "msg/s"),
    Row("raw.rpop_batched", "RPOP count=1,000", "msg/s"),
    Row("raw.reliable_2proc", "reliable consumer, 2 processes (BLMOVE+LREM)", "msg/s"),
    Row("raw.echo_p50", "echo round trip via 2nd process p50", "ms", False),
    Row("raw.echo_p99", "echo round trip via 2nd process p99", "ms", False),
]

SQLITE = [
    Row("sqlite.drain", "drain, results stored (threads) vs Celery/Redis", "tasks/s"),
    Row("sqlite.p50", "delay().get() p50 vs Celery/Redis", "ms", False),
    Row("sqlite.p99", "delay().get() p99 vs Celery/Redis", "ms", False),
    Row("sqlite.send_leg", "  of which delay() -> task runs, p50", "ms", False),
    Row("sqlite.result_leg", "  of which task runs -> get() returns, p50", "ms", False),
]

#: the Celery-on-Redis metric each SQLite row is compared with
SQLITE_VERSUS = {
    "sqlite.drain": "drain.results",
    "sqlite.p50": "rtt.p50",
    "sqlite.p99": "rtt.p99",
    "sqlite.send_leg": "rtt.send_leg",
    "sqlite.result_leg": "rtt.result_leg",
}


#: how a peer's column is headed
PEER_NAMES = {"huey": "Huey", "dramatiq": "Dramatiq", "rq": "RQ", "arq": "arq", "taskiq": "taskiq"}


def med(samples: Samples, metric: str, column: str) -> float:
    return summary(samples.get(metric, {}).get(column, []))["median"]


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    s = summary(values)
    if s["n"] == 1:
        return number(s["median"])
    return f"{number(s['median'])} ({number(s['min'])}-{number(s['max'])})"


def ratio(ours: float, theirs: float) -> str:
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def _arrow(row: Row) -> str:
    if row.context:
        return row.unit
    return f"{row.unit} {'↑' if row.higher_is_better else '↓'}"


Table = tuple[list[str], list[list[str]]]


def format_table(table: Table, markdown: bool = False) -> list[str]:
    """Aligned plain text, or a Markdown table."""
    headers, rows = table
    if not rows:
        return []
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def compared_table(
    samples: Samples, peers: list[str], sizes: dict[str, Any] | None = None
) -> Table:
    headers = ["metric", "unit", "Celeriac", "Celery", "Celeriac/Celery"]
    headers += [PEER_NAMES.get(p, p) for p in peers]
    rows = []
    for row in COMPARED:
        data = samples.get(row.metric, {})
        if not data:
            continue
        celery = samples.get(row.theirs, {}).get("celery", [])
        ours = data.get("celeriac", [])
        label = row.label.format(chord=int((sizes or {}).get("chord", 10000)))
        line = [label, _arrow(row), cell(ours), cell(celery)]
        compared = ratio(summary(ours)["median"], summary(celery)["median"])
        line.append("" if row.context else compared)
        line += [cell(samples.get(row.theirs, {}).get(p, [])) for p in peers]
        rows.append(line)
    return headers, rows


def raw_table(samples: Samples) -> Table:
    rows = [
        [row.label, _arrow(row), cell(samples.get(row.metric, {}).get("raw", []))]
        for row in RAW
        if samples.get(row.metric)
    ]
    return ["raw redis-py (no framework)", "unit", "value"], rows


def sqlite_table(samples: Samples) -> Table:
    rows = []
    for row in SQLITE:
        ours = samples.get(row.metric, {}).get("sqlite", [])
        if not ours:
            continue
        celery = samples.get(SQLITE_VERSUS[row.metric], {}).get("celery", [])
        ratio_text = ratio(summary(ours)["median"], summary(celery)["median"])
        rows.append([row.label, _arrow(row), cell(ours), cell(celery), ratio_text])
    return ["Celeriac on SQLite", "unit", "SQLite", "Celery/Redis", "ratio"], rows


def targets(samples: Samples) -> list[tuple[str, str, bool | None]]:
    """Issue 8's targets: (what, measured, met?) from this run's medians."""

    def m(metric: str, column: str = "celeriac") -> float:
        return med(samples, metric, column)

    def best(*metrics: str) -> float:
        values = [m(x) for x in metrics if not math.isnan(m(x))]
        return max(values) if values else math.nan

    drain = best("drain.results.threads", "drain.results.asyncio", "drain.results.prefork")
    raw_rtt = m("rtt.raw_ping")
    checks = [
        ("enqueue delay() >= 0.8x raw single LPUSH", m("enqueue.single"),
         0.8 * m("raw.lpush_single", "raw"), True),
        ("enqueue delay() >= 0.8x raw single LPUSH, side by side in one job",
         m("enqueue.single_vs_raw"), 0.8, True),
        ("enqueue bulk >= 40,000/s", m("enqueue.bulk"), 40000, True),
        ("drain with results (-c 2) >= 6,000/s", drain, 6000, True),
        ("round trip p50 <= 2.5x raw PING p50 (same run)", m("rtt.p50"), 2.5 * raw_rtt, False),
        # the issue's own figure for that limit (it took a raw round trip of ~0.5 ms; the
        # PING here is ~0.1 ms, below the echo through a second process, the floor of any
        # task round trip): both are printed, neither replaces the other
        ("round trip p50 <= 1.2 ms (the issue's figure for that limit)", m("rtt.p50"), 1.2,
         False),
        ("round trip p99 <= 3 ms", m("rtt.p99"), 3.0, False),
        ("idle RSS below Celery's", m("idle.rss"), m("idle.rss", "celery"), False),
        ("import celeriac < 100 ms", m("import.pkg"), 100, False),
        ("SQLite drain >= Celery on Redis", m("sqlite.drain", "sqlite"),
         m("drain.results", "celery"), True),
        ("SQLite p50 <= 5 ms", m("sqlite.p50", "sqlite"), 5.0, False),
    ]  # fmt: skip
    out: list[tuple[str, str, bool | None]] = []
    for what, value, limit, higher in checks:
        if math.isnan(value) or math.isnan(limit):
            out.append((what, "not measured", None))
            continue
        met = value >= limit if higher else value <= limit
        out.append((what, f"{number(value)} (limit {number(limit)})", met))
    return out


def render(results: dict[str, Any], markdown: bool = False) -> str:
    samples: Samples = results["samples"]
    peers = results.get("peers", [])
    lines = format_table(compared_table(samples, peers, results.get("sizes")), markdown)
    for table in (raw_table(samples), sqlite_table(samples)):
        block = format_table(table, markdown)
        if block:
            lines += ["", *block]
    lines += ["", "targets (issue 8), Celeriac medians:", ""]
    for what, measured, met in targets(samples):
        label = {True: "met", False: "MISSED", None: "-"}[met]
        if markdown:
            lines.append(f"- [{label}] {what}: {measured}")
        else:
            lines.append(f"  [{label:^6}] {what}: {measured}")
    bullet = "- " if markdown else ""
    if results.get("notes") or results.get("errors"):
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"{bullet}note: {note}")
    for error in results.get("errors", []):
        lines.append(f"{bullet}error: {error}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {**results, "summary": _summaries(results["samples"])}
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _summaries(samples: Samples) -> dict[str, dict[str, dict[str, float]]]:
    return {
        metric: {column: summary(values) for column, values in columns.items()}
        for metric, columns in samples.items()
    }


def main(argv: list[str]) -> int:
    """``python -m bench.report RESULTS.json [--markdown]``: print a saved run's table again."""
    data = json.loads(Path(argv[0]).read_text())
    print(render(data, markdown="--markdown" in argv))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
