"""URL helpers shared by transports and backends: scheme, redaction, lazy driver loading."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from celeriac.exceptions import ImproperlyConfigured


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased (``sqlite:///x`` -> ``sqlite``)."""
    return url.partition("://")[0].lower() if "://" in url else url.lower()


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``**``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:**@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def load_driver(path: str, setting: str, url: str) -> Any:
    """Import ``"module:Class"``; a missing optional package names the extra to install."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name or module_name
        extra = scheme_of(url).split("+")[0].replace("rediss", "redis").replace("sentinel", "redis")
        raise ImproperlyConfigured(
            f"{setting} {redact_url(url)!r} needs the package {missing!r}: "
            f"pip install 'celeriac[{extra}]'"
        ) from exc
    return getattr(module, attr)


def same_redis(a: str, b: str) -> bool:
    """True when two ``redis://``/``rediss://``/``redis+socket://`` URLs name the same server,
    database and credentials (a script sent on one connection sees the other's keys).
    ``sentinel://`` (and anything else) is never the same: the master may move."""
    return _redis_identity(a) is not None and _redis_identity(a) == _redis_identity(b)


def _redis_identity(url: str) -> tuple[Any, ...] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        query = dict(parse_qsl(parts.query))
        if scheme in ("redis", "rediss"):
            db = parts.path.strip("/") or query.get("db", "0")
            where: tuple[Any, ...] = (parts.hostname or "localhost", parts.port or 6379)
        elif scheme in ("redis+socket", "socket", "unix"):
            db = query.get("virtual_host") or query.get("db") or "0"
            where = (parts.path,)
        else:
            return None
        return (scheme, *where, int(db), parts.username or "", parts.password or "")
    except ValueError:
        return None
