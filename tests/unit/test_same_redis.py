"""``same_redis``: whether two Redis URLs name one server, database and user."""

from __future__ import annotations

import pytest

from celeriac._internal.urls import same_redis


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("redis://localhost:6379/0", "redis://localhost/0", True),
        ("redis://localhost/0", "redis://localhost", True),
        ("redis://h:6379/0", "redis://h:6379/1", False),
        ("redis://h:6379/0", "redis://h:6380/0", False),
        ("redis://h/0", "redis://other/0", False),
        ("redis://:pw@h/0", "redis://h/0", False),
        ("redis://:pw@h/0", "redis://:pw@h/0", True),
        ("redis://h/0", "rediss://h/0", False),
        ("redis+socket:///tmp/r.sock?virtual_host=2", "redis+socket:///tmp/r.sock?db=2", True),
        ("redis+socket:///tmp/r.sock", "redis+socket:///tmp/other.sock", False),
        ("sentinel://h:26379/0", "sentinel://h:26379/0", False),
        ("sqlite:///x.db", "sqlite:///x.db", False),
    ],
)
def test_same_redis(a: str, b: str, same: bool) -> None:
    assert same_redis(a, b) is same
