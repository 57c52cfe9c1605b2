"""Celeriac: Celery's API and wire format, with async tasks, typed tasks and no lost tasks.

Importing this package opens nothing and reads nothing: names are imported on first use.
``Celery`` is an alias of ``Celeriac`` so that switching is a change of imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac, Celery, current_app, current_task, shared_task
    from celeriac.app.log import get_task_logger
    from celeriac.app.task import Task
    from celeriac.canvas import (
        Signature,
        chain,
        chord,
        chunks,
        group,
        maybe_signature,
        signature,
        xmap,
        xstarmap,
    )
    from celeriac.result import AsyncResult, GroupResult

_LAZY: dict[str, str] = {
    "Celeriac": "celeriac.app.base",
    "Celery": "celeriac.app.base",
    "current_app": "celeriac.app.base",
    "current_task": "celeriac.app.base",
    "shared_task": "celeriac.app.base",
    "Task": "celeriac.app.task",
    "get_task_logger": "celeriac.app.log",
    "Signature": "celeriac.canvas",
    "signature": "celeriac.canvas",
    "chain": "celeriac.canvas",
    "chord": "celeriac.canvas",
    "chunks": "celeriac.canvas",
    "group": "celeriac.canvas",
    "maybe_signature": "celeriac.canvas",
    "xmap": "celeriac.canvas",
    "xstarmap": "celeriac.canvas",
    "AsyncResult": "celeriac.result",
    "GroupResult": "celeriac.result",
    "states": "celeriac.states",
    "signals": "celeriac.signals",
    "exceptions": "celeriac.exceptions",
}

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'celeriac' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
