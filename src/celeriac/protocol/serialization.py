"""Serializers and compression, with kombu's names and content types.

- ``json`` (``application/json``, ``utf-8``): kombu's ``{"__type__", "__value__"}`` tags for
  datetime, date, time, Decimal, UUID, bytes (``bytes``/``base64``); tuples as arrays; objects
  with ``__json__()``; encoded like Python's ``json.dumps`` defaults (``", "``/``": "``,
  ``ensure_ascii``) so bytes match Celery's.
- ``msgpack`` (``application/x-msgpack``, ``binary``), ``yaml`` (``application/x-yaml``,
  ``utf-8``): when their packages are installed (imported on first use).
- ``pickle`` (``application/x-python-serialize``, ``binary``): only decoded when
  ``accept_content`` names it.
- ``application/data`` / ``application/text`` (kombu's raw content) are always accepted and
  returned as they are (bytes, or text when the encoding is a character set).
- compression: ``zlib``/``gzip`` (kombu registers both as ``application/x-gzip`` and uses the
  *zlib* format for it), ``bzip2`` (``application/x-bz2``), ``lzma`` (``application/x-lzma``).

``accept=None`` accepts every content type except pickle (kombu disables the insecure ones by
default; yaml is read with ``safe_load`` and msgpack has no code execution, so only pickle stays
off).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from celeriac.exceptions import ContentDisallowed, DecodeError, EncodeError, ImproperlyConfigured

JSON = "application/json"
MSGPACK = "application/x-msgpack"
YAML = "application/x-yaml"
PICKLE = "application/x-python-serialize"
RAW = "application/data"
TEXT = "application/text"

#: serializer name -> (content type, content encoding)
SERIALIZERS: dict[str, tuple[str, str]] = {
    "json": (JSON, "utf-8"),
    "msgpack": (MSGPACK, "binary"),
    "yaml": (YAML, "utf-8"),
    "pickle": (PICKLE, "binary"),
}
NAME_BY_TYPE: dict[str, str] = {ctype: name for name, (ctype, _) in SERIALIZERS.items()}
TRUSTED_CONTENT = frozenset({RAW, TEXT})
BINARY_ENCODINGS = frozenset({"binary", "ascii-8bit"})
DEFAULT_ACCEPT = frozenset({JSON, MSGPACK, YAML})

#: compression name (kombu alias) -> the ``compression`` header value kombu writes
COMPRESSIONS: dict[str, str] = {
    "zlib": "application/x-gzip",
    "gzip": "application/x-gzip",
    "bzip2": "application/x-bz2",
    "bzip": "application/x-bz2",
    "lzma": "application/x-lzma",
    "xz": "application/x-lzma",
}
#: header value -> canonical name (the one Celery users configure)
COMPRESSION_NAMES: dict[str, str] = {
    "application/x-gzip": "gzip",
    "application/x-bz2": "bzip2",
    "application/x-lzma": "lzma",
}
PICKLE_PROTOCOL = 4  # kombu's default (PICKLE_PROTOCOL env var)


# -- json ------------------------------------------------------------------------------------


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {"__type__": kind, "__value__": value}


def _json_default(obj: Any) -> Any:
    """kombu's ``JSONEncoder.default``: ``__json__``, then the tagged types, then bytes."""
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    if isinstance(obj, datetime):  # before date: a datetime is a date
        return _tag("datetime", obj.isoformat())
    if isinstance(obj, date):
        return _tag("date", obj.isoformat())
    if isinstance(obj, time):
        return _tag("time", obj.isoformat())
    if isinstance(obj, Decimal):
        return _tag("decimal", str(obj))
    uuid = sys.modules.get("uuid")  # a UUID exists only once its module is loaded
    if uuid is not None and isinstance(obj, uuid.UUID):
        return _tag("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes):
        try:
            return _tag("bytes", obj.decode("utf-8"))
        except UnicodeDecodeError:
            return _tag("base64", base64.b64encode(obj).decode("ascii"))
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _decode_uuid(value: Any) -> Any:
    from uuid import UUID

    if isinstance(value, dict):
        return UUID(**value)
    return UUID(value)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": lambda v: datetime.fromisoformat(v).date(),
    "time": time.fromisoformat,
    "decimal": Decimal,
    "uuid": _decode_uuid,
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("utf-8")),
}


def _object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) != 2 or "__type__" not in obj or "__value__" not in obj:
        return obj
    kind = obj["__type__"]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise DecodeError(f"unsupported JSON type tag __type__={kind!r}", field="__type__")
    try:
        return decoder(obj["__value__"])
    except (TypeError, ValueError, AttributeError, InvalidOperation, binascii.Error) as exc:
        raise DecodeError(f"bad __value__ for __type__={kind!r}: {exc}", field=kind) from exc


#: ``json.dumps(obj, default=_json_default)`` builds a C encoder (and its circular-reference
#: table) on every call; this one is built once. Without the table a cyclic value ends in
#: ``RecursionError`` instead of ``ValueError``: both are an ``EncodeError`` below.
_FLAGS = (False, False, True)  # sort_keys, skipkeys, allow_nan: json.dumps' defaults
_C_ENCODE: Any = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, _json_default, encode_basestring_ascii, None, ": ", ", ", *_FLAGS)
)
_PY_ENCODE = json.JSONEncoder(default=_json_default).encode


def json_dumps(obj: Any) -> str:
    """JSON text exactly as kombu writes it (``json.dumps`` defaults plus kombu's type tags)."""
    try:
        if _C_ENCODE is None:  # no C accelerator in this Python
            return _PY_ENCODE(obj)
        return "".join(_C_ENCODE(obj, 0))
    except (TypeError, ValueError, RecursionError) as exc:
        raise EncodeError(f"cannot encode as JSON: {exc}") from exc


#: ``(orjson.loads, orjson.JSONDecodeError)`` once looked up, ``(None, None)`` without orjson
_ORJSON: tuple[Any, Any] | None = None
#: 19 digits in a row may be an integer beyond 64 bits, which orjson turns into a float; found
#: by mapping digits to "9" and the rest to " " (``bytes.translate``: 4x faster than a regex)
_DIGITS_ONLY = bytes(0x39 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGITS = b"9" * 19


def _orjson() -> tuple[Any, Any]:
    """orjson's parser, imported on first use (never at import: it is optional)."""
    global _ORJSON
    if _ORJSON is None:
        try:
            import orjson
        except ImportError:
            _ORJSON = (None, None)
        else:
            _ORJSON = (orjson.loads, orjson.JSONDecodeError)
    return _ORJSON


def json_loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON, turning kombu's two-key ``__type__``/``__value__`` objects back into values.

    With orjson installed, a document (bytes) that holds no type tag is parsed by orjson (about 3
    times faster; same values). What orjson refuses but Python's parser takes (``NaN``, ``1e400``,
    lone surrogates) or rejects goes through Python's parser, whose verdict stands; so does a
    document with 19 digits in a row (orjson reads an integer beyond 64 bits as a float). The
    result never depends on whether orjson is installed.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, str):
        fast, fast_error = _ORJSON or _orjson()
        if (
            fast is not None
            and b"__type__" not in data
            and b"\\u00" not in data
            and _LONG_DIGITS not in data.translate(_DIGITS_ONLY)
        ):
            try:
                return fast(data)
            except fast_error:
                pass  # Python's parser decides
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"JSON payload is not UTF-8: {exc}", field="body") from exc
    try:
        # A tag key can only be spelled "__type__" or with \u00XX escapes: skip the (Python
        # level, per object) hook when neither can occur -- the worker's common case.
        if "__type__" not in data and "\\u00" not in data:
            return json.loads(data)
        return json.loads(data, object_hook=_object_hook)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON: {exc}", field="body") from exc


# -- the other serializers (imported on first use) ------------------------------------------


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"the {extra!r} serializer needs the {module!r} package: "
            f"pip install 'celeriac[{extra}]'"
        ) from exc


def _encode_other(obj: Any, name: str) -> bytes:
    if name == "msgpack":
        packed: bytes = _import("msgpack", "msgpack").packb(obj, use_bin_type=True)
        return packed
    if name == "yaml":
        text: str = _import("yaml", "yaml").safe_dump(obj)
        return text.encode("utf-8")
    import pickle

    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def _decode_other(data: bytes, content_type: str) -> Any:
    if content_type == MSGPACK:
        return _import("msgpack", "msgpack").unpackb(data, raw=False)
    if content_type == YAML:
        return _import("yaml", "yaml").safe_load(data)
    import pickle

    return pickle.loads(data)


# -- public API ------------------------------------------------------------------------------


def dumps(obj: Any, serializer: str = "json") -> tuple[str, str, bytes]:
    """Serialise ``obj``: returns ``(content_type, content_encoding, payload)``.

    ``serializer`` is a name (``json``, ``msgpack``, ``yaml``, ``pickle``) or its content type.
    Raises ``EncodeError`` (naming the value's type) for values the serializer cannot represent,
    ``ImproperlyConfigured`` for an unknown serializer name.
    """
    name = NAME_BY_TYPE.get(serializer, serializer)
    if name == "json":
        return JSON, "utf-8", json_dumps(obj).encode("ascii")
    try:
        content_type, encoding = SERIALIZERS[name]
    except KeyError:
        known = ", ".join(SERIALIZERS)
        raise ImproperlyConfigured(f"unknown serializer {serializer!r} (known: {known})") from None
    try:
        return content_type, encoding, _encode_other(obj, name)
    except ImproperlyConfigured:
        raise
    except Exception as exc:
        raise EncodeError(f"cannot encode {type(obj).__name__} with {name}: {exc}") from exc


def loads(
    data: bytes | str,
    content_type: str | None,
    content_encoding: str | None,
    accept: Iterable[str] | None = None,
) -> Any:
    """Deserialise; ``accept`` (names or content types) is enforced: ``ContentDisallowed``.

    Errors in the payload raise ``DecodeError``.
    """
    ctype = content_type or RAW
    allowed = DEFAULT_ACCEPT if accept is None else content_types(accept)
    if ctype not in allowed and ctype not in TRUSTED_CONTENT:
        raise ContentDisallowed(_refusal(ctype, allowed), field="content_type")
    if not data:
        return data
    if ctype == JSON:
        return json_loads(data)
    if ctype in NAME_BY_TYPE:
        payload = data.encode("utf-8") if isinstance(data, str) else data
        try:
            return _decode_other(payload, ctype)
        except ImproperlyConfigured:
            raise
        except Exception as exc:
            raise DecodeError(f"cannot decode {ctype} payload: {exc}", field="body") from exc
    return _raw_content(data, content_encoding)


def _raw_content(data: bytes | str, content_encoding: str | None) -> bytes | str:
    encoding = (content_encoding or "utf-8").lower()
    if isinstance(data, str) or encoding in BINARY_ENCODINGS:
        return data
    try:
        return data.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise DecodeError(f"cannot decode body as {encoding}: {exc}", field="body") from exc


def _refusal(content_type: str, allowed: frozenset[str]) -> str:
    name = NAME_BY_TYPE.get(content_type)
    shown = f"{name} ({content_type})" if name else content_type
    accepted = ", ".join(sorted(allowed)) or "nothing"
    return f"Refusing to deserialize untrusted content of type {shown}; accepted: {accepted}"


def content_types(accept: Iterable[str]) -> frozenset[str]:
    """Map serializer names or content types (``['json', 'application/x-msgpack']``) to types."""
    if isinstance(accept, frozenset):
        return _content_types(accept)
    return _content_types(frozenset(accept))


@lru_cache(maxsize=64)
def _content_types(accept: frozenset[str]) -> frozenset[str]:
    types: set[str] = set()
    for item in accept:
        if "/" in item:
            types.add(item)
        elif item in SERIALIZERS:
            types.add(SERIALIZERS[item][0])
        else:
            known = ", ".join(SERIALIZERS)
            raise ImproperlyConfigured(
                f"unknown serializer {item!r} in accept_content (known: {known})"
            )
    return frozenset(types)


def compression_header(method: str) -> str:
    """The ``compression`` header value for a method name or header value (``gzip`` -> ...)."""
    if method in COMPRESSION_NAMES:
        return method
    try:
        return COMPRESSIONS[method]
    except KeyError:
        known = ", ".join(COMPRESSIONS)
        raise ImproperlyConfigured(f"unknown compression {method!r} (known: {known})") from None


def compress(data: bytes, method: str) -> tuple[str, bytes]:
    """Compress with ``method`` (zlib, bzip2, gzip, lzma): returns (compression header, data)."""
    header = compression_header(method)
    if header == "application/x-gzip":
        import zlib

        return header, zlib.compress(data)
    if header == "application/x-bz2":
        import bz2

        return header, bz2.compress(data)
    import lzma

    return header, lzma.compress(data)


def decompress(data: bytes, compression: str) -> bytes:
    """Undo ``compress``; ``compression`` is the message's ``compression`` header."""
    try:
        header = compression_header(compression)
    except ImproperlyConfigured as exc:
        raise DecodeError(str(exc), field="compression") from None
    try:
        if header == "application/x-gzip":
            import zlib

            return zlib.decompress(data, 47)  # wbits 32+15: zlib or gzip framing
        if header == "application/x-bz2":
            import bz2

            return bz2.decompress(data)
        import lzma

        return lzma.decompress(data)
    except Exception as exc:
        raise DecodeError(f"cannot decompress ({header}): {exc}", field="compression") from exc
