"""Task ids: random version-4 UUIDs as text, never repeated across threads or a fork."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from celeriac._internal import ids


def test_new_id_is_a_version_4_uuid_in_canonical_text() -> None:
    for _ in range(500):
        text = ids.new_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_new_ids_do_not_repeat_across_threads() -> None:
    seen: list[list[str]] = []
    start = threading.Barrier(4)

    def take() -> None:
        mine: list[str] = []
        start.wait()
        for _ in range(5_000):
            mine.append(ids.new_id())
        seen.append(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [text for mine in seen for text in mine]
    assert len(every) == 20_000
    assert len(set(every)) == 20_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_hand_out_its_parents_ready_ids() -> None:
    ids.new_id()  # the parent now holds ids made ahead
    ahead = list(ids._READY)
    assert ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, "\n".join(ids.new_id() for _ in range(len(ahead))).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    assert len(child) == len(ahead)
    assert not set(child) & set(ahead)
