"""Import time of a package, each sample in a fresh interpreter.

``measure(statement)`` runs ``python -c`` with a timer around ``statement`` (interpreter start
is not counted) and returns seconds, and whether redis-py got imported on the way.
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
}


def measure(statement: str, env: dict[str, str], cwd: str) -> dict[str, float | bool]:
    code = _TEMPLATE.format(statement=statement)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, float | bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result
