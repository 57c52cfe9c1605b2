"""``result_backend_transport_options={'global_keyprefix': ...}`` given the same on both sides.

Celery builds its result keys as ``<prefix><sep>celery-task-meta-<id>``: Celery 5.7 puts ``_``
as ``<sep>`` unless the prefix already ends with one of ``:_-.`` (celery/celery#9080); Celery
5.3 always puts ``_``. So a prefix that does not end with a separator means the same keys for
both (``myapp`` -> ``myapp_celery-task-meta-<id>``), and ``myapp:`` means
``myapp:celery-task-meta-<id>`` for 5.7 but ``myapp:_celery-task-meta-<id>`` for 5.3 (those two
Celery versions cannot share results with such a prefix; Celeriac follows 5.7, and the 5.3
combination is not tested).

No worker is needed: one side writes a record through its own backend, the other reads it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fleet import Fleet
from interop_support import VERSIONS, celery_env

pytestmark = [pytest.mark.timeout(60)]

CASES = [
    pytest.param(
        "plain",
        version,
        id=f"plain-celery{version}",
    )
    for version in VERSIONS
] + [pytest.param("colon", "5.x", id="colon-celery5.x")]


@pytest.mark.parametrize(("form", "version"), CASES)
def test_same_option_same_keys(
    form: str, version: str, interop_redis: Any, run_id: str, interop_logs: Path
) -> None:
    celery_env(version)
    name = f"keyprefix-{form}-{uuid.uuid4().hex[:6]}"
    base = f"interop-{run_id}-{name}"
    option = base if form == "plain" else base + ":"
    fleet = Fleet(
        name, run_id, interop_redis, celery_env, interop_logs, result_prefixes=(option, option)
    )
    try:
        celery = fleet.celery_client(version)
        celeriac = fleet.celeriac_client(version)
        from_celery = str(uuid.uuid4())
        key = celery.agent.request("store", id=from_celery, value={"from": "celery"})["key"]
        assert key.startswith(base), key
        assert celeriac.state(from_celery) == ("SUCCESS", {"from": "celery"}), (
            f"Celeriac does not read {key!r}; it has {fleet.all_keys()}"
        )
        from_celeriac = str(uuid.uuid4())
        from celeriac.protocol.result_meta import ResultMeta

        celeriac.app.backend.store_result(
            ResultMeta(task_id=from_celeriac, status="SUCCESS", result=[1, 2], children=[])
        )
        assert celery.state(from_celeriac) == ("SUCCESS", [1, 2]), (
            f"Celery does not read what Celeriac wrote: {fleet.all_keys()}"
        )
    finally:
        fleet.close()
