"""``celeriac purge``: remove the waiting messages of the app's queues (or of ``-Q a,b``)."""

from __future__ import annotations

import click

from celeriac.cli.base import State, pass_state, split_queues


def default_queues(state: State) -> list[str]:
    """The queues a worker of the app consumes by default: ``task_queues``, else the default."""
    from celeriac.app.routing import known_queues

    conf = state.app.conf
    declared = known_queues(conf.task_queues)
    return sorted(declared) if declared else [str(conf.task_default_queue)]


def _confirm(question: str) -> None:
    """Ask on stderr; ``click.Abort`` unless the answer is yes (end of input counts as no)."""
    try:
        answer = click.confirm(question, err=True)
    except click.Abort:  # end of input: finish the prompt's line before the error line
        click.echo(err=True)
        raise
    if not answer:
        raise click.Abort()


@click.command(short_help="Remove the waiting messages of queues.")
@click.option(
    "-Q",
    "--queues",
    multiple=True,
    metavar="A,B",
    help="Purge these queues (default: task_queues, else task_default_queue).",
)
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def purge(state: State, queues: tuple[str, ...], force: bool) -> None:
    """Remove all messages waiting in the queues (ready and delayed ones; not those running).

    Asks for confirmation unless -f is given, and prints how many messages were removed.
    """
    names = split_queues(queues) or default_queues(state)
    listing = ", ".join(names)
    if not force:
        _confirm(f"Purge {len(names)} queue(s) ({listing})? Their waiting messages will be lost")
    transport = state.app.transport
    removed = sum(transport.purge(name) for name in names)
    noun = "message" if removed == 1 else "messages"
    click.echo(f"Purged {removed} {noun} from {len(names)} queue(s): {listing}")
