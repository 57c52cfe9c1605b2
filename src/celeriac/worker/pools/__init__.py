"""Execution pools: ``solo``, ``threads``, ``asyncio``, ``prefork`` (child processes).

Pools run task functions and return ``Outcome`` values; the worker's loop does all the I/O.
``create_pool(name, concurrency)`` imports the pool on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.exceptions import ImproperlyConfigured
from celeriac.worker.pools.base import Job, Pool

#: pool name -> "module:Class"
POOLS: dict[str, str] = {
    "solo": "celeriac.worker.pools.solo:SoloPool",
    "threads": "celeriac.worker.pools.threads:ThreadPool",
    "asyncio": "celeriac.worker.pools.asyncio:AsyncioPool",
    "prefork": "celeriac.worker.pools.prefork:PreforkPool",
}


def create_pool(name: str, concurrency: int, **options: Any) -> Pool:
    """The pool called ``name`` with ``concurrency`` slots (``ImproperlyConfigured`` if none)."""
    path = POOLS.get(name)
    if path is None:
        raise ImproperlyConfigured(f"Unknown pool {name!r}; accepted: {', '.join(sorted(POOLS))}")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ImproperlyConfigured(
            f"The {name!r} pool is not available in this version; use 'threads' or 'asyncio'"
        ) from None
    pool: Pool = getattr(module, attr)(concurrency, **options)
    return pool


__all__ = ["POOLS", "Job", "Pool", "create_pool"]
