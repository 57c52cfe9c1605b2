"""The ``celeriac`` command: ``celeriac [-A APP] [--workdir DIR] [--config MODULE] COMMAND ...``.

Commands: ``worker``, ``call``, ``result``, ``purge``, ``dlq``, ``demo``. ``-A`` also comes from the
environment variable ``CELERIAC_APP`` and ``--config`` from ``CELERIAC_CONFIG_MODULE``.

Errors a user can fix (a bad option, an app that cannot be found, an unknown setting, a broker
that refuses the connection) print one ``Error: ...`` line on stderr, never a traceback, and exit
with 2 for usage errors and 1 for the others.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from celeriac import __version__
from celeriac.cli.base import AppNotFound, State
from celeriac.cli.demo import demo
from celeriac.cli.dlq import dlq
from celeriac.cli.purge import purge
from celeriac.cli.tasks import call, result
from celeriac.cli.worker import worker
from celeriac.exceptions import CeleriacError

_NULL_HANDLER = logging.NullHandler()


def _error(message: str, code: int) -> int:
    first = " ".join(message.strip().split()) or "unknown error"
    click.echo(f"Error: {first}", err=True)
    return code


def _click_message(exc: click.ClickException, ctx: click.Context | None) -> str:
    message = exc.format_message()
    if isinstance(exc, click.UsageError) and not isinstance(exc, AppNotFound):
        where = exc.ctx or ctx
        command = where.command_path if where is not None else "celeriac"
        message = f"{message} (see '{command} --help')"
    return message


class CeleriacGroup(click.Group):
    """A click group whose errors are one line on stderr (see the module docstring)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._run(args, prog_name or "celeriac", complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self, args: Sequence[str] | None, prog_name: str, complete_var: str | None, **extra: Any
    ) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort:
            return _error("Aborted", 1)
        except click.ClickException as exc:
            context = click.get_current_context(silent=True)
            return _error(_click_message(exc, context), exc.exit_code)
        except CeleriacError as exc:
            return _error(f"{exc}" or type(exc).__name__, 1)
        except OSError as exc:
            return _error(f"{type(exc).__name__}: {exc}", 1)
        return rv if isinstance(rv, int) else 0


@click.group(cls=CeleriacGroup, context_settings={"max_content_width": 100})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CELERIAC_APP",
    metavar="APP",
    help="The app: 'proj', 'proj.tasks' or 'proj.tasks:app' (env CELERIAC_APP).",
)
@click.option(
    "--workdir",
    metavar="DIR",
    help="Change to this directory before loading the app.",
)
@click.option(
    "--config",
    metavar="MODULE",
    envvar="CELERIAC_CONFIG_MODULE",
    help="A configuration module to load into the app (env CELERIAC_CONFIG_MODULE).",
)
@click.version_option(
    __version__, "--version", prog_name="celeriac", message="%(prog)s %(version)s"
)
@click.pass_context
def main(ctx: click.Context, app_spec: str | None, workdir: str | None, config: str | None) -> None:
    """Celeriac: a distributed task queue with Celery's API and wire format.

    \b
    Try it with no server and no configuration:   celeriac demo
    Run a worker for the app in proj/tasks.py:     celeriac -A proj.tasks worker -l info
    """
    # Without this, Python's last-resort handler would print the drivers' warnings ("unreachable,
    # retrying") on top of the one-line error. ``worker`` and ``demo -v`` log through the root.
    logging.getLogger("celeriac").addHandler(_NULL_HANDLER)
    ctx.obj = State(app_spec=app_spec, workdir=workdir, config=config)


main.add_command(worker)
main.add_command(call)
main.add_command(result)
main.add_command(purge)
main.add_command(demo)
main.add_command(dlq)
