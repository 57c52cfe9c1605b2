"""Logging: ``get_task_logger`` (records carry ``task_name``/``task_id``) and the worker's setup."""

from __future__ import annotations

import logging
import sys

from celeriac.app import context

TASK_LOGGER_ROOT = "celeriac.task"


class TaskContextFilter(logging.Filter):
    """Adds ``task_name`` and ``task_id`` of the running task (or ``???``) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = context.top()
        if current is None:
            record.__dict__.setdefault("task_name", "???")
            record.__dict__.setdefault("task_id", "???")
        else:
            task, request = current
            record.__dict__["task_name"] = getattr(task, "name", "???")
            record.__dict__["task_id"] = request.id or "???"
        return True


_FILTER = TaskContextFilter()


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task code: each record carries the running task's name and id."""
    logger = logging.getLogger(name)
    if logger.parent is logging.getLogger() and name != TASK_LOGGER_ROOT:
        logger.parent = logging.getLogger(TASK_LOGGER_ROOT)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


class TaskAwareFormatter(logging.Formatter):
    """Uses ``task_fmt`` for records logged inside a task, ``fmt`` for the rest."""

    def __init__(self, fmt: str, task_fmt: str) -> None:
        super().__init__(fmt)
        self._task = logging.Formatter(task_fmt)

    def format(self, record: logging.LogRecord) -> str:
        # The worker's own lines about a task already name it ("Task add[id] received").
        inside_task = record.__dict__.get("task_id", "???") != "???"
        if inside_task and not record.name.startswith("celeriac.worker"):
            return self._task.format(record)
        return super().format(record)


def setup_logging(
    loglevel: str | int = "WARNING",
    fmt: str = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
    task_fmt: str = (
        "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
    ),
    stream: object = None,
) -> logging.Handler:
    """Point the root logger at ``stream`` (stderr) with task-aware formatting."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {loglevel!r}")
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(TaskAwareFormatter(fmt, task_fmt))
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_celeriac", False):
            root.removeHandler(old)
    handler._celeriac = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
