"""Shared test fixtures: a fresh app per test, paths to the team's shared fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELERIAC_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture
def shared_dir() -> Path:
    return SHARED


@pytest.fixture
def app() -> Iterator[object]:
    """An app on a private in-memory broker and result store."""
    from celeriac import Celeriac

    name = f"test-{uuid.uuid4().hex[:8]}"
    application = Celeriac("tests", broker=f"memory://{name}", backend=f"memory://{name}")
    yield application
    application.close()


@pytest.fixture(autouse=True)
def _no_celeriac_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up the developer's CELERIAC_* environment."""
    for key in list(os.environ):
        if (
            key.startswith("CELERIAC_")
            and key != "CELERIAC_SHARED_DIR"
            and not key.startswith("CELERIAC_TEST_")
        ):
            monkeypatch.delenv(key)
