"""The wake-ups across processes of the SQLite drivers (``celeriac._internal.wake``).

Two ``WakeHub`` objects for one file stand for two processes: a hub knows only its own listeners
in memory, so one hub's ``notify`` reaches the other's listeners through the wake directory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac._internal.wake import (
    Listener,
    WakeHub,
    channel_of,
    message_channel,
    result_channel,
    sweep,
    wake_hub,
)

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="Unix sockets")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "broker.db"
    path.write_bytes(b"")
    return path


@pytest.fixture
def hubs(db: Path) -> Iterator[tuple[WakeHub, WakeHub]]:
    """(writer, listeners): as if in two processes."""
    writer, other = WakeHub(db), WakeHub(db)
    yield writer, other
    other.release()


def woken(listeners: list[Listener]) -> list[bool]:
    return [listener.wait(0.2) for listener in listeners]


def test_channels() -> None:
    assert message_channel("celery") == message_channel("celery") != message_channel("other")
    assert message_channel("celery").startswith("m") and len(message_channel("celery")) == 11
    assert result_channel("celery-task-meta-1").startswith("r")
    assert channel_of("m0123456789.1f.2.abcdef") == "m0123456789"


def test_the_directory_is_named_after_the_file_not_the_path(db: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.db"
    link.symlink_to(db)
    assert WakeHub(db).directory == WakeHub(link).directory
    assert WakeHub(db).directory != WakeHub(tmp_path / "missing.db").directory
    directory = WakeHub(db).directory
    assert directory is not None
    assert len(str(directory)) < 60  # socket addresses stay short, however long the path
    info = os.stat(directory.parent)
    assert info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def test_a_file_that_does_not_exist_yet_has_in_process_wakes_only(tmp_path: Path) -> None:
    hub = WakeHub(tmp_path / "later.db")
    with hub.listen(["m1"]) as listener:
        assert listener.names == []
        hub.notify({"m1": 1})
        assert listener.wait(5.0)


def test_wait_times_out_and_a_poke_ends_it(hubs: tuple[WakeHub, WakeHub]) -> None:
    _, hub = hubs
    with hub.listen(["m1"]) as listener:
        start = time.monotonic()
        assert not listener.wait(0.05)
        assert time.monotonic() - start >= 0.04
        threading.Timer(0.05, listener.poke).start()
        assert listener.wait(10.0)
        assert time.monotonic() - start < 5.0
        listener.poke()
        listener.poke()
        assert listener.wait(0)  # both pending wakes are read at once
        assert not listener.wait(0)


def test_notify_reaches_another_process_and_listening_ends_cleanly(
    hubs: tuple[WakeHub, WakeHub],
) -> None:
    writer, hub = hubs
    listener = hub.listen(["m1"])
    directory = hub.directory
    assert directory is not None
    assert sorted(os.listdir(directory)) == listener.names
    writer.notify({"m1": 1})
    assert listener.wait(5.0)
    writer.notify({"m1": 1})  # comes after the last wait: unused
    listener.close()
    assert listener.unused
    assert os.listdir(directory) == []
    writer.notify({"m1": 1})  # nobody listens: nothing happens, nothing raises


def test_a_count_wakes_that_many_listeners_and_none_wakes_all(
    hubs: tuple[WakeHub, WakeHub],
) -> None:
    writer, hub = hubs
    listeners = [hub.listen(["m1"]) for _ in range(4)]
    others = [hub.listen(["m2"])]
    try:
        writer.notify({"m1": 1})
        assert sum(woken(listeners)) == 1
        writer.notify({"m1": 2})
        assert sum(woken(listeners)) == 2
        writer.notify({"m1": None})
        assert woken(listeners) == [True] * 4
        assert woken(others) == [False]
    finally:
        for listener in listeners + others:
            listener.close()


def test_listeners_of_this_process_are_woken_first(db: Path) -> None:
    hub, other = WakeHub(db), WakeHub(db)
    here, there = hub.listen(["m1"]), other.listen(["m1"])
    try:
        hub.notify({"m1": 1})
        assert woken([here, there]) == [True, False]
    finally:
        here.close()
        there.close()


def test_one_socket_listens_on_several_channels(hubs: tuple[WakeHub, WakeHub]) -> None:
    writer, hub = hubs
    with hub.listen(["m1", "m2"]) as listener:
        assert [channel_of(name) for name in listener.names] == ["m1", "m2"]
        writer.notify({"m2": 1})
        assert listener.wait(5.0)
    directory = hub.directory
    assert directory is not None and os.listdir(directory) == []


def test_a_stale_socket_of_a_killed_process_is_removed_and_skipped(
    hubs: tuple[WakeHub, WakeHub],
) -> None:
    writer, hub = hubs
    directory = hub.directory
    assert directory is not None
    directory.mkdir(exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(directory / "m1.dead.1.000000"))
    dead.close()  # as a SIGKILL leaves it: the file stays, nobody reads
    with hub.listen(["m1"]) as listener:
        for _ in range(3):  # whatever the random order, the live one gets the wake
            writer.notify({"m1": 1})
            assert listener.wait(5.0)
        writer.notify({"m1": None})  # tries every socket: the stale one is removed
        assert listener.wait(5.0)
        assert os.listdir(directory) == listener.names


def test_in_process_only_listeners_make_no_file(hubs: tuple[WakeHub, WakeHub]) -> None:
    writer, hub = hubs
    with hub.listen(["m1"], remote=False) as listener:
        assert listener.names == []
        writer.notify({"m1": 1})
        assert not listener.wait(0.05)
        hub.notify({"m1": 1})
        assert listener.wait(5.0)


def test_wake_hub_is_one_per_file(db: Path) -> None:
    assert wake_hub(db) is wake_hub(db)


def test_release_removes_the_empty_directory(db: Path) -> None:
    hub = WakeHub(db)
    hub.listen(["m1"]).close()
    directory = hub.directory
    assert directory is not None and directory.exists()
    hub.release()
    assert not directory.exists()
    with hub.listen(["m1"]) as listener:  # made again when needed
        assert listener.names


def test_sweep_removes_stale_sockets_and_empty_directories(tmp_path: Path) -> None:
    """Once per process, for the directories of files no writer uses any more."""
    live_dir, gone_dir, empty_dir = (tmp_path / name for name in ("1.a", "1.b", "1.c"))
    for directory in (live_dir, gone_dir, empty_dir):
        directory.mkdir()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    live.bind(str(live_dir / "m1.1.1.aaaaaa"))
    live.setblocking(False)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(gone_dir / "m1.2.1.bbbbbb"))
    dead.close()
    try:
        sweep(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1.a"]
        assert os.listdir(live_dir) == ["m1.1.1.aaaaaa"]
        with pytest.raises(BlockingIOError):
            live.recv(8)  # looked at, not woken
    finally:
        live.close()
