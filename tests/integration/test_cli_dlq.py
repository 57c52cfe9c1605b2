"""``celeriac dlq``: list, show, requeue and purge dead letters, on SQLite and Redis.

Dead letters are made through the transport (publish, fetch, ``dead_letter``) as a worker would;
the commands run in process through click's ``CliRunner``, and through the console script in a
subprocess for the one-line errors.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from celeriac.cli.main import main
from celeriac.protocol.envelope import RawMessage

MODULE = """
from celeriac import Celeriac

app = Celeriac("{name}", broker="{url}", backend="{url}")
app.conf.broker_transport_options = {options!r}
app.conf.result_backend_transport_options = {options!r}


@app.task
def add(x, y):
    return x + y
"""

REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def _redis_or_skip() -> None:
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5) as client:
            client.ping()
    except Exception as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no Redis at {REDIS_URL}: {exc} (CI=true: servers are required)")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")


class Project:
    """An app module in the working directory and the dead letters made on its broker."""

    def __init__(self, tmp_path: Path, broker: str) -> None:
        self.dir = tmp_path
        self.name = f"dlqproj_{uuid.uuid4().hex[:10]}"
        self.prefix = ""
        options: dict[str, Any] = {}
        if broker == "redis":
            _redis_or_skip()
            self.prefix = f"celeriac-test-dlq-{uuid.uuid4().hex[:10]}:"
            options = {"global_keyprefix": self.prefix}
            url = REDIS_URL
        else:
            url = f"sqlite:///{tmp_path / 'broker.db'}"
        self.url = url
        (tmp_path / f"{self.name}.py").write_text(
            MODULE.format(name=self.name, url=url, options=options)
        )
        importlib.invalidate_caches()
        self.module: Any = importlib.import_module(self.name)

    @property
    def app(self) -> Any:
        return self.module.app

    def dead_letter(self, message: RawMessage, reason: str, queue: str = "celery") -> str:
        """Publish ``message``, take it as a worker would, dead-letter it; returns its id."""
        transport = self.app.transport
        before = {dl.id for dl in transport.dead_letters(limit=1000)}
        transport.publish(queue, message)
        (delivery,) = transport.fetch([queue], 1, 5.0)
        transport.dead_letter(delivery, reason)
        (new,) = [dl.id for dl in transport.dead_letters(limit=1000) if dl.id not in before]
        return new

    def task_message(self, *args: Any) -> tuple[str, RawMessage]:
        """A real task message for ``add`` (not sent), and its task id."""
        task_id = str(uuid.uuid4())
        from celeriac.protocol.message import TaskMessage

        message = TaskMessage(id=task_id, task=f"{self.name}.add", args=args, root_id=task_id)
        return task_id, self.app.encode(message)

    def close(self) -> None:
        sys.modules.pop(self.name, None)
        self.app.close()
        if self.prefix:
            import redis

            with redis.Redis.from_url(REDIS_URL) as client:
                for key in client.scan_iter(match=f"{self.prefix}*"):
                    client.delete(key)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def project(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    proj = Project(tmp_path, request.param)
    yield proj
    proj.close()


def run(project: Project, *args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, ["-A", project.name, "dlq", *args], input=input)


def test_list_is_one_line_per_dead_letter(project: Project) -> None:
    empty = run(project, "list")
    assert empty.exit_code == 0, empty.output
    assert empty.output.strip() == "No dead letters."
    task_id, raw = project.task_message(1, 2, 3)
    first = project.dead_letter(raw, "wrong arguments: add(x, y) called with 3 arguments")
    second = project.dead_letter(
        RawMessage(b"\x00garbage", headers={}), "undecodable message\nwith a second line"
    )
    listed = run(project, "list")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(first) and lines[1].startswith(second)
    assert f"{project.name}.add[{task_id}]" in lines[0]
    assert "celery" in lines[0] and "wrong arguments" in lines[0]
    assert lines[0].split()[3].endswith("Z")  # failed at, UTC
    assert " - " in lines[1]  # no task known
    limited = run(project, "list", "--limit", "1")
    assert limited.output.strip().splitlines() == lines[:1]


def test_show_prints_reason_headers_and_decoded_body(project: Project) -> None:
    task_id, raw = project.task_message(4, 5)
    letter = project.dead_letter(raw, "unknown task: not registered in this worker")
    shown = run(project, "show", letter)
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert f"id:               {letter}" in out
    assert "reason:           unknown task: not registered in this worker" in out
    assert f"task:             {project.name}.add[{task_id}]" in out
    assert f'"id": "{task_id}"' in out  # headers
    assert "args:   [4, 5]" in out


def test_show_never_unpickles_and_previews_undecodable_bodies(project: Project) -> None:
    marker = project.dir / "unpickled"

    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    pickled = RawMessage(
        pickle.dumps(Boom()),
        content_type="application/x-python-serialize",
        content_encoding="binary",
        headers={"task": f"{project.name}.add", "id": "p-1"},
    )
    letter = project.dead_letter(pickled, "content type not accepted")
    shown = run(project, "show", letter)
    assert shown.exit_code == 0, shown.output
    assert "not a task message: ContentDisallowed" in shown.output
    assert "raw: b'\\x80" in shown.output
    assert not marker.exists(), "the pickled body was unpickled"
    big = project.dead_letter(RawMessage(b"x" * 10_000), "too big")
    preview = run(project, "show", big)
    assert "body:             10000 bytes" in preview.output
    assert "(first 2000 characters)" in preview.output or "(first 2000 bytes)" in preview.output


def test_requeue_by_id_and_all(project: Project) -> None:
    _, raw_a = project.task_message(1, 1)
    _, raw_b = project.task_message(2, 2)
    a = project.dead_letter(raw_a, "reason a")
    project.dead_letter(raw_b, "reason b", queue="other")
    transport = project.app.transport
    one = run(project, "requeue", a)
    assert one.exit_code == 0, one.output
    assert one.output.strip() == "Requeued 1 dead letter"
    assert transport.qsize("celery") == 1
    (delivery,) = transport.fetch(["celery"], 1, 5.0)
    assert delivery.delivery_count == 1  # counted afresh
    transport.ack([delivery])
    rest = run(project, "requeue", "--all")
    assert rest.output.strip() == "Requeued 1 dead letter"
    assert transport.qsize("other") == 1
    assert run(project, "list").output.strip() == "No dead letters."


def test_requeue_needs_ids_or_all(project: Project) -> None:
    for args in ([], ["x", "--all"]):
        result = run(project, "requeue", *args)
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert line.startswith("Error: ") and "--all" in line


def test_purge_by_id_and_all_with_confirmation(project: Project) -> None:
    ids = [project.dead_letter(project.task_message(i, i)[1], f"r{i}") for i in range(3)]
    one = run(project, "purge", ids[0], "-f")
    assert one.exit_code == 0, one.output
    assert one.output.strip() == "Purged 1 dead letter"
    refused = run(project, "purge", input="n\n")
    assert refused.exit_code == 1
    assert "Aborted" in refused.output
    assert len(project.app.transport.dead_letters()) == 2
    accepted = run(project, "purge", input="y\n")
    assert accepted.exit_code == 0
    assert "Purged 2 dead letters" in accepted.output
    assert project.app.transport.dead_letters() == []


def test_unknown_id_changes_nothing(project: Project) -> None:
    letter = project.dead_letter(project.task_message(1, 2)[1], "r")
    for command in (["show", "nope"], ["requeue", letter, "nope"], ["purge", "nope", "-f"]):
        result = run(project, *command)
        assert result.exit_code == 1, result.output
        (line,) = result.output.strip().splitlines()
        assert line == "Error: no dead letter with id nope (see 'celeriac dlq list')"
    assert [dl.id for dl in project.app.transport.dead_letters()] == [letter]


def _celeriac() -> list[str]:
    script = shutil.which("celeriac", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "celeriac.cli"]


def test_errors_in_a_subprocess_are_one_line_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    project = Project(tmp_path, "sqlite")
    try:
        cases = [
            (["-A", project.name, "dlq", "show", "42"], 1, "no dead letter with id 42"),
            (["-A", project.name, "dlq", "requeue"], 2, "or --all"),
            (["-A", project.name, "dlq", "list", "--limit", "0"], 2, "--limit"),
            (["-A", "no_such_module_here", "dlq", "list"], 2, "no_such_module_here"),
            (["dlq", "list"], 2, "No app given"),
        ]
        for args, code, needle in cases:
            proc = subprocess.run(
                [*_celeriac(), *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert proc.returncode == code, (args, proc.stderr)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), (args, proc.stderr)
            assert needle in lines[0], (args, lines)
            assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        project.close()


def test_a_broker_that_is_down_is_one_line(tmp_path: Path) -> None:
    name = f"dlqdown_{uuid.uuid4().hex[:8]}"
    options = {"connect_retries_timeout": 0.5, "socket_connect_timeout": 0.2}
    (tmp_path / f"{name}.py").write_text(
        MODULE.format(name=name, url="redis://127.0.0.1:1/0", options=options)
    )
    proc = subprocess.run(
        [*_celeriac(), "-A", name, "dlq", "list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "Redis" in line
    assert "Traceback" not in proc.stderr
