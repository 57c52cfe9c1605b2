"""Import time of a package, each sample in a fresh interpreter.

``measure(statement)`` runs ``python -c`` with a timer around ``statement`` (interpreter start
is not counted) and returns seconds, and whether redis-py got imported on the way.

Bytecode is allowed (``PYTHONDONTWRITEBYTECODE`` is removed from the environment) and
``warm_up`` imports each statement once before the samples, so every package is timed as a user
meets it after installing: from ``.pyc`` files (pip compiles a wheel's modules; an editable
install gets them on first import). Without this an editable Celeriac would be timed compiling
its sources while Celery loads compiled bytecode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_TEMPLATE = """
import sys, time, json
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "redis_loaded": "redis" in sys.modules}}))
"""

#: what is timed, per framework: the package with its app class, and the benchmark's task module
STATEMENTS = {
    "celeriac": {
        "pkg": "import celeriac; celeriac.Celeriac",
        "app": "import bench.apps.celeriac_app",
    },
    "celery": {
        "pkg": "import celery; celery.Celery",
        "app": "import bench.apps.celery_app",
    },
    "huey": {
        "pkg": "import huey; huey.RedisHuey",
        "app": "import bench.apps.huey_app",
    },
    "dramatiq": {
        "pkg": "import dramatiq; from dramatiq.brokers.redis import RedisBroker",
        "app": "import bench.apps.dramatiq_app",
    },
    "rq": {  # RQ's jobs are plain functions: their module alone would not import rq at all
        "pkg": "import rq; rq.Queue",
        "app": "import rq, bench.apps.rq_app",
    },
    "arq": {
        "pkg": "import arq; arq.create_pool",
        "app": "import bench.apps.arq_app",
    },
    "taskiq": {
        "pkg": "import taskiq, taskiq_redis; taskiq_redis.ListQueueBroker",
        "app": "import bench.apps.taskiq_app",
    },
}


def _environment(env: dict[str, str]) -> dict[str, str]:
    merged = {**os.environ, **env}
    merged.pop("PYTHONDONTWRITEBYTECODE", None)
    return merged


def warm_up(statement: str, env: dict[str, str], cwd: str) -> None:
    """Import once, unmeasured, so the samples load bytecode as an installed package does."""
    measure(statement, env, cwd)


def measure(statement: str, env: dict[str, str], cwd: str) -> dict[str, float | bool]:
    code = _TEMPLATE.format(statement=statement)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_environment(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, float | bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
