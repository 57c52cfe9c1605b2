"""``celeriac worker``: print the banner and run a worker until SIGTERM/SIGINT.

The options are Celery's. ``-c``, ``-P``, ``--prefetch-multiplier``, ``--time-limit``,
``--soft-time-limit``, ``--max-tasks-per-child`` and ``--max-memory-per-child`` override the
settings ``worker_concurrency``, ``worker_pool``, ``worker_prefetch_multiplier``,
``task_time_limit``, ``task_soft_time_limit``, ``worker_max_tasks_per_child`` and
``worker_max_memory_per_child``; ``--autoscale=MAX,MIN`` sizes the prefork pool with the load.
The log goes to stderr in ``worker_log_format`` (unless ``worker_hijack_root_logger`` is False);
the banner to stdout.
"""

from __future__ import annotations

import click

from celeriac.cli.base import State, pass_state, split_queues

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")
POOLS = ("solo", "threads", "asyncio", "prefork")


@click.command(short_help="Run a worker.")
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1), help="Tasks run at once (default: CPUs)."
)
@click.option("-P", "--pool", type=click.Choice(POOLS), help="Execution pool (default: threads).")
@click.option(
    "-Q",
    "--queues",
    multiple=True,
    metavar="A,B",
    help="Consume these queues (default: task_default_queue).",
)
@click.option("-n", "--hostname", metavar="NAME", help="Node name; %h, %n, %d are expanded.")
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="WARNING",
    show_default=True,
    help="Logging level.",
)
@click.option("--time-limit", type=float, metavar="SECONDS", help="Hard time limit of a task.")
@click.option("--soft-time-limit", type=float, metavar="SECONDS", help="Soft time limit.")
@click.option(
    "--prefetch-multiplier",
    type=click.IntRange(min=0),
    help="Messages reserved per pool slot (default: 4; 0: no limit).",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    help="Replace a pool process after this many tasks (prefork).",
)
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(min=1),
    metavar="KIB",
    help="Replace a pool process whose resident memory exceeds this many KiB (prefork).",
)
@click.option("--autoscale", metavar="MAX,MIN", help="Grow and shrink the prefork pool.")
@click.option(
    "-E", "--task-events", is_flag=True, help="Accepted for Celery compatibility; no effect yet."
)
@pass_state
def worker(
    state: State,
    concurrency: int | None,
    pool: str | None,
    queues: tuple[str, ...],
    hostname: str | None,
    loglevel: str,
    time_limit: float | None,
    soft_time_limit: float | None,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    autoscale: str | None,
    task_events: bool,
) -> int:
    """Run a worker: consume the app's queues and run its tasks until stopped.

    The first SIGTERM or Ctrl-C is a warm shutdown (running tasks finish, reserved ones go back to
    the queue); the second is a cold shutdown.
    """
    from celeriac.app.log import setup_logging
    from celeriac.worker.main import Worker

    app = state.app
    limits = {"task_time_limit": time_limit, "task_soft_time_limit": soft_time_limit}
    app.conf.update({name: value for name, value in limits.items() if value is not None})
    node = Worker(
        app,
        hostname=hostname,
        concurrency=concurrency,
        pool=pool,
        queues=split_queues(queues) or None,
        prefetch_multiplier=prefetch_multiplier,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        autoscale=autoscale,
    )
    if app.conf.worker_hijack_root_logger:
        conf = app.conf
        setup_logging(loglevel.upper(), conf.worker_log_format, conf.worker_task_log_format)
    click.echo(node.banner())
    code: int = node.run()
    return code
