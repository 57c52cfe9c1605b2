"""Pure helpers of the SQLite drivers: URLs, reasons, backoff, flags, row decoding, busy errors.

The wake-ups across processes are tested in test_sqlite_wake.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from celeriac._internal.sqlite import flag
from celeriac.exceptions import ImproperlyConfigured
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.sqlite import (
    DEFAULT_FILENAME,
    backoff,
    decode_row,
    is_busy,
    one_line,
    sqlite_path,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://", Path(DEFAULT_FILENAME)),
        ("sqlite:///", Path(DEFAULT_FILENAME)),
        ("sqlite:///celeriac.db", Path("celeriac.db")),
        ("sqlite:///data/queue.db", Path("data/queue.db")),
        ("sqlite:////var/lib/celeriac/q.db", Path("/var/lib/celeriac/q.db")),
        ("SQLITE:////tmp/x.db", Path("/tmp/x.db")),
        ("db+sqlite:////tmp/results.db", Path("/tmp/results.db")),
        ("sqlite:///with%20space.db", Path("with space.db")),
    ],
)
def test_sqlite_path(url: str, expected: Path) -> None:
    assert sqlite_path(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://localhost/0", "not a sqlite"),
        ("/tmp/x.db", "not a sqlite"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?timeout=3", "query string"),
        ("sqlite:///:memory:", "cannot be shared"),
    ],
)
def test_sqlite_path_refuses(url: str, complaint: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=complaint):
        sqlite_path(url)


def test_one_line() -> None:
    assert one_line("boom:\nTraceback\r\n  line 1\n") == "boom: Traceback   line 1"
    long = one_line("x" * 5000)
    assert len(long) == 1000 and long.endswith("…")
    assert one_line("abc", limit=2) == "a…"


def test_backoff_doubles_within_bounds() -> None:
    delays = [0.005]
    for _ in range(10):
        delays.append(backoff(delays[-1], 0.005, 0.2))
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert max(delays) == 0.2 and delays[-1] == 0.2
    assert backoff(0.0, 0.005, 0.2) == 0.005


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (0, False),
        (1, True),
        ("false", False),
        ("Off", False),
        ("0", False),
        ("no", False),
        ("", False),
        ("yes", True),
        ("true", True),
    ],
)
def test_flag(value: object, expected: bool) -> None:
    assert flag(value) is expected


def test_decode_row_round_trip() -> None:
    row = (b"application/json", b"utf-8", b'{"id": "t1"}', b'{"priority": 3}', b"[1]")
    assert decode_row(row) == RawMessage(
        b"[1]", "application/json", "utf-8", {"id": "t1"}, {"priority": 3}
    )
    # TEXT where bytes were expected is accepted
    assert decode_row(("a/b", "utf-8", "{}", "{}", "text body")).body == b"text body"


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ((b"a/b", b"utf-8", b"{not json", b"{}", b""), "headers"),
        ((b"a/b", b"utf-8", b"[1, 2]", b"{}", b""), "headers"),
        ((b"a/b", b"utf-8", b"\xff\xfe", b"{}", b""), "headers"),
        ((b"a/b", b"utf-8", b"{}", b"null", b""), "properties"),
        ((b"\xff", b"utf-8", b"{}", b"{}", b""), "content_type"),
        ((b"a/b", b"utf-8", b"{}", b"{}", None), "body"),
    ],
)
def test_decode_row_names_the_corrupt_column(row: tuple[object, ...], column: str) -> None:
    with pytest.raises(ValueError, match=f"undecodable {column}"):
        decode_row(row)


def test_is_busy() -> None:
    assert is_busy(sqlite3.OperationalError("database is locked"))
    assert is_busy(sqlite3.OperationalError("database table is locked: t"))
    assert not is_busy(sqlite3.OperationalError("no such table: x"))
    coded = sqlite3.OperationalError("whatever")
    coded.sqlite_errorcode = 5 | (2 << 8)  # SQLITE_BUSY_SNAPSHOT
    assert is_busy(coded)
    coded.sqlite_errorcode = 1
    assert not is_busy(coded)
