"""Pure parts of the Redis drivers added for batching, fan-out and reconnecting: fan-out channel
names and patterns (kombu's), one script call per batch, reconnect options and ``Link``."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from celeriac.exceptions import OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.base import Delivery
from celeriac.transports.redis_client import Link
from celeriac.transports.redis_keys import (
    SETTLE_CHUNK,
    Core,
    Held,
    KeyIndex,
    KeyLayout,
    RedisOptions,
)


def layout(db: int = 0, **options: object) -> KeyLayout:
    return KeyLayout(RedisOptions.from_options(options, 60.0), db)


# -- fan-out names -----------------------------------------------------------------------------
def test_fanout_channels_and_patterns_are_kombus() -> None:
    keys = layout()
    # the fixture redis-keys-and-channels: PSUBSCRIBE /0.celery.pidbox, /0.celeryev/worker.*
    assert keys.fanout_pattern("celery.pidbox") == "/0.celery.pidbox"
    assert keys.fanout_pattern("celeryev", "worker.#") == "/0.celeryev/worker.*"
    assert keys.fanout_pattern("celeryev", "#") == "/0.celeryev/*"
    # the fixtures control-ping and event-task-sent: PUBLISH /0.celery.pidbox, /0.celeryev/task.sent
    assert keys.fanout_channel("celery.pidbox") == "/0.celery.pidbox"
    assert keys.fanout_channel("celeryev", "task.sent") == "/0.celeryev/task.sent"


def test_fanout_names_follow_db_prefix_and_options() -> None:
    assert layout(3, global_keyprefix="p:").fanout_channel("x", "rk") == "p:/3.x/rk"
    assert layout(fanout_prefix=False).fanout_channel("x", "rk") == "x/rk"
    assert layout(fanout_prefix="!").fanout_pattern("x", "#") == "!x/*"
    assert layout(fanout_patterns=False).fanout_channel("x", "rk") == "/0.x"
    assert layout(fanout_patterns=False).fanout_pattern("x", "a.#") == "/0.x"
    # the prefix and exchange are literal, glob characters of the binding key are kombu's
    assert layout(global_keyprefix="a*[").fanout_pattern("e?", "k.*") == "a\\*\\[/0.e\\?/k.*"


# -- batched settling --------------------------------------------------------------------------
def held(core: Core, tag: str, queue: str = "q", step: int = 0, lease: str = "L") -> Delivery:
    keys = core.keys
    handle = Held(keys.list_key(queue, step), keys.held_key(queue), step, b"{}", lease)
    return Delivery(tag, queue, RawMessage(b""), 1, False, handle)


def test_ack_of_many_tags_is_one_script_call_naming_each_key_once() -> None:
    core = Core("redis://localhost/0", 60.0, {"global_keyprefix": "p:"})
    deliveries = [held(core, f"t{i}", queue=f"q{i % 3}") for i in range(50)]
    stranger = Delivery("x", "q", RawMessage(b""))  # not ours: ignored
    [(name, keys, args)] = core.ack_calls([*deliveries, stranger])
    assert name == "release"
    assert keys == [
        "p:unacked",
        "p:unacked_index",
        "p:celeriac.deliveries",
        "p:celeriac.dead_letters.index",
        "p:q0\x06\x16celeriac.held",
        "p:q1\x06\x16celeriac.held",
        "p:q2\x06\x16celeriac.held",
    ]
    assert args[0] == "ack" and len(args) == 1 + 3 * 50
    assert args[1:7] == ["t0", "L", 5, "t1", "L", 6]


def test_batches_are_chunked_and_requeue_keeps_order() -> None:
    core = Core("redis://localhost/0", 60.0, {})
    many = [held(core, f"t{i}") for i in range(SETTLE_CHUNK + 1)]
    assert [len(c[2]) for c in core.ack_calls(many)] == [1 + 3 * SETTLE_CHUNK, 1 + 3]
    assert [len(c[2]) for c in core.renew_calls(many)] == [1 + 3 * SETTLE_CHUNK, 1 + 3]
    pair = [held(core, "a", step=0), held(core, "b", step=1)]
    [(_, keys, args)] = core.requeue_calls(pair)
    # reversed, each RPUSHed to the consuming end of its own list: "a" is the next out
    assert args[0] == "requeue" and args[1::6] == ["b", "a"]
    assert [keys[i - 1] for i in args[4::6]] == ["q\x06\x163", "q"]


def test_key_index() -> None:
    index = KeyIndex(["a", "b"])
    assert (index.index("b"), index.index("c"), index.index("c")) == (2, 3, 3)
    assert index.keys == ["a", "b", "c"]


# -- reconnect options and Link ----------------------------------------------------------------
def test_reconnect_options_at_top_level_or_in_retry_policy() -> None:
    opts = RedisOptions.from_options({}, 60.0)
    assert (opts.max_retries, opts.interval_start, opts.interval_max) == (3, 0.05, 2.0)
    assert opts.connect_retries_timeout == 20.0
    opts = RedisOptions.from_options(
        {"interval_max": 1.0, "retry_policy": {"max_retries": 0, "connect_retries_timeout": 5}},
        60.0,
    )
    assert (opts.max_retries, opts.interval_max, opts.connect_retries_timeout) == (0, 1.0, 5.0)


def test_link_backs_off_gives_up_after_the_window_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="celeriac.transports.redis")
    link = Link("redis://h", start=0.1, step=0.5, cap=1.0, window=3.0)
    lost = redis.ConnectionError("refused")
    assert [link.lost("fetch", lost, t) for t in (0.0, 0.1, 0.7)] == [0.1, 0.6, 1.0]
    with pytest.raises(OperationalError, match=r"unreachable for 2\.5 s"):
        link.lost("fetch", lost, 2.5)
    with pytest.raises(OperationalError):  # still down: one attempt, then raise
        link.lost("ack", lost, 9.0)
    link.ok(10.0)
    link.ok(11.0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "unreachable" in messages[0] and "reachable again after 10.0 s" in messages[1]
    assert link.lost("fetch", redis.TimeoutError("slow"), 20.0) == 0.1  # a new outage


@pytest.mark.parametrize(
    "error",
    [redis.ResponseError("WRONGTYPE"), redis.AuthenticationError("bad password")],
)
def test_link_raises_at_once_for_errors_no_retry_fixes(error: Exception) -> None:
    link = Link("redis://h", start=0.1, step=0.5, cap=1.0, window=3.0)
    with pytest.raises(OperationalError):
        link.lost("publish", error, 0.0)
    assert link.down_since is None


def test_a_fetch_after_a_take_that_came_up_short_waits_first() -> None:
    """After a take that got fewer messages than it asked for (every list was empty), the
    next fetch on the same queues waits (with the take behind the wait) instead of taking."""
    core = Core("redis://localhost/0", 60.0, {"poll_interval": 1.0})
    empty = ["-1"]
    core.parse_take(["q"], empty, "lease", limit=8)
    assert core.wait_first(["q"], 5.0, False) == 1.0  # at most poll_interval
    assert core.wait_first(["q"], 5.0, False) is None  # once
    core.parse_take(["q"], ["-1"], "lease", limit=0)  # a full take: take again at once
    assert core.wait_first(["q"], 5.0, False) is None
    core.parse_take(["q"], empty, "lease", limit=8)
    assert core.wait_first(["other"], 5.0, False) is None  # other queues: take first
    core.parse_take(["q"], empty, "lease", limit=8)
    assert core.wait_first(["q"], 5.0, True) is None  # woken: return, no wait
    core.parse_take(["q"], [repr(time.time() + 0.2)], "lease", limit=8)
    wait = core.wait_first(["q"], 5.0, False)
    assert wait is not None and wait <= 0.2  # no later than the next delayed message
    core.parse_take(["q"], empty, "lease", limit=8)
    assert core.emptied is not None
    queues, due, _ = core.emptied
    core.emptied = (queues, due, time.monotonic() - 1.0)  # the worker paused (no room) since
    assert core.wait_first(["q"], 5.0, False) is None  # take first: other lists may have work
