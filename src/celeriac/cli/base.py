"""Pieces shared by the CLI commands: the state in click's context (the app, loaded on first use),
option parsers (JSON arguments, queue lists, times), and output helpers.

User errors are raised as click exceptions (``click.UsageError`` exits 2, ``click.ClickException``
exits 1); ``celeriac.cli.main`` prints them as one ``Error: ...`` line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli.loader import AppLoadError, load_app

if TYPE_CHECKING:
    from celeriac.app.base import Celeriac


class AppNotFound(click.UsageError):
    """``-A/--app`` names no importable module or no app (exit 2, no usage hint)."""


@dataclass
class State:
    """What the top-level options give every command: the app, loaded when first needed."""

    app_spec: str | None = None
    workdir: str | None = None
    config: str | None = None
    _app: Celeriac | None = field(default=None, repr=False)

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            if not self.app_spec:
                raise click.UsageError(
                    "No app given: pass -A/--app MODULE (e.g. -A proj.tasks) or set CELERIAC_APP"
                )
            try:
                self._app = load_app(self.app_spec, workdir=self.workdir, config=self.config)
            except AppLoadError as exc:
                raise AppNotFound(str(exc)) from None
        return self._app


pass_state = click.make_pass_decorator(State, ensure=True)


def parse_json(text: str | None, option: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """``text`` parsed as JSON of type ``kind`` (a list for --args, an object for --kwargs)."""
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not valid JSON ({exc.msg} at column {exc.colno})", param_hint=option
        ) from None
    if not isinstance(value, kind):
        wanted = "a JSON array, e.g. [2, 3]" if kind is list else 'a JSON object, e.g. {"x": 1}'
        raise click.BadParameter(f"must be {wanted}, not {text!r}", param_hint=option)
    return value


def split_queues(values: Iterable[str] | str | None) -> list[str]:
    """``-Q a,b -Q c`` -> ``['a', 'b', 'c']`` (order kept, duplicates dropped)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def parse_datetime(text: str, option: str) -> datetime:
    """An ISO 8601 time; a naive one is taken as UTC (as Celery takes a naive ``eta``)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time, e.g. 2030-01-01T12:00:00+00:00", param_hint=option
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def parse_expires(text: str | None) -> float | datetime | None:
    """``--expires``: seconds from now, or an ISO 8601 time."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return parse_datetime(text, "--expires")


def pretty(value: Any) -> str:
    """A result as JSON when it can be (``8``, ``"text"``, ``[1, 2]``), else its ``repr``."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)
