"""Which Redis URLs a client talks to over a raw RESP3 connection (``raw_spec``).

Plain TCP and Unix sockets, with or without a username and password, take it; TLS,
Sentinel and credential providers keep redis-py's ``PubSub``. No server is contacted.
"""

from __future__ import annotations

from typing import Any

import pytest

from celeriac._internal.redis_raw import raw_spec
from celeriac.backends.redis import make_client

redis = pytest.importorskip("redis")
pytest.importorskip("hiredis")


def test_a_tcp_url_with_auth_db_and_options() -> None:
    options: dict[str, Any] = {"client_name": "web-1", "socket_timeout": 2.5}
    client = make_client("redis://alice:s3cret@redis.example:6390/4", options)
    spec = raw_spec(client)
    assert spec is not None
    assert (spec.host, spec.port, spec.path) == ("redis.example", 6390, None)
    assert (spec.db, spec.username, spec.password) == (4, "alice", "s3cret")
    assert (spec.client_name, spec.timeout) == ("web-1", 2.5)
    assert spec.where == "redis.example:6390"


def test_a_unix_socket_url() -> None:
    spec = raw_spec(make_client("redis+socket:///run/redis.sock?virtual_host=2", {}))
    assert spec is not None
    assert (spec.path, spec.db, spec.password) == ("/run/redis.sock", 2, None)
    assert spec.where == "/run/redis.sock"


def test_tls_and_credential_providers_keep_pubsub() -> None:
    assert raw_spec(make_client("rediss://h:6380/0", {"ssl_cert_reqs": "none"})) is None
    provider = redis.UsernamePasswordCredentialProvider("u", "p")
    assert raw_spec(redis.Redis(credential_provider=provider)) is None


def test_sentinel_keeps_pubsub() -> None:
    client = make_client("sentinel://127.0.0.1:26379/0", {"master_name": "mymaster"})
    assert raw_spec(client) is None
