"""``celeriac call`` (send a task by name, print its id) and ``celeriac result`` (wait for and
print a task's result)."""

from __future__ import annotations

from typing import Any

import click

from celeriac.cli.base import State, parse_datetime, parse_expires, parse_json, pass_state, pretty


@click.command(short_help="Send a task by name and print its id.")
@click.argument("name")
@click.option(
    "-a", "--args", "args_json", metavar="JSON", help="Positional arguments: a JSON array."
)
@click.option(
    "-k", "--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments: a JSON object."
)
@click.option("--countdown", type=float, metavar="SECONDS", help="Run no sooner than this.")
@click.option("--eta", metavar="ISO", help="Run no sooner than this time (ISO 8601; naive = UTC).")
@click.option(
    "--expires",
    metavar="SECONDS|ISO",
    help="Revoke the task if it has not started by then (seconds from now or ISO 8601 time).",
)
@click.option("--queue", metavar="NAME", help="Send to this queue (default: the task's route).")
@click.option("--routing-key", metavar="KEY", help="Routing key (names the queue on most brokers).")
@click.option(
    "--serializer",
    type=click.Choice(["json", "msgpack", "yaml", "pickle"]),
    help="Serializer of the message (default: task_serializer).",
)
@pass_state
def call(
    state: State,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    countdown: float | None,
    eta: str | None,
    expires: str | None,
    queue: str | None,
    routing_key: str | None,
    serializer: str | None,
) -> None:
    """Send the task NAME with arguments and print its id.

    \b
    celeriac -A proj.tasks call proj.tasks.add --args '[2, 3]'
    """
    args = parse_json(args_json, "--args", list)
    kwargs = parse_json(kwargs_json, "--kwargs", dict)
    if countdown is not None and eta is not None:
        raise click.UsageError("give --countdown or --eta, not both")
    options: dict[str, Any] = {
        "countdown": countdown,
        "eta": parse_datetime(eta, "--eta") if eta is not None else None,
        "expires": parse_expires(expires),
        "queue": queue,
        "routing_key": routing_key,
        "serializer": serializer,
    }
    options = {key: value for key, value in options.items() if value is not None}
    sent = state.app.send_task(name, args, kwargs, **options)
    click.echo(sent.id)


@click.command(short_help="Wait for a task and print its result.")
@click.argument("task_id")
@click.option(
    "--timeout",
    type=float,
    metavar="SECONDS",
    help="Give up waiting after this long (default: wait until the task is done).",
)
@click.option(
    "--traceback", "show_traceback", is_flag=True, help="Print a failed task's traceback."
)
@pass_state
def result(state: State, task_id: str, timeout: float | None, show_traceback: bool) -> None:
    """Wait for the task TASK_ID and print its result (as JSON when it can be).

    A failed or revoked task prints 'Error: <state>: <exception>' on stderr and exits 1.
    """
    from celeriac import states
    from celeriac.exceptions import TimeoutError

    found = state.app.AsyncResult(task_id)
    try:
        value = found.get(timeout=timeout, propagate=False)
    except TimeoutError:
        raise click.ClickException(
            f"timed out after {timeout:g} s: task {task_id} is {found.state}"
        ) from None
    if found.state in states.PROPAGATE_STATES:
        if show_traceback and found.traceback:
            click.echo(found.traceback.rstrip())
        raise click.ClickException(f"task {task_id} {found.state}: {_describe(value)}")
    click.echo(pretty(value))


def _describe(value: Any) -> str:
    if isinstance(value, BaseException):
        text = str(value)
        return f"{type(value).__name__}: {text}" if text else type(value).__name__
    return pretty(value)
