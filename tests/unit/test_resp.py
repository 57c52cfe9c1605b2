"""RESP packing: the same bytes as hiredis for short and long commands."""

from __future__ import annotations

import random

import hiredis
import pytest

from celeriac._internal import resp

VALUES: list[object] = [
    b"x",
    b"",
    "\u00e9t\u00e9",
    "a" * 300,
    3,
    -7,
    2**70,
    1.5,
    0.1,
    1e20,
    1733250000.123456,
]


@pytest.mark.parametrize("length", [1, 2, 10, resp.SHORT, resp.SHORT + 1, 500])
def test_pack_command_matches_hiredis(length: int) -> None:
    rng = random.Random(length)
    for _ in range(20):
        args = ("LPUSH", *(rng.choice(VALUES) for _ in range(length)))
        assert resp.pack_command(args) == hiredis.pack_command(args)


def test_pack_joins_commands_in_order() -> None:
    long = ("LPUSH", "q", *[b"m" * 1300] * 200)
    short = ("SADD", "k", "v")
    assert resp.pack([short, long, short]) == b"".join(
        hiredis.pack_command(c) for c in (short, long, short)
    )


def test_many_small_arguments_and_a_few_large_ones_pack_alike() -> None:
    many_small = ("EVALSHA", "sha", 2, *[b"v" * 40] * 300)
    large = ("LPUSH", "q", *[b"m" * 1300] * 200)
    assert resp._size(many_small) < resp.LARGE < resp._size(large)
    for args in (many_small, large):
        assert resp.pack_command(args) == hiredis.pack_command(args)


def test_a_memoryview_or_bytearray_is_sent_as_its_bytes() -> None:
    args = ("SET", *[bytearray(b"a" * 1000)] * (resp.SHORT + 1), "x" * resp.LARGE)
    assert resp.pack_command(args).count(b"$1000\r\n" + b"a" * 1000) == resp.SHORT + 1


@pytest.mark.parametrize("bad", [True, None, object()])
def test_an_argument_of_another_type_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="must be str, int, float or bytes"):
        resp.pack_command(("SET", *[bad] * (resp.SHORT + 1), "x" * resp.LARGE))
