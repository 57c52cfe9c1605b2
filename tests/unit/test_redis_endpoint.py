"""Where the project's own Redis connections connect (``_internal.redis_endpoint.Endpoint``).

The two constructors (a URL with redis-py client kwargs, a redis-py client's pool) agree on
every URL form both serve, what the URL says wins over the kwargs, each refuses what needs
redis-py's own connection, and ``set_keepalive`` sets what the endpoint asks on a real socket.
No server is contacted.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from celeriac._internal.redis_endpoint import Endpoint

redis = pytest.importorskip("redis")

KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", None)


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        (
            "redis://alice:s3cret@redis.example:6390/4",
            {"client_name": "web-1", "socket_timeout": 2.5, "socket_connect_timeout": 1.5},
        ),
        ("redis://:pw@h/1", {"username": "bob", "socket_keepalive": True}),
        ("redis://localhost", {}),
        ("unix:///run/redis.sock?db=2", {"password": "pw", "socket_timeout": 3.0}),
    ],
)
def test_a_url_and_the_client_made_from_it_give_one_endpoint(
    url: str, kwargs: dict[str, Any]
) -> None:
    from_url = Endpoint.from_url(url, kwargs)
    from_client = Endpoint.from_client(redis.Redis.from_url(url, **kwargs))
    assert from_url is not None
    assert from_url == from_client


def test_what_the_url_says_wins_over_the_kwargs() -> None:
    ep = Endpoint.from_url("redis://:url-pw@h:1234/3", {"password": "kw-pw", "client_name": "n"})
    assert ep is not None
    assert (ep.host, ep.port, ep.db, ep.password, ep.client_name) == ("h", 1234, 3, "url-pw", "n")
    assert (ep.path, ep.where) == (None, "h:1234")


def test_a_unix_socket_url() -> None:
    ep = Endpoint.from_url("unix:///run/redis.sock?db=5", {})
    assert ep is not None
    assert (ep.path, ep.db, ep.where) == ("/run/redis.sock", 5, "/run/redis.sock")


@pytest.mark.parametrize(
    "url",
    ["rediss://h:6380/0", "sentinel://h:26379/0", "redis://h/1?socket_timeout=3", "memory://"],
)
def test_urls_that_need_redis_py_give_none(url: str) -> None:
    assert Endpoint.from_url(url, {}) is None


def test_clients_that_need_redis_py_give_none() -> None:
    assert Endpoint.from_client(redis.Redis.from_url("rediss://h:6380/0")) is None
    provider = redis.UsernamePasswordCredentialProvider("u", "p")
    assert Endpoint.from_client(redis.Redis(credential_provider=provider)) is None
    blocking = redis.BlockingConnectionPool(host="h")
    assert Endpoint.from_client(redis.Redis(connection_pool=blocking)) is None


def test_keepalive_options_are_taken_from_either_side() -> None:
    options = {1: 30} if KEEPIDLE is None else {KEEPIDLE: 30}
    kwargs = {"socket_keepalive": True, "socket_keepalive_options": options}
    from_url = Endpoint.from_url("redis://h/0", kwargs)
    assert from_url is not None
    assert (from_url.keepalive, dict(from_url.keepalive_options)) == (True, options)
    assert from_url == Endpoint.from_client(redis.Redis.from_url("redis://h/0", **kwargs))


@pytest.mark.skipif(KEEPIDLE is None, reason="no TCP_KEEPIDLE on this platform")
def test_set_keepalive_sets_the_socket_options() -> None:
    assert KEEPIDLE is not None
    with socket.socket() as plain, socket.socket() as kept:
        Endpoint(keepalive=False, keepalive_options={KEEPIDLE: 17}).set_keepalive(plain)
        assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        Endpoint(keepalive=True, keepalive_options={KEEPIDLE: 17}).set_keepalive(kept)
        assert kept.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert kept.getsockopt(socket.IPPROTO_TCP, KEEPIDLE) == 17
