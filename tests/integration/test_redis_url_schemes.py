"""Every Redis URL form the issue lists, against a live server: ``redis://`` with a username and
password and a DB number, ``redis+socket://`` (a unix socket, ``virtual_host`` as the DB) and
``rediss://`` (TLS, the server's certificate checked against its CA).

One private ``redis-server`` (started here, on free ports, never the shared one) listens on a TCP
port, a unix socket and a TLS port, with ``requirepass`` and an ACL user. For each URL the sync
and the async broker drivers publish, fetch and acknowledge, and the result store writes and
reads; a plain admin connection then checks that the keys landed in the URL's DB. Skipped when
``redis-server`` or ``openssl`` is missing (failed under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server_support import RedisServer, free_port, need_binary

from celeriac.backends.redis import RedisStore
from celeriac.exceptions import OperationalError
from celeriac.protocol.envelope import RawMessage
from celeriac.transports.redis import AsyncRedisTransport, RedisTransport

redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

PASSWORD = "s3cret"
USER, USER_PASSWORD = "alice", "wonder"


class Server(RedisServer):
    """The private server: a TCP port, a unix socket and a TLS port, a password and an ACL user."""

    def __init__(self, workdir: Path) -> None:
        self.sock = workdir / "redis.sock"
        self.ca, key = _certificate(workdir)
        self.tls_port = free_port()
        super().__init__(
            workdir,
            *("--unixsocket", str(self.sock), "--unixsocketperm", "700"),
            *("--tls-port", str(self.tls_port), "--tls-cert-file", str(self.ca)),
            *("--tls-key-file", str(key), "--tls-ca-cert-file", str(self.ca)),
            *("--tls-auth-clients", "no", "--requirepass", PASSWORD),
            *("--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"),
        )

    def admin(self, db: int) -> Any:
        return self.client(db)


def _certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA)."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        [
            need_binary("openssl"),
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    need_binary("redis-server")
    srv = Server(tmp_path_factory.mktemp("redis-urls"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


def _urls(srv: Server) -> dict[str, tuple[str, int, dict[str, Any]]]:
    """name -> (URL, the DB it names, extra transport options)."""
    return {
        "redis-acl-user": (f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{srv.port}/3", 3, {}),
        "redis-password-db-query": (f"redis://:{PASSWORD}@127.0.0.1:{srv.port}?db=6", 6, {}),
        "redis+socket": (f"redis+socket://:{PASSWORD}@{srv.sock}?virtual_host=4", 4, {}),
        "rediss": (
            f"rediss://:{PASSWORD}@127.0.0.1:{srv.tls_port}/5?ssl_cert_reqs=required",
            5,
            {"ssl_ca_certs": str(srv.ca)},
        ),
    }


NAMES = ["redis-acl-user", "redis-password-db-query", "redis+socket", "rediss"]


def _message(body: str) -> RawMessage:
    return RawMessage(body=body.encode(), headers={"id": body}, properties={})


@pytest.mark.parametrize("name", NAMES)
def test_sync_driver_and_store_on_each_url_form(server: Server, name: str) -> None:
    url, db, extra = _urls(server)[name]
    prefix = f"urls-{name}-sync:"
    options = {"global_keyprefix": prefix, "visibility_timeout": 30.0, **extra}
    transport = RedisTransport(url, options=options)
    store = RedisStore(url, options={"global_keyprefix": prefix, **extra})
    try:
        transport.publish("q", _message("hello"))
        [got] = transport.fetch(["q"], 1, 5.0)
        assert got.message.body == b"hello"
        with server.admin(db) as admin:
            assert admin.hexists(prefix + "unacked", got.tag)
            transport.ack([got])
            assert not admin.hexists(prefix + "unacked", got.tag)
            store.set("celery-task-meta-x", b'{"status": "SUCCESS"}', 60)
            assert store.get("celery-task-meta-x") == b'{"status": "SUCCESS"}'
            assert admin.ttl(prefix + "celery-task-meta-x") > 0
        with server.admin(0) as other:
            assert other.keys(prefix + "*") == []
    finally:
        transport.close()
        store.close()


@pytest.mark.parametrize("name", NAMES)
def test_async_driver_on_each_url_form(server: Server, name: str) -> None:
    url, db, extra = _urls(server)[name]
    prefix = f"urls-{name}-async:"
    options = {"global_keyprefix": prefix, "visibility_timeout": 30.0, **extra}

    async def scenario() -> bytes:
        transport = AsyncRedisTransport(url, options=options)
        try:
            await transport.publish("q", _message("async hello"))
            [got] = await transport.fetch(["q"], 1, 5.0)
            await transport.ack([got])
            return got.message.body
        finally:
            await transport.close()

    assert asyncio.run(scenario()) == b"async hello"
    with server.admin(db) as admin:
        assert admin.hlen(prefix + "unacked") == 0
        assert admin.sismember(prefix + "_kombu.binding.q", b"q\x06\x16\x06\x16q")


def test_tls_refuses_a_certificate_it_cannot_check(server: Server) -> None:
    """``ssl_cert_reqs=required`` without the CA: the connection must fail, not fall back."""
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.tls_port}/5?ssl_cert_reqs=required"
    options = {"visibility_timeout": 30.0, "connect_retries_timeout": 0.5, "max_retries": 0}
    transport = RedisTransport(url, options=options)
    try:
        with pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            transport.qsize("q")
    finally:
        transport.close()
