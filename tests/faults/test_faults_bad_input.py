"""6. Bad input pushed straight into the queue, and 7. results that cannot be serialised.

6. Ten kinds of bad message are put on the worker's queue behind its back: through the
   transport (``publish`` of hand-made ``RawMessage`` values) and below it (Redis: ``LPUSH`` of a
   raw string on the queue's list; SQLite: an ``INSERT`` of a row whose headers are not JSON).
   The worker runs with ``worker_max_message_size`` = 1 MiB. Each message must end in the
   dead-letter queue with its reason, announced by exactly one log line; the worker must not
   exit or stall: a good task sent after them runs within a second.
7. A task whose return value cannot be serialised with JSON (``object()``, a ``set``, an object
   nested in a dict) ends FAILURE with an ``EncodeError`` that says so, never a missing or
   ``None`` result.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faults_harness import SOAK, FaultEnv, Row, diagnostics, record_row, wait_for

from celeriac import states
from celeriac.exceptions import EncodeError, NotRegistered
from celeriac.protocol.envelope import RawMessage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if SOAK else 180)]

MAX_SIZE = 1024 * 1024
MB = 1000 * 1000


@dataclass
class Bad:
    """One bad message: how it is injected, the reason expected, the text its log line has."""

    case: str
    reason: str  # a substring of the dead letter's reason
    marker: str  # a substring of its one log line (its task id when it has one)
    raw: RawMessage | None = None  # published through the transport
    send: tuple[str, tuple[Any, ...]] | None = None  # sent with send_task (name, args)
    below: str | None = None  # injected below the transport (text of the raw entry)


def headers(task_id: str, task: str = "faults.add") -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "argsrepr": "()"}


def bad_messages() -> list[Bad]:
    ids = {name: str(uuid.uuid4()) for name in ("json", "shape", "length", "ctype", "pickle")}
    return [
        Bad(
            "not JSON",
            "undecodable message",
            ids["json"],
            raw=RawMessage(b"\x00not json{", headers=headers(ids["json"])),
        ),
        Bad(
            "JSON of the wrong shape",
            "undecodable message",
            ids["shape"],
            raw=RawMessage(b'{"hello": "world"}', headers=headers(ids["shape"])),
        ),
        Bad(
            "wrong body length ([args, kwargs])",
            "undecodable message",
            ids["length"],
            raw=RawMessage(b"[[1, 2], {}]", headers=headers(ids["length"])),
        ),
        Bad("unknown task", "unknown task 'faults.nope'", "", send=("faults.nope", (1, 2))),
        Bad("wrong argument count", "wrong arguments", "", send=("faults.add", (1, 2, 3))),
        Bad(
            "unsupported content type",
            "'application/x-faults' is not accepted",
            ids["ctype"],
            raw=RawMessage(
                b"[[1, 2], {}, {}]",
                content_type="application/x-faults",
                content_encoding="utf-8",
                headers=headers(ids["ctype"]),
            ),
        ),
        Bad(
            "pickle (not accepted)",
            "'application/x-python-serialize' is not accepted",
            ids["pickle"],
            raw=RawMessage(
                pickle.dumps(((1, 2), {}, {})),
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers=headers(ids["pickle"]),
            ),
        ),
        Bad(
            "50 MB payload",
            "exceeds worker_max_message_size",
            "",
            send=("faults.add", ("x" * (50 * MB), "y")),
        ),
        Bad(
            "larger than worker_max_message_size",
            "exceeds worker_max_message_size",
            "",
            send=("faults.add", ("x" * (MAX_SIZE + 1000), "y")),
        ),
        Bad("raw entry the transport cannot parse", "", "", below="this is not a message {"),
    ]


def inject_below(env: FaultEnv, text: str) -> None:
    """Put ``text`` on the queue under the transport: LPUSH (Redis) or a raw row (SQLite)."""
    if env.broker.kind == "redis":
        import redis

        with redis.Redis.from_url(env.broker.url) as client:
            client.lpush(f"{env.broker.prefix}{env.queue}", text)
        return
    path = Path(env.broker.url.removeprefix("sqlite:///"))
    env.client.transport.qsize(env.queue)  # the tables exist
    with sqlite3.connect(path, timeout=10) as conn:
        conn.execute(
            "INSERT INTO celeriac_messages (queue, priority, state, visible_at, published_at, "
            "content_type, content_encoding, headers, properties, body) "
            "VALUES (?, 0, 0, ?, ?, 'application/json', 'utf-8', ?, '{}', ?)",
            (env.queue, time.time(), time.time(), text, b"[[1, 2], {}, {}]"),
        )


def dead_letter_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ead-letter" in line and "ERROR" in line]


def test_bad_input_is_dead_lettered_and_the_worker_goes_on(
    fault_env: Callable[..., FaultEnv], broker_kind: str
) -> None:
    env = fault_env(worker_max_message_size=MAX_SIZE)
    bad = bad_messages()
    with diagnostics(env):
        worker = env.worker(concurrency=2).wait_ready()
        transport = env.client.transport
        sent_ids: dict[str, str] = {}
        for item in bad:
            if item.raw is not None:
                transport.publish(env.queue, item.raw)
            elif item.send is not None:
                name, args = item.send
                sent_ids[item.case] = env.client.send_task(name, args).id
                item.marker = sent_ids[item.case]
            else:
                assert item.below is not None
                inject_below(env, item.below)
        began = time.monotonic()
        first_good = env.client.send_task("faults.add", (1, 2))  # queued behind the bad ones
        assert first_good.get(timeout=30) == 3
        behind = time.monotonic() - began
        wait_for(
            lambda: len(dead_letter_lines(worker.stderr())) >= len(bad),
            30,
            f"{len(bad)} dead-letter log lines",
        )
        # the worker goes on: a good task sent now runs within a second
        began = time.monotonic()
        assert env.client.send_task("faults.add", (2, 3)).get(timeout=10) == 5
        next_good = time.monotonic() - began
        assert worker.alive()
        stderr = worker.stderr()
        env.stop_workers()
        letters = transport.dead_letters(limit=1000)
    lines = dead_letter_lines(stderr)
    record_row(
        Row(
            "6. bad input",
            broker_kind,
            len(bad) + 2,
            0,
            "-",
            f"the next good task ran in {next_good:.2f} s",
            f"{len(letters)} dead letters, {len(lines)} log lines; worker kept running; a good "
            f"task queued behind them ran {behind:.1f} s after it was sent",
        )
    )
    assert len(letters) == len(bad), [dl.reason for dl in letters]
    reasons = [dl.reason for dl in letters]
    for item in bad:
        if item.reason:
            assert any(item.reason in r for r in reasons), (item.case, reasons)
        if item.marker:
            mine = [line for line in stderr.splitlines() if item.marker in line]
            assert len(mine) == 1, (item.case, mine)
            assert item.reason in mine[0], (item.case, mine)
    assert len(lines) == len(bad), "\n".join(lines)
    assert all(len(line) < 2000 for line in lines), "a log line quotes the whole message"
    assert next_good < 1.0
    backend = env.client.backend
    assert backend is not None
    unknown = env.client.AsyncResult(sent_ids["unknown task"])
    assert isinstance(unknown.get(timeout=5, propagate=False), NotRegistered)
    wrong = env.client.AsyncResult(sent_ids["wrong argument count"])
    assert isinstance(wrong.get(timeout=5, propagate=False), TypeError)


@pytest.mark.parametrize("kind", ["object", "set", "nested"])
def test_unserialisable_result_is_a_failure(
    fault_env: Callable[..., FaultEnv], broker_kind: str, kind: str
) -> None:
    env = fault_env()
    with diagnostics(env):
        env.worker(concurrency=2).wait_ready()
        result = env.client.send_task("faults.unserialisable", (kind,))
        error = result.get(timeout=20, propagate=False)
        env.stop_workers()
    record_row(
        Row(
            f"7. unserialisable result ({kind})",
            broker_kind,
            1,
            0,
            "-",
            "-",
            f"{result.state} {type(error).__name__}",
        )
    )
    assert result.state == states.FAILURE
    assert isinstance(error, EncodeError), repr(error)
    assert "could not be serialised" in str(error)
    assert json.dumps(str(error))  # readable
