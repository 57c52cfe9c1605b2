"""``celeriac dlq``: the dead-letter queue - list, show, requeue and purge dead letters.

::

    celeriac -A proj dlq list [--limit N]        one line each: id, queue, task, failed at, reason
    celeriac -A proj dlq show ID                 reason, headers, properties, decoded body
    celeriac -A proj dlq requeue ID... | --all   put them back on their queues (counted afresh)
    celeriac -A proj dlq purge [ID...] [-f]      delete them (all when no ID; asks unless -f)

Everything goes through the broker driver's ``dead_letters`` / ``requeue_dead_letters`` /
``purge_dead_letters``, so it works on every broker. Bodies are decoded only with the app's
``accept_content`` (a pickled dead letter is never unpickled unless pickle is accepted). An
unknown ID is an error (one line, exit 1) and nothing is changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from celeriac.cli.base import State, pass_state

if TYPE_CHECKING:
    from celeriac.protocol.envelope import RawMessage
    from celeriac.transports.base import DeadLetter, Transport

#: how many dead letters are read to find one by id (the driver lists them oldest first)
SCAN_LIMIT = 1_000_000
#: the longest reason shown by ``list`` (``show`` prints it whole)
REASON_MAX = 200
#: how much of an undecodable body ``show`` prints
BODY_PREVIEW = 2000


def failed_time(letter: DeadLetter) -> str:
    """When it was dead-lettered, in UTC, to the second."""
    when = datetime.fromtimestamp(letter.failed_at, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def task_of(message: RawMessage, accept: Sequence[str]) -> tuple[str | None, str | None]:
    """(task name, task id) from the v2 headers, else from a decodable (v1) body."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    name, task_id = headers.get("task"), headers.get("id")
    if isinstance(name, str) and name and isinstance(task_id, str) and task_id:
        return name, task_id
    try:
        from celeriac.protocol.message import decode

        decoded = decode(message, accept)
    except Exception:
        return (name if isinstance(name, str) else None), (
            task_id if isinstance(task_id, str) else None
        )
    return decoded.task, decoded.id


def task_label(message: RawMessage, accept: Sequence[str]) -> str:
    name, task_id = task_of(message, accept)
    if name is None and task_id is None:
        return "-"
    return f"{name or '?'}[{task_id or '?'}]"


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _find(transport: Transport, ids: Sequence[str]) -> dict[str, DeadLetter]:
    """The dead letters named by ``ids``; ``ClickException`` naming any that does not exist."""
    letters = {letter.id: letter for letter in transport.dead_letters(limit=SCAN_LIMIT)}
    missing = [i for i in dict.fromkeys(ids) if i not in letters]
    if missing:
        noun = "dead letter" if len(missing) == 1 else "dead letters"
        raise click.ClickException(
            f"no {noun} with id {', '.join(missing)} (see 'celeriac dlq list')"
        )
    return {i: letters[i] for i in ids}


@click.group(short_help="List, show, requeue or purge dead letters.")
def dlq() -> None:
    """The dead-letter queue: messages the workers set aside, with the reason.

    A message is dead-lettered when it cannot be decoded, is too large, names an unknown task,
    has arguments that do not fit, was delivered broker_max_deliveries times without finishing,
    or was rejected by its task.
    """


@dlq.command("list", short_help="List dead letters, one line each.")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Show at most this many (oldest first).",
)
@pass_state
def list_(state: State, limit: int) -> None:
    """List dead letters, oldest first: ID, QUEUE, TASK[TASK ID], FAILED AT (UTC), REASON."""
    app = state.app
    letters = app.transport.dead_letters(limit=limit)
    if not letters:
        click.echo("No dead letters.")
        return
    accept = app.accept_content
    rows = [
        (letter.id, letter.queue, task_label(letter.message, accept), failed_time(letter))
        for letter in letters
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row, letter in zip(rows, letters, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        click.echo("  ".join([*cells, row[3], _short(letter.reason, REASON_MAX)]))


def _dump(value: Any, indent: int | None = 2) -> str:
    try:
        return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def describe_body(message: RawMessage, accept: Sequence[str]) -> list[str]:
    """The body as the worker would read it, or why it cannot be, with a raw preview."""
    from celeriac.protocol.message import decode
    from celeriac.protocol.serialization import loads

    size = len(message.body)
    lines = [f"body:             {size} bytes"]
    try:
        decoded = decode(message, accept)
    except Exception as exc:
        lines.append(f"  not a task message: {type(exc).__name__}: {_short(str(exc), 500)}")
    else:
        lines.append(f"  args:   {_dump(list(decoded.args), None)}")
        lines.append(f"  kwargs: {_dump(decoded.kwargs, None)}")
        embed = {
            "callbacks": decoded.callbacks,
            "errbacks": decoded.errbacks,
            "chain": decoded.chain,
            "chord": decoded.chord,
        }
        lines.append(f"  embed:  {_dump({k: v for k, v in embed.items() if v}, None)}")
        return lines
    try:
        payload = loads(message.body, message.content_type, message.content_encoding, accept)
    except Exception:
        preview = message.body[:BODY_PREVIEW]
        more = f" (first {BODY_PREVIEW} bytes)" if size > BODY_PREVIEW else ""
        lines.append(f"  raw{more}: {preview!r}")
    else:
        text = _dump(payload)
        more = f" (first {BODY_PREVIEW} characters)" if len(text) > BODY_PREVIEW else ""
        lines.append(f"  decoded{more}: {text[:BODY_PREVIEW]}")
    return lines


@dlq.command(short_help="Show one dead letter in full.")
@click.argument("letter_id", metavar="ID")
@pass_state
def show(state: State, letter_id: str) -> None:
    """Show the dead letter ID: reason, task, headers, properties and decoded body."""
    app = state.app
    letter = _find(app.transport, [letter_id])[letter_id]
    message = letter.message
    accept = app.accept_content
    lines = [
        f"id:               {letter.id}",
        f"queue:            {letter.queue}",
        f"task:             {task_label(message, accept)}",
        f"failed at:        {failed_time(letter)}",
        f"deliveries:       {letter.delivery_count}",
        f"reason:           {letter.reason}",
        f"content type:     {message.content_type}",
        f"content encoding: {message.content_encoding}",
        f"headers:          {_dump(message.headers)}",
        f"properties:       {_dump(message.properties)}",
        *describe_body(message, accept),
    ]
    click.echo("\n".join(lines))


@dlq.command(short_help="Put dead letters back on their queues.")
@click.argument("ids", nargs=-1, metavar="ID...")
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@pass_state
def requeue(state: State, ids: tuple[str, ...], everything: bool) -> None:
    """Put the dead letters ID... (or --all) back on their queues.

    A requeued message starts afresh: its delivery count begins again at 1.
    """
    if everything and ids:
        raise click.UsageError("give dead letter IDs or --all, not both")
    if not everything and not ids:
        raise click.UsageError("give the IDs of the dead letters to requeue, or --all")
    transport = state.app.transport
    if ids:
        _find(transport, ids)
    moved = transport.requeue_dead_letters(list(dict.fromkeys(ids)) if ids else None)
    click.echo(f"Requeued {moved} dead letter{'' if moved == 1 else 's'}")


@dlq.command(short_help="Delete dead letters.")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def purge(state: State, ids: tuple[str, ...], force: bool) -> None:
    """Delete the dead letters ID..., or all of them when no ID is given.

    Asks for confirmation unless -f is given.
    """
    from celeriac.cli.purge import _confirm

    transport = state.app.transport
    if ids:
        _find(transport, ids)
    if not force:
        what = f"{len(set(ids))} dead letter(s)" if ids else "ALL dead letters"
        _confirm(f"Delete {what}? They cannot be recovered")
    removed = transport.purge_dead_letters(list(dict.fromkeys(ids)) if ids else None)
    click.echo(f"Purged {removed} dead letter{'' if removed == 1 else 's'}")
