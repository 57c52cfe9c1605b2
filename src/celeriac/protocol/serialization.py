"""Serializers and compression, with kombu's names and content types.

- ``json`` (``application/json``, ``utf-8``): kombu's ``{"__type__", "__value__"}`` tags for
  datetime, date, time, Decimal, UUID, bytes (``bytes``/``base64``); tuples as arrays; objects
  with ``__json__()``; encoded like Python's ``json.dumps`` defaults (``", "``/``": "``,
  ``ensure_ascii``) so bytes match Celery's.
- ``msgpack`` (``application/x-msgpack``, ``binary``), ``yaml`` (``application/x-yaml``,
  ``utf-8``): when their packages are installed.
- ``pickle`` (``application/x-python-serialize``, ``binary``): only decoded when
  ``accept_content`` names it.
- compression: ``zlib``, ``bzip2``, ``gzip``, ``lzma`` with kombu's header values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialise ``obj``: returns ``(content_type, content_encoding, payload)``.

    Raises ``EncodeError`` (naming the value's type) for values the serializer cannot represent,
    ``ImproperlyConfigured`` for an unknown serializer name.
    """
    raise NotImplementedError


def loads(
    data: bytes | str,
    content_type: str | None,
    content_encoding: str | None,
    accept: Iterable[str] | None = None,
) -> Any:
    """Deserialise; ``accept`` (names or content types) is enforced: ``ContentDisallowed``.

    Errors in the payload raise ``DecodeError``.
    """
    raise NotImplementedError


def content_types(accept: Iterable[str]) -> frozenset[str]:
    """Map serializer names or content types (``['json', 'application/x-msgpack']``) to types."""
    raise NotImplementedError


def compress(data: bytes, method: str) -> tuple[str, bytes]:
    """Compress with ``method`` (zlib, bzip2, gzip, lzma): returns (compression header, data)."""
    raise NotImplementedError


def decompress(data: bytes, compression: str) -> bytes:
    """Undo ``compress``; ``compression`` is the message's ``compression`` header."""
    raise NotImplementedError
