"""The typed surface: a type checker flags wrong task arguments and knows result types."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

SNIPPET = textwrap.dedent(
    """
    from celeriac import Celeriac, Task, shared_task

    app = Celeriac("typed")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True, max_retries=3)
    def bound(self: Task[..., object], name: str) -> str:
        return name

    @app.task
    async def aadd(x: int) -> int:
        return x

    @shared_task
    def shared(x: str) -> bytes:
        return x.encode()

    reveal_type(add.delay(1, 2).get())
    reveal_type(bound.delay("n").get())
    reveal_type(aadd.delay(1).get())
    reveal_type(shared.apply_async(("a",)).get())
    add.delay("x", 2)
    bound.delay(1)
    aadd.delay()
    """
)


def test_mypy_flags_wrong_arguments_and_knows_result_types(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, _err, _ = api.run(
        [str(path), "--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy")]
    )
    lines = out.splitlines()
    reveals = [line.split("Revealed type is ")[1] for line in lines if "Revealed type" in line]
    assert reveals == ['"int"', '"str"', '"int"', '"bytes"'], out
    errors = [line.split(": error: ")[1] for line in lines if ": error:" in line]
    assert errors == [
        'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"  [arg-type]',
        'Argument 1 to "delay" of "Task" has incompatible type "int"; expected "str"  [arg-type]',
        'Missing positional argument "x" in call to "delay" of "Task"  [call-arg]',
    ], out
