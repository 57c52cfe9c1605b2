"""Pure parts of the Redis transport: URLs, options, kombu's key layout and priority steps."""

from __future__ import annotations

import json

import pytest

from celeriac.exceptions import ImproperlyConfigured
from celeriac.transports.redis_keys import (
    KeyLayout,
    RedisOptions,
    block_seconds,
    delayed_member,
    parse_unacked_value,
    parse_url,
    split_delayed_member,
    unacked_value,
)


def layout(**options: object) -> KeyLayout:
    return KeyLayout(RedisOptions.from_options(options, 60.0))


@pytest.mark.parametrize(
    ("priority", "key"),
    [
        (0, "q"),
        (2, "q"),
        (3, "q\x06\x163"),
        (5, "q\x06\x163"),
        (8, "q\x06\x166"),
        (9, "q\x06\x169"),
        (42, "q\x06\x169"),
        (-1, "q"),
    ],
)
def test_priority_steps_round_down_like_kombu(priority: int, key: str) -> None:
    keys = layout()
    assert keys.list_key("q", keys.step_index(priority)) == key


def test_layout_with_prefix_and_custom_options() -> None:
    keys = layout(global_keyprefix="p:", priority_steps=[0, 5], sep=":", unacked_key="u")
    assert keys.list_keys("q") == ["p:q", "p:q:5"]
    assert keys.unacked == "p:u"
    assert keys.unacked_index == "p:unacked_index"
    assert keys.binding_key("q") == "p:_kombu.binding.q"
    assert keys.delayed_key("q") == "p:q:celeriac.delayed"
    assert keys.fanout_channel("celeryev", "task.sent") == "p:/0.celeryev/task.sent"


def test_options_defaults_and_validation() -> None:
    opts = RedisOptions.from_options({}, 60.0)
    assert opts.visibility_timeout == 60.0
    assert opts.priority_steps == (0, 3, 6, 9)
    assert RedisOptions.from_options({"visibility_timeout": 10}, 60.0).visibility_timeout == 10
    with pytest.raises(ImproperlyConfigured):
        RedisOptions.from_options({"visibility_timeout": 0}, 60.0)
    with pytest.raises(ImproperlyConfigured):
        RedisOptions.from_options({"priority_steps": [1, 2]}, 60.0)


def test_unacked_value_is_kombus_shape() -> None:
    envelope = '{"body": "eA==", "properties": {"delivery_tag": "t"}}'
    value = unacked_value(envelope, "", "celery")
    assert json.loads(value) == [json.loads(envelope), "", "celery"]
    parsed, exchange, routing_key = parse_unacked_value(value)
    assert (parsed["body"], exchange, routing_key) == ("eA==", "", "celery")


def test_delayed_member_round_trip() -> None:
    assert split_delayed_member(delayed_member(2, b'{"a": "|"}')) == (2, b'{"a": "|"}')


@pytest.mark.parametrize(
    ("url", "client_url", "db"),
    [
        ("redis://localhost", "redis://localhost", 0),
        ("redis://:secret@host:6380/3", "redis://:secret@host:6380/3", 3),
        ("rediss://user:pw@host/2?ssl_cert_reqs=required", None, 2),
        ("redis+socket:///tmp/r.sock?virtual_host=4", "unix:///tmp/r.sock?db=4", 4),
    ],
)
def test_parse_url(url: str, client_url: str | None, db: int) -> None:
    parsed = parse_url(url)
    assert parsed.db == db
    assert parsed.client_url == (client_url or url)


def test_parse_sentinel_url() -> None:
    parsed = parse_url("sentinel://:pw@s1:26379/2;sentinel://s2:26380")
    assert parsed.client_url is None
    assert parsed.sentinels == (("s1", 26379), ("s2", 26380))
    assert (parsed.db, parsed.password) == (2, "pw")


def test_block_seconds_is_bounded_by_timeout_poll_and_next_due() -> None:
    opts = RedisOptions.from_options({"poll_interval": 1.0}, 60.0)
    assert block_seconds(5.0, opts, None, 100.0) == 1.0
    assert block_seconds(0.2, opts, None, 100.0) == pytest.approx(0.2)
    assert block_seconds(5.0, opts, 100.3, 100.0) == pytest.approx(0.3)
    assert block_seconds(5.0, opts, 99.0, 100.0) > 0
