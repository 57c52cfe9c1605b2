"""Every captured fixture is tested, and every complete value in any fixture decodes.

* each ``.json`` file of both capture folders must be listed in ``golden_support.COVERAGE``
  with a test module that names it: a new capture fails here until a test covers it;
* ``_index.json`` lists exactly the files of its folder;
* a sweep over every string in every fixture: each complete kombu envelope parses, its body
  decodes and it rebuilds byte for byte; each result meta and ``unacked`` entry round-trips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from golden_support import (
    COVERAGE,
    VERSIONS,
    complete_json,
    fixture_files,
    is_envelope,
    load,
    open_envelope,
    walk_strings,
)

from celeriac.protocol.envelope import dumps_unacked, loads_unacked
from celeriac.protocol.message import decode
from celeriac.protocol.result_meta import meta_from_dict, meta_to_dict
from celeriac.protocol.serialization import json_dumps

HERE = Path(__file__).resolve().parent
PLACEHOLDERS = ("<venv>", "<python>", "<anchors-wire>")


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_every_fixture_file_has_a_test(version: str) -> None:
    missing = [name for name in fixture_files(version) if name not in COVERAGE]
    assert not missing, f"fixtures without a golden test (add them to COVERAGE): {missing}"


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_the_covering_module_names_the_file(name: str) -> None:
    source = (HERE / f"{COVERAGE[name]}.py").read_text(encoding="utf-8")
    assert f'"{name}"' in source, f"{COVERAGE[name]}.py does not test {name}"


def test_index_lists_the_folder(version: str) -> None:
    index = load(version, "_index.json")
    listed = sorted(entry["file"] for entry in index["files"])
    assert listed == [name for name in fixture_files(version) if name != "_index.json"]
    assert all(entry["call"] for entry in index["files"])


def check_envelope(path: str, parent: Any, text: str) -> None:
    envelope, body = open_envelope(text)
    message = envelope.message
    if "task" in message.headers or (isinstance(body, dict) and "task" in body and "id" in body):
        decode(message, accept=["json"])
    if isinstance(parent, dict) and isinstance(parent.get("decoded"), dict):
        decoded = parent["decoded"]
        assert decoded["headers"] == message.headers, path
        assert decoded["properties"]["delivery_tag"] == envelope.delivery_tag, path
        body_text = decoded.get("body_text", "")
        if not any(p in body_text for p in PLACEHOLDERS):
            assert body_text.encode() == message.body, path


def check_value(path: str, parent: Any, text: str) -> str | None:
    """Check one complete JSON value found in a fixture; returns what it was."""
    value = complete_json(text)
    if is_envelope(value):
        check_envelope(path, parent, text)
        return "envelope"
    if isinstance(value, dict) and {"status", "task_id"} <= set(value):
        assert json_dumps(meta_to_dict(meta_from_dict(value))) == text or "date_done" not in value
        return "meta"
    if isinstance(value, list) and len(value) == 3 and is_envelope(value[0]):
        assert dumps_unacked(*loads_unacked(text)) == text.encode(), path
        return "unacked"
    return None


def parents(obj: Any, path: str = "") -> dict[str, Any]:
    """Path of every string -> the object holding it (to find its ``decoded`` sibling)."""
    found: dict[str, Any] = {}
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for key, value in items:
        child = f"{path}.{key}" if isinstance(obj, dict) else f"{path}[{key}]"
        if isinstance(value, str):
            found[child] = obj
        else:
            found.update(parents(value, child))
    return found


def test_every_complete_value_decodes(version: str) -> None:
    kinds: dict[str, int] = {}
    for name in fixture_files(version):
        data = load(version, name)
        holders = parents(data)
        for path, text in walk_strings(data):
            kind = check_value(f"{name}{path}", holders.get(path), text)
            if kind:
                kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["envelope"] >= 50 and kinds["meta"] >= 30 and kinds["unacked"] >= 3, kinds
