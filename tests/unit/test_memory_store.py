"""What the in-memory result store promises beyond the shared contract (module docstring)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from celeriac.backends.memory import MemoryStore, reset_stores, store_name
from celeriac.backends.urls import create_store
from celeriac.exceptions import DecodeError


@pytest.fixture
def name() -> Iterator[str]:
    value = f"unit-{uuid.uuid4().hex}"
    yield value
    reset_stores(value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("memory://", ""), ("cache+memory://", ""), ("memory://r/", "r"), ("memory://r?x=1", "r")],
)
def test_store_name(url: str, expected: str) -> None:
    assert store_name(url) == expected


def test_schemes_share_one_store_per_name(name: str) -> None:
    plain = create_store(f"memory://{name}")
    cache = create_store(f"cache+memory://{name}")
    assert isinstance(plain, MemoryStore) and isinstance(cache, MemoryStore)
    plain.set("k", b"v", None)
    assert cache.get("k") == b"v"
    assert MemoryStore(f"memory://{name}-other").get("k") is None


def test_reset_stores_drops_the_records(name: str) -> None:
    MemoryStore(f"memory://{name}").set("k", b"v", None)
    reset_stores(name)
    assert MemoryStore(f"memory://{name}").get("k") is None


def test_non_positive_expiry_means_never(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.set("zero", b"v", 0)
    store.set("negative", b"v", -1)
    store.set("soon", b"v", 0.05)
    assert store.wait_for_change("soon", b"v", 5.0) is None
    assert store.mget(["zero", "negative"]) == [b"v", b"v"]


def test_incr_keeps_the_expiry_unless_given(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.incr("n", 1, 0.2)
    store.incr("n", 1)  # keeps the 0.2 s expiry
    start = time.monotonic()
    assert store.wait_for_change("n", b"2", 5.0) is None
    assert time.monotonic() - start < 2.0
    store.incr("m", 1, 0.1)
    store.incr("m", 1, 3600)  # a given expiry replaces it
    assert store.wait_for_change("m", b"2", 0.3) == b"2"


def test_incr_of_a_non_integer_raises(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.set("k", b"not a number", None)
    with pytest.raises(DecodeError):
        store.incr("k")
    assert store.get("k") == b"not a number"


def test_wait_for_change_wakes_when_the_record_expires(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.set("k", b"v", 0.2)
    start = time.monotonic()
    assert store.wait_for_change("k", b"v", 10.0) is None
    assert 0.15 <= time.monotonic() - start < 2.0


def test_cleanup_counts_what_it_removed(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.set_many([("a", b"1", 0.05), ("b", b"2", 0.05), ("c", b"3", None)])
    time.sleep(0.1)  # a clock wait, not a synchronisation: no other thread is involved
    assert store.cleanup() == 2
    assert store.cleanup() == 0
    assert store.get("c") == b"3"


def test_values_are_stored_as_bytes(name: str) -> None:
    store = MemoryStore(f"memory://{name}")
    store.set("k", bytearray(b"v"), None)  # type: ignore[arg-type]
    assert type(store.get("k")) is bytes
    store.incr("n", 12)
    assert store.get("n") == b"12"
