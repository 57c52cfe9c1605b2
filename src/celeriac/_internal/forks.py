"""A fork generation: a number that is different in a forked child, read without a system call.

``os.getpid()`` is a system call each time (glibc no longer caches it), and per-call checks
"am I still the process that opened this connection?" add up on hot paths. ``generation()``
returns a counter that ``os.register_at_fork`` bumps in every child; the hook is registered by
the first ``watch_forks()`` (nothing happens at import). State that must not cross a fork
(a socket) records the generation it was made in and is remade when it differs.
"""

from __future__ import annotations

import os
import threading

_generation = [0]
_hooked: list[bool] = [False]
_lock = threading.Lock()


def _in_child() -> None:
    _generation[0] += 1


def watch_forks() -> None:
    """Register the fork hook (once per process; later calls do nothing)."""
    if _hooked[0]:
        return
    with _lock:
        if not _hooked[0]:
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_in_child)
            _hooked[0] = True


def generation() -> int:
    """The current fork generation (call ``watch_forks`` once before relying on it)."""
    return _generation[0]
