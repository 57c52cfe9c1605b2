"""The README's quick start: its first command installs Celeriac and runs the demo, its second
is exactly what CI runs.

The demo command runs as the README gives it in a copy of the project (a fresh venv, ``pip
install -e .`` from the package index, then the ``celeriac demo`` console script) under
``CI=true`` (about 30 s); and, everywhere, its last step runs with the console script of the
environment running the tests, as a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def quick_start_commands() -> list[str]:
    """The ``sh`` code blocks of the README's "Quick start" section, in order."""
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL)]


def test_quick_start_is_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    install, tests = commands
    assert "\n" not in install and "\n" not in tests
    assert install.endswith("celeriac demo")
    assert tests == "bash .ci/run"


def test_ci_runs_the_test_suite_it_promises() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    for step in ("ruff check src tests", "ruff format --check src tests", "mypy --strict src"):
        assert step in script
    assert "lint-imports" in script
    assert "python -m pytest" in script


def check_demo_output(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = {
        line.split()[0]: line.split()[2]
        for line in proc.stdout.splitlines()
        if line.startswith("demo.")
    }
    assert states == {"demo.add": "SUCCESS", "demo.flaky": "SUCCESS", "demo.fail": "FAILURE"}


def test_quick_start_demo_command() -> None:
    install = quick_start_commands()[0]
    steps = [step.strip() for step in install.split("&&")]
    assert steps[-1].endswith("celeriac demo")
    script = shutil.which("celeriac", path=str(Path(sys.executable).parent))
    assert script, "the celeriac console script is not installed next to this interpreter"
    demo = [script, *steps[-1].split()[1:]]
    proc = subprocess.run(demo, cwd=REPO, capture_output=True, text=True, timeout=120)
    check_demo_output(proc)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
    reason="installs into a fresh venv from the package index: runs under CI=true",
)
def test_quick_start_in_a_fresh_venv(tmp_path: Path) -> None:
    project = tmp_path / "celeriac"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    install = quick_start_commands()[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERIAC_", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(
        ["bash", "-c", install], cwd=project, capture_output=True, text=True, timeout=600, env=env
    )
    check_demo_output(proc)
