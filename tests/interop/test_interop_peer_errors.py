"""What a Celeriac worker says when a Celery peer sends something that does not fit.

A Celery client can put anything in a task header: ``apply_async(headers=...)`` is merged over
Celery's own keys. The Celeriac worker dead-letters such a message; its reason must name the
field, and the peer that sent it (the ``origin`` and ``lang`` headers: Celery does not put its
version in task messages, so ``origin`` is the only handle on the sender).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fleet import Fleet, wait_until
from interop_support import VERSION_IDS, VERSIONS, celery_env

pytestmark = [pytest.mark.timeout(90)]


def dead_letter_of(fleet: Fleet, task_id: str, timeout: float = 15.0) -> Any:
    transport = fleet.celeriac_client(None).app.transport

    def find() -> Any:
        for letter in transport.dead_letters(limit=1000):
            if letter.message.headers.get("id") == task_id:
                return letter
        return None

    return wait_until(find, timeout, f"dead letter of {task_id}", fleet.diagnostics)


BAD_HEADERS = [("eta", "not a date"), ("retries", "three"), ("timelimit", "soon")]


def send_bad(fleet: Fleet, version: str, field: str, value: str) -> Any:
    celery_env(version)
    fleet.celeriac_worker()
    client = fleet.celery_client(version)
    task_id = client.call("interop.add", [1, 2], headers={field: value})
    letter = dead_letter_of(fleet, task_id)
    origin = letter.message.headers.get("origin")
    assert isinstance(origin, str) and origin.startswith("gen"), letter.message.headers
    return letter


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
@pytest.mark.parametrize(("field", "value"), BAD_HEADERS)
def test_bad_header_is_dead_lettered_naming_the_field(
    fleet: Fleet, version: str, field: str, value: str
) -> None:
    letter = send_bad(fleet, version, field, value)
    assert f"field {field!r}" in letter.reason, letter.reason


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_bad_header_reason_names_the_sender(fleet: Fleet, version: str) -> None:
    letter = send_bad(fleet, version, "retries", "three")
    headers = letter.message.headers
    assert headers["origin"] in letter.reason, letter.reason
    assert f"lang {headers['lang']}" in letter.reason, letter.reason


@pytest.mark.parametrize("version", VERSIONS, ids=VERSION_IDS)
def test_unknown_task_dead_letter_names_sender(fleet: Fleet, version: str) -> None:
    celery_env(version)
    fleet.celeriac_worker()
    client = fleet.celery_client(version)
    name = f"interop.unknown_{uuid.uuid4().hex[:6]}"
    task_id = client.call(name, [], how="send_task")
    letter = dead_letter_of(fleet, task_id)
    assert name in letter.reason, letter.reason
