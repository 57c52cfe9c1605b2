"""The ``celeriac`` command: app loading, ``call``/``result``/``purge``/``demo``/``worker``, and
one-line errors. In-process through click's ``CliRunner``; through the console script in a
subprocess for the error paths and for a real worker process.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from celeriac.cli.loader import AppLoadError, find_app
from celeriac.cli.main import main

#: upper bound for one CLI subprocess (they take well under a second)
RUN_TIMEOUT = 60.0


def celeriac_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m celeriac.cli``."""
    script = shutil.which("celeriac", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "celeriac.cli"]


def run_cli(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*celeriac_command(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=input,
        timeout=RUN_TIMEOUT,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert proc.returncode != 0, proc
    if code is not None:
        assert proc.returncode == code, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


TASKS_MODULE = """
from celeriac import Celeriac

app = Celeriac("{name}", broker="{url}", backend="{url}")


@app.task
def add(x, y):
    return x + y


@app.task
def fail():
    raise ValueError("boom")
"""


def write_project(directory: Path, name: str) -> str:
    """A task module ``<name>.py`` in ``directory`` on a SQLite file there; returns the URL."""
    url = f"sqlite:///{directory / 'broker.db'}"
    (directory / f"{name}.py").write_text(TASKS_MODULE.format(name=name, url=url))
    return url


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A uniquely named task module in the (temporary) working directory, for in-process runs."""
    name = f"cliproj_{uuid.uuid4().hex[:10]}"
    write_project(tmp_path, name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    importlib.invalidate_caches()
    yield name
    module = sys.modules.pop(name, None)
    if module is not None:
        module.app.close()


# -- in process ----------------------------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("worker", "call", "result", "purge", "demo"):
        assert command in result.output


def test_version() -> None:
    from celeriac import __version__

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"celeriac {__version__}"


def test_call_and_result_against_an_in_process_worker(project: str) -> None:
    from celeriac.testing.worker import start_worker

    module = __import__(project)
    runner = CliRunner()
    with start_worker(module.app, pool="threads", concurrency=2):
        sent = runner.invoke(main, ["-A", project, "call", f"{project}.add", "--args", "[2, 3]"])
        assert sent.exit_code == 0, sent.output
        task_id = sent.output.strip()
        got = runner.invoke(main, ["-A", project, "result", task_id, "--timeout", "20"])
        assert got.exit_code == 0, got.output
        assert got.output.strip() == "5"


def test_call_with_kwargs_countdown_and_queue(project: str) -> None:
    runner = CliRunner()
    args = ["call", f"{project}.add", "--kwargs", '{"x": 1, "y": 2}', "--countdown", "3600"]
    sent = runner.invoke(main, ["-A", project, *args, "--queue", "later"])
    assert sent.exit_code == 0, sent.output
    module = sys.modules[project]
    assert module.app.transport.qsize("later") == 1
    purged = runner.invoke(main, ["-A", project, "purge", "-Q", "later", "-f"])
    assert purged.exit_code == 0
    assert "Purged 1 message" in purged.output
    assert module.app.transport.qsize("later") == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--args", "[1, 2"], "--args"),
        (["--args", '{"x": 1}'], "JSON array"),
        (["--kwargs", "[1]"], "JSON object"),
        (["--countdown", "1", "--eta", "2030-01-01T00:00:00"], "not both"),
        (["--eta", "tomorrow"], "ISO 8601"),
    ],
)
def test_call_rejects_bad_arguments(project: str, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, ["-A", project, "call", f"{project}.add", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert needle in lines[0]


def test_result_of_a_failed_task_exits_1_with_the_exception(project: str) -> None:
    from celeriac.testing.worker import start_worker

    module = __import__(project)
    with start_worker(module.app, pool="threads", concurrency=1):
        task_id = module.fail.delay().id
        got = CliRunner().invoke(
            main, ["-A", project, "result", task_id, "--timeout", "20", "--traceback"]
        )
    assert got.exit_code == 1
    assert "Traceback" in got.output  # asked for with --traceback
    assert got.output.strip().splitlines()[-1] == f"Error: task {task_id} FAILURE: ValueError: boom"


def test_result_times_out_on_an_unknown_task(project: str) -> None:
    got = CliRunner().invoke(main, ["-A", project, "result", "no-such-id", "--timeout", "0.2"])
    assert got.exit_code == 1
    assert got.output.strip() == "Error: timed out after 0.2 s: task no-such-id is PENDING"


def test_purge_asks_for_confirmation(project: str) -> None:
    module = __import__(project)
    module.add.apply_async((1, 1), countdown=3600)
    module.add.apply_async((2, 2))
    runner = CliRunner()
    refused = runner.invoke(main, ["-A", project, "purge"], input="n\n")
    assert refused.exit_code == 1
    assert "Aborted" in refused.output
    assert module.app.transport.qsize("celery") == 2
    accepted = runner.invoke(main, ["-A", project, "purge"], input="y\n")
    assert accepted.exit_code == 0
    assert "Purged 2 messages from 1 queue(s): celery" in accepted.output
    assert module.app.transport.qsize("celery") == 0


def test_no_app_given_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["call", "x"])
    assert result.exit_code == 2
    assert "-A/--app" in result.output


def test_app_from_the_environment(project: str) -> None:
    result = CliRunner().invoke(main, ["purge", "-f"], env={"CELERIAC_APP": project})
    assert result.exit_code == 0, result.output
    assert "Purged 0 messages" in result.output


# -- the loader ----------------------------------------------------------------------------------
@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write modules/packages into a temporary working directory; names are made unique."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    prefix = f"ld{uuid.uuid4().hex[:8]}"

    def write(relative: str, source: str) -> str:
        path = tmp_path / relative.replace("PFX", prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return prefix

    yield write
    for name in list(sys.modules):
        if name.startswith(prefix):
            del sys.modules[name]


APP_SOURCE = (
    "from celeriac import Celeriac\n"
    "{attr} = Celeriac('x', broker='memory://', set_as_current=False)\n"
)


@pytest.mark.parametrize("attr", ["app", "celery", "something_else"])
def test_find_app_in_a_module(modules: Callable[..., str], attr: str) -> None:
    prefix = modules("PFX.py", APP_SOURCE.format(attr=attr))
    module = __import__(prefix)
    assert find_app(prefix) is getattr(module, attr)


def test_find_app_forms(modules: Callable[..., str]) -> None:
    prefix = modules("PFX/__init__.py", "")
    modules("PFX/tasks.py", APP_SOURCE.format(attr="myapp"))
    app = find_app(f"{prefix}.tasks")
    assert find_app(f"{prefix}.tasks:myapp") is app
    assert find_app(f"{prefix}.tasks.myapp") is app


def test_find_app_looks_in_package_celery_module(modules: Callable[..., str]) -> None:
    prefix = modules("PFX/__init__.py", "")
    modules("PFX/celery.py", APP_SOURCE.format(attr="app"))
    assert find_app(prefix) is sys.modules[f"{prefix}.celery"].app


@pytest.mark.parametrize(
    ("spec", "source", "needle"),
    [
        ("PFX_missing", None, "was not found"),
        ("PFX", "import PFX_not_installed\n", "No module named"),
        ("PFX", "x = 1\n", "No Celeriac app found"),
        ("PFX:nope", "x = 1\n", "has no attribute 'nope'"),
        ("PFX:x", "x = 1\n", "is a int, not a Celeriac app"),
        ("PFX.", None, "Invalid app name"),
    ],
)
def test_find_app_errors(
    modules: Callable[..., str], spec: str, source: str | None, needle: str
) -> None:
    prefix = modules("PFX.py", source) if source is not None else modules("unused.py", "")
    with pytest.raises(AppLoadError, match=needle):
        find_app(spec.replace("PFX", prefix))


# -- through the console script --------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    write_project(tmp_path, "proj")
    (tmp_path / "nope_app.py").write_text("x = 1\n")
    (tmp_path / "typo.py").write_text(
        "from celeriac import Celeriac\napp = Celeriac('typo', broker_ulr='memory://')\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["-A", "no_such_module", "call", "x"], 2, "The module 'no_such_module' was not found"),
        (["-A", "nope_app", "purge", "-f"], 2, "No Celeriac app found in module 'nope_app'"),
        (["-A", "typo", "call", "x"], 1, "did you mean 'broker_url'?"),
        (["-A", "proj", "call", "proj.add", "--args", "[2,"], 2, "not valid JSON"),
        (["-A", "proj", "worker", "--bogus"], 2, "No such option"),
        (["-A", "proj", "worker", "-P", "gevent"], 2, "'gevent' is not one of"),
        (["nosuchcommand"], 2, "No such command"),
    ],
)
def test_user_errors_are_one_line(workdir: Path, args: list[str], code: int, needle: str) -> None:
    line = assert_one_line_error(run_cli(*args, cwd=workdir), code)
    assert needle in line


def test_unknown_setting_in_the_environment_is_one_line(workdir: Path) -> None:
    env = {**os.environ, "CELERIAC_BROKER_ULR": "memory://"}
    proc = subprocess.run(
        [*celeriac_command(), "-A", "proj", "purge", "-f"],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
    )
    assert "CELERIAC_BROKER_ULR" in assert_one_line_error(proc, 1)


def test_connection_refused_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    (tmp_path / "down.py").write_text(
        "from celeriac import Celeriac\n"
        "app = Celeriac('down', broker='redis://127.0.0.1:1/0', backend='redis://127.0.0.1:1/0',"
        " task_publish_retry=False,"
        " broker_transport_options={'connect_retries_timeout': 0.2})\n"
    )
    line = assert_one_line_error(run_cli("-A", "down", "call", "x", cwd=tmp_path), 1)
    assert "refused" in line.lower()


def test_workdir_and_config_options(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (workdir / "otherconfig.py").write_text("task_default_queue = 'other'\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    args = ["--workdir", str(workdir), "-A", "proj", "--config", "otherconfig", "purge", "-f"]
    proc = run_cli(*args, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Purged 0 messages from 1 queue(s): other"
    missing = run_cli("-A", "proj", "--config", "nowhere", "purge", "-f", cwd=workdir)
    assert "--config nowhere: The module 'nowhere' was not found" in assert_one_line_error(
        missing, 2
    )


def test_purge_through_the_console_script(workdir: Path) -> None:
    for _ in range(2):
        sent = run_cli("-A", "proj", "call", "proj.add", "--args", "[1, 2]", cwd=workdir)
        assert sent.returncode == 0, sent.stderr
    refused = run_cli("-A", "proj", "purge", cwd=workdir, input="")
    assert refused.returncode == 1
    purged = run_cli("-A", "proj", "purge", "-f", cwd=workdir)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "Purged 2 messages from 1 queue(s): celery"


class WorkerProcess:
    """``celeriac -A proj worker`` in a subprocess, its log in a file."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.log_path = cwd / "worker.log"
        self.out_path = cwd / "worker.out"
        with self.log_path.open("w") as log, self.out_path.open("w") as out:
            self.proc = subprocess.Popen(
                [*celeriac_command(), "-A", "proj", "worker", *args],
                cwd=cwd,
                stdout=out,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"worker exited: {self.log()}"
            return " ready." in self.log()

        wait_for(ready, timeout, "the worker to log 'ready.'")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            raise


@pytest.fixture
def worker_process(workdir: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(workdir, "-P", "threads", "-c", "2", "-l", "info", "-n", "w1@%h")
    try:
        yield worker
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait(30)


def test_worker_call_result_and_sigterm(workdir: Path, worker_process: WorkerProcess) -> None:
    worker_process.wait_ready()
    banner = worker_process.out_path.read_text()
    for expected in ("w1@", "sqlite:///", "2 (threads)", "proj.add", "proj.fail", "celery"):
        assert expected in banner

    sent = run_cli("-A", "proj", "call", "proj.add", "--args", "[2, 3]", cwd=workdir)
    assert sent.returncode == 0, sent.stderr
    got = run_cli("-A", "proj", "result", sent.stdout.strip(), "--timeout", "30", cwd=workdir)
    assert (got.returncode, got.stdout.strip()) == (0, "5"), got.stderr

    failed = run_cli("-A", "proj", "call", "proj.fail", cwd=workdir)
    task_id = failed.stdout.strip()
    got = run_cli("-A", "proj", "result", task_id, "--timeout", "30", cwd=workdir)
    assert got.returncode == 1
    assert got.stderr.strip() == f"Error: task {task_id} FAILURE: ValueError: boom"

    assert worker_process.stop() == 0
    assert "Warm shutdown" in worker_process.log()


def test_demo_runs_and_cleans_up() -> None:
    proc = subprocess.run(
        [*celeriac_command(), "demo"], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("demo.")]
    states = {row[0]: row[2] for row in rows}
    assert states == {"demo.add": "SUCCESS", "demo.flaky": "SUCCESS", "demo.fail": "FAILURE"}
    assert any(row[0] == "demo.add" and row[3] == "5" for row in rows)
    assert "ValueError: this task always fails" in proc.stdout
    database = next(line.split()[-1] for line in proc.stdout.splitlines() if "database:" in line)
    assert database.endswith("celeriac.sqlite3")
    assert not Path(database).exists()
    assert "Traceback" not in proc.stderr


def test_demo_in_process() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert result.output.count("SUCCESS") == 2
    assert result.output.count("FAILURE") == 1
