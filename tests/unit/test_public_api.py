"""The exported surface: what ``import celeriac`` offers, and that importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import celeriac

EXPECTED = {
    "AsyncResult",
    "Celeriac",
    "Celery",
    "GroupResult",
    "Signature",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "current_task",
    "exceptions",
    "get_task_logger",
    "group",
    "maybe_signature",
    "shared_task",
    "signals",
    "signature",
    "states",
    "xmap",
    "xstarmap",
}


def test_exported_names() -> None:
    assert set(celeriac.__all__) == EXPECTED
    for name in celeriac.__all__:
        assert getattr(celeriac, name) is not None, name
    assert celeriac.Celery is celeriac.Celeriac


def test_import_opens_nothing_and_loads_no_driver() -> None:
    code = (
        "import sys, celeriac; app = celeriac.Celeriac('x');"
        "heavy = [m for m in ('redis', 'sqlite3', 'celeriac.worker', 'celeriac.transports.sqlite',"
        " 'click', 'asyncio') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
