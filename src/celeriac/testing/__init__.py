"""Helpers for testing code that uses Celeriac: an in-thread worker (``start_worker``) and a
pytest plugin (``celeriac.testing.pytest_plugin``: fixtures ``celeriac_app``,
``celeriac_worker``...). ``start_worker`` is imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["start_worker"]


def __getattr__(name: str) -> Any:
    if name == "start_worker":
        from celeriac.testing.worker import start_worker

        return start_worker
    raise AttributeError(name)
