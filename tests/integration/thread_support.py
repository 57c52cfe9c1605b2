"""``Background``: a call run on a thread while the test does something else (restarts a
server, writes the value being waited for), then joined with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Background:
    """``func()`` on a daemon thread; ``result(timeout)`` joins it and returns its value or
    re-raises its exception; ``ended`` is when it returned (``time.monotonic``)."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self.value = func()
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def result(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value
