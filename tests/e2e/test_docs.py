"""The documentation stays true: every ```python block in docs/*.md runs as a program in an empty
directory (``py`` blocks are fragments and are not run) and prints what its comments say, and the
settings tables in docs/configuration.md match ``celeriac.app.config.SETTINGS``.

A line ``print(...)  # 8: some words`` promises an output line ``8`` (the comment, or the comment
up to ``:`` or ``,``); the promises must appear in order.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for number, match in enumerate(BLOCK.finditer(page.read_text()), start=1):
            found.append((f"{page.name}#{number}", match.group(1)))
    return found


BLOCKS = python_blocks()


def test_the_docs_have_examples() -> None:
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_docs_example_runs(tmp_path: Path, code: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    outputs = iter(proc.stdout.splitlines())
    for comment in promised_outputs(code):
        assert any(promise_kept(comment, line) for line in outputs), (
            f"no output line for {comment!r} in:\n{proc.stdout}"
        )


def promised_outputs(code: str) -> list[str]:
    return [
        line.split("  # ", 1)[1].strip()
        for line in code.splitlines()
        if line.lstrip().startswith("print(") and "  # " in line
    ]


def promise_kept(comment: str, line: str) -> bool:
    line = line.strip()
    return comment == line or comment.startswith((line + ":", line + ","))


def test_settings_tables_are_current() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        import settings_table
    finally:
        sys.path.remove(str(DOCS))
    page = DOCS / "configuration.md"
    assert settings_table.render(page.read_text()) == page.read_text(), (
        "docs/configuration.md is out of date: run python docs/settings_table.py --write"
    )
