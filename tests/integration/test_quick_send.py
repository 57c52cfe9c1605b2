"""``delay()``'s quick path on Redis (``app.quick_send``): the same bytes as the full path.

Each envelope rendered from a task's template is compared with what ``prepare`` + ``encode`` +
``dumps_envelope`` give for the same id, arguments and delivery tag, over many argument shapes;
every case that must take the full path is checked to take it; a change of settings is seen.
"""

from __future__ import annotations

import json
import os
import random
import threading
from typing import Any

import pytest

from celeriac import Celeriac, signals
from celeriac.app.quick_send import quick_send
from celeriac.protocol.envelope import dumps_envelope, loads_envelope

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


@pytest.fixture
def app(redis_app: Celeriac) -> Celeriac:
    return redis_app


def full_path(app: Celeriac, task: Any, task_id: str, args: Any, kwargs: Any, tag: str) -> bytes:
    publication = app.prepare(task.name, args, kwargs, task=task, task_id=task_id)
    raw = app.encode(publication.message)
    return dumps_envelope(raw, routing_key=publication.queue, delivery_tag=tag)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "none", "bool", "big"]
    if depth < 2:
        kinds += ["list", "dict"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(10**6), 10**6)
    if kind == "big":
        return rng.randint(10**18, 10**30)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "str":
        return "".join(rng.choice("ab'\"\\\n\u00e9\u4e2d{}%x ") for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    return None


def test_rendered_envelopes_are_the_full_paths_bytes(app: Celeriac) -> None:
    @app.task(name="quick.any")
    def anything(*args: Any, **kwargs: Any) -> None:
        return None

    rng = random.Random(8)
    shapes = [((), {}), ((1, 2), {}), ((), {"x": 1}), (("a" * 2000,), {}), ((1,), {"y": "z"})]
    shapes += [
        (
            tuple(random_value(rng) for _ in range(rng.randint(0, 4))),
            {f"kw{i}": random_value(rng) for i in range(rng.randint(0, 3))},
        )
        for _ in range(300)
    ]
    for args, kwargs in shapes:
        quick = quick_send(app, anything.name, anything, args, kwargs)
        assert quick is not None
        task_id, _, payload = quick
        tag = json.loads(payload)["properties"]["delivery_tag"]
        assert payload == full_path(app, anything, task_id, args, kwargs, tag), (args, kwargs)


def test_a_name_with_format_characters_renders_as_the_full_path(app: Celeriac) -> None:
    """The template is split once into a ``%`` format: literal ``%`` and ``{}`` must stay."""

    @app.task(name="quick.100%s{0}%%d", queue="q%s{x}%")
    def odd(*args: Any, **kwargs: Any) -> None:
        return None

    for args, kwargs in [((), {}), ((1, "%s"), {"k": "{0}%%"})]:
        quick = quick_send(app, odd.name, odd, args, kwargs)
        assert quick is not None
        task_id, _, payload = quick
        tag = json.loads(payload)["properties"]["delivery_tag"]
        assert payload == full_path(app, odd, task_id, args, kwargs, tag)
        assert json.loads(payload)["headers"]["task"] == "quick.100%s{0}%%d"


def test_delay_sends_through_the_quick_path_and_the_message_reads_back(
    app: Celeriac, client: Any, prefix: str
) -> None:
    @app.task(name="quick.add")
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert ("quick.add", False) in app._quick_entries
    (raw,) = client.lrange(f"{prefix}celery", 0, -1)
    envelope = loads_envelope(raw)
    assert envelope.message.headers["id"] == result.id
    assert envelope.message.headers["argsrepr"] == "(2, 3)"
    assert json.loads(envelope.message.body) == [[2, 3], {}, {
        "callbacks": None, "errbacks": None, "chain": None, "chord": None,
    }]  # fmt: skip


def test_each_thread_has_its_own_reply_to(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="quick.noop")
    def noop() -> None:
        return None

    noop.delay()
    other = threading.Thread(target=noop.delay)
    other.start()
    other.join()
    sent = client.lrange(f"{prefix}celery", 0, -1)
    replies = {loads_envelope(r).message.properties["reply_to"] for r in sent}
    assert len(replies) == 2


def test_what_could_change_the_message_takes_the_full_path(app: Celeriac) -> None:
    @app.task(name="quick.plain")
    def plain() -> None:
        return None

    @app.task(name="quick.expiring", expires=60)
    def expiring() -> None:
        return None

    @app.task(name="quick.compressed", compression="zlib")
    def compressed() -> None:
        return None

    @app.task(name="quick.msgpack", serializer="msgpack")
    def packed() -> None:
        return None

    assert quick_send(app, plain.name, plain, (), {}) is not None
    assert quick_send(app, expiring.name, expiring, (), {}) is None
    assert quick_send(app, compressed.name, compressed, (), {}) is None
    assert quick_send(app, packed.name, packed, (), {}) is None
    assert quick_send(app, plain.name, plain, "not a tuple", {}) is None

    def receiver(**_: Any) -> None:
        return None

    signals.before_task_publish.connect(receiver)
    try:
        assert quick_send(app, plain.name, plain, (), {}) is None
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert quick_send(app, plain.name, plain, (), {}) is not None

    app.conf.task_routes = {"quick.*": {"queue": "elsewhere"}}
    assert quick_send(app, plain.name, plain, (), {}) is None


def test_a_settings_change_is_seen_by_the_next_delay(
    app: Celeriac, client: Any, prefix: str
) -> None:
    @app.task(name="quick.moved")
    def moved() -> None:
        return None

    moved.delay()
    app.conf.task_default_queue = "other"
    app.conf.task_default_priority = 3
    moved.delay()
    assert client.llen(f"{prefix}celery") == 1
    (raw,) = client.lrange(f"{prefix}other\x06\x163", 0, -1)
    assert loads_envelope(raw).message.properties["priority"] == 3


def test_a_call_inside_a_task_takes_the_full_path(app: Celeriac) -> None:
    @app.task(name="quick.child")
    def child() -> None:
        return None

    @app.task(name="quick.parent")
    def parent() -> Any:
        return quick_send(app, child.name, child, (), {})

    assert parent() is None  # run here: a task is running, so its ids are inherited


def test_a_change_of_the_tasks_own_options_is_seen(app: Celeriac, client: Any, prefix: str) -> None:
    @app.task(name="quick.changed")
    def changed() -> None:
        return None

    changed.delay()
    changed.ignore_result = True
    changed.queue = "moved"
    changed.delay()
    (raw,) = client.lrange(f"{prefix}moved", 0, -1)
    assert loads_envelope(raw).message.headers["ignore_result"] is True
    assert client.llen(f"{prefix}celery") == 1


def test_send_task_by_name_takes_the_quick_path_with_the_apps_settings(
    app: Celeriac, client: Any, prefix: str
) -> None:
    app.conf.task_default_priority = 6
    result = app.send_task("elsewhere.task", args=[1, "two"], kwargs={"three": 3.0})
    assert ("elsewhere.task", True) in app._quick_entries
    (raw,) = client.lrange(f"{prefix}celery\x06\x166", 0, -1)
    tag = json.loads(raw)["properties"]["delivery_tag"]
    publication = app.prepare("elsewhere.task", [1, "two"], {"three": 3.0}, task_id=result.id)
    full = dumps_envelope(
        app.encode(publication.message), routing_key=publication.queue, delivery_tag=tag
    )
    assert raw == full


def test_send_task_by_name_of_a_registered_task_uses_its_options(
    app: Celeriac, client: Any, prefix: str
) -> None:
    @app.task(name="quick.special", queue="special", priority=5, shadow_name=None)
    def special() -> None:
        return None

    special.ignore_result = True
    app.send_task("quick.special")
    (raw,) = client.lrange(f"{prefix}special\x06\x163", 0, -1)
    message = loads_envelope(raw).message
    assert message.headers["ignore_result"] is True
    assert message.properties["priority"] == 5


def test_an_app_that_overrides_prepare_takes_the_full_path(prefix: str, client: Any) -> None:
    class Tenanted(Celeriac):
        def prepare(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
            options.setdefault("headers", {})["tenant"] = "acme"
            return super().prepare(name, args, kwargs, **options)

    app = Tenanted("tenanted", broker=URL, broker_transport_options={"global_keyprefix": prefix})
    try:

        @app.task(name="quick.tenant")
        def tenant() -> None:
            return None

        tenant.delay()
        (raw,) = client.lrange(f"{prefix}celery", 0, -1)
        assert loads_envelope(raw).message.headers["tenant"] == "acme"
    finally:
        app.close()


def test_a_route_added_in_place_is_seen_by_the_next_call(
    app: Celeriac, client: Any, prefix: str
) -> None:
    @app.task(name="quick.routed")
    def routed() -> None:
        return None

    app.conf.task_routes = {}
    routed.delay()
    app.conf.task_routes["quick.routed"] = {"queue": "routed"}
    routed.delay()
    assert client.llen(f"{prefix}celery") == 1
    assert client.llen(f"{prefix}routed") == 1


def test_max_connections_leaves_the_pool_to_the_other_commands(prefix: str, client: Any) -> None:
    options = {"global_keyprefix": prefix, "max_connections": 1}
    app = Celeriac("limited", broker=URL, broker_transport_options=options)
    try:

        @app.task(name="quick.limited")
        def limited() -> None:
            return None

        limited.delay()
        assert app.transport.qsize("celery") == 1
    finally:
        app.close()
