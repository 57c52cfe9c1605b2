"""Celery's task message, protocol v2 (sent and read) and v1 (read only). Pure.

``TaskMessage`` holds what a task message means; ``encode`` turns it into a ``RawMessage`` whose
headers/properties/body equal what Celery 5 sends (spec §2), and ``decode`` reads a ``RawMessage``
(v2, or v1 when there is no ``task`` header) back, raising ``DecodeError`` naming the field.

Times: ``encode`` writes ``eta``/``expires`` as ISO-8601 in UTC with ``+00:00`` (a naive value is
taken as UTC). ``decode`` reads a naive ``eta``/``expires`` as UTC, as Celery 5's worker does
(``maybe_make_aware(..., naive_as_utc=True)``); a v1 message flagged ``"utc": false`` is read as
local time instead.

``saferepr`` is Celery 5.7's ``celery.utils.saferepr`` (the ``argsrepr``/``kwargsrepr`` headers
and the ``args``/``kwargs`` of task events): a streaming repr that quotes strings with ``'``,
writes non-UTF-8 bytes as hex, stops descending after ``maxlevels`` and cuts at ``maxlen``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from numbers import Number
from typing import Any

from celeriac._internal.timeutils import parse_iso
from celeriac.exceptions import DecodeError
from celeriac.protocol.envelope import RawMessage
from celeriac.protocol.serialization import (
    COMPRESSION_NAMES,
    NAME_BY_TYPE,
    compress,
    decompress,
    dumps,
    loads,
)

UTC = timezone.utc
REPR_MAXSIZE = 1024  # Celery's argsrepr_maxsize / kwargsrepr_maxsize
REPR_MAXLEVELS = 3  # Celery's task_repr_maxlevels


@dataclass(slots=True)
class TaskMessage:
    """One task invocation as Celery's protocol v2 describes it.

    Treated as immutable (derive a changed copy with ``dataclasses.replace``); not declared
    ``frozen`` because a frozen ``__init__`` sets its 30 fields through ``object.__setattr__``,
    six times the cost of plain slot stores, paid for every message sent and received.
    """

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    # embed
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    # headers
    lang: str = "py"
    shadow: str | None = None
    eta: datetime | None = None  # aware
    expires: datetime | None = None  # aware
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    timelimit: tuple[float | None, float | None] = (None, None)  # (hard, soft)
    root_id: str | None = None
    parent_id: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    replaced_task_nesting: int = 0
    stamped_headers: list[str] | None = None
    stamps: dict[str, Any] = field(default_factory=dict)
    extra_headers: dict[str, Any] = field(default_factory=dict)  # merged at the top level
    # properties
    reply_to: str | None = None
    priority: int = 0
    delivery_mode: int = 2
    extra_properties: dict[str, Any] = field(default_factory=dict)
    # how the body is (to be) serialised
    serializer: str = "json"
    compression: str | None = None
    protocol_version: int = 2  # 1 when decoded from a v1 message


#: headers ``decode`` maps to fields (anything else lands in ``extra_headers``)
V2_HEADERS = frozenset(
    {
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "redelivered",  # kombu's restore flag: delivery state, not part of the task
        "compression",  # kombu's, read into ``compression``
    }
)
#: properties ``decode`` maps to fields or that belong to the transport
KNOWN_PROPERTIES = frozenset(
    {
        "correlation_id",
        "reply_to",
        "priority",
        "delivery_mode",
        "expiration",
        "delivery_info",
        "delivery_tag",
        "body_encoding",
        "content_type",
        "content_encoding",
        "headers",
    }
)


# -- saferepr (Celery 5.7's streaming repr) -------------------------------------------------

_LIT, _KEY, _QUOTED, _TEXT = range(4)
_SEP = (_LIT, ", ", 0, "")
_KVSEP = (_LIT, ": ", 0, "")
# A token is (kind, value, direction, closer): direction +1 opens a container (closer is its
# closing text), -1 closes one, 0 is anything else.
_Token = tuple[int, Any, int, str]


def _truncate(text: str, maxlen: int | None) -> str:
    if maxlen and len(text) >= maxlen:
        return text[:maxlen].rsplit(" ", 1)[0] + "..."
    return text


def _format_chars(value: str | bytes, maxlen: int | None) -> str:
    if isinstance(value, bytes):
        cut = maxlen is not None and 0 < maxlen < len(value)
        chunk = value[:maxlen] if cut else value
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            text = chunk.hex()
        return f"b'{text}{'...' if cut else ''}'"
    return "'{}'".format(_truncate(value, maxlen).replace("'", "\\'"))


def _plain_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:
        return f"<Unrepresentable {type(obj)!r}{id(obj):#x}: {exc!r}>"


def _brackets(obj: Any) -> tuple[str, str] | None:
    if isinstance(obj, (set, frozenset)):
        if type(obj) is set:
            return "{", "}"
        return f"{type(obj).__name__}({{", "})"
    if isinstance(obj, tuple):
        return "(", ",)" if len(obj) == 1 else ")"
    if isinstance(obj, dict):
        return "{", "}"
    if isinstance(obj, list):
        return "[", "]"
    return None


def _leaf(obj: Any) -> _Token | None:
    """The single token for a value that is not a container (None for containers)."""
    if isinstance(obj, Decimal):
        return (_TEXT, _plain_repr(obj), 0, "")
    if isinstance(obj, Number):
        return (_TEXT, str(obj), 0, "")
    if isinstance(obj, (str, bytes)):
        return (_QUOTED, obj, 0, "")
    if isinstance(obj, (set, frozenset)) and not obj:
        return (_TEXT, f"{type(obj).__name__}()", 0, "")
    if isinstance(obj, range) or _brackets(obj) is None:
        return (_TEXT, _plain_repr(obj), 0, "")
    return None


def _items(obj: Any, maxlevels: int, level: int, seen: set[int]) -> Iterator[_Token]:
    if isinstance(obj, dict):
        for i, (key, value) in enumerate(obj.items()):
            if i:
                yield _SEP
            yield (_KEY, key, 0, "")
            yield _KVSEP
            yield from _stream(value, maxlevels, level, seen)
    else:
        for i, item in enumerate(obj):
            if i:
                yield _SEP
            yield from _stream(item, maxlevels, level, seen)


def _stream(obj: Any, maxlevels: int, level: int, seen: set[int]) -> Iterator[_Token]:
    leaf = _leaf(obj)
    if leaf is not None:
        yield leaf
        return
    start, end = _brackets(obj) or ("", "")
    if maxlevels and level >= maxlevels:
        yield (_LIT, f"{start}...{end}", 0, "")
        return
    if id(obj) in seen:
        yield (_TEXT, f"<Recursion on {type(obj).__name__} with id={id(obj)}>", 0, "")
        return
    seen.add(id(obj))
    yield (_LIT, start, 1, end)
    yield from _items(obj, maxlevels, level + 1, seen)
    seen.discard(id(obj))
    yield (_LIT, end, -1, "")


def _render(token: _Token, maxlen: int | None, maxlevels: int) -> str:
    kind, value = token[0], token[1]
    if kind == _LIT:
        return str(value)
    if kind == _KEY:
        return saferepr(value, maxlen, maxlevels)
    if kind == _QUOTED:
        return _format_chars(value, maxlen)
    return _truncate(value, maxlen)


_SCALARS = frozenset({int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """True for a value whose ``saferepr`` is its ``repr``: a number, None, or a printable
    string without quotes or backslashes (``saferepr`` writes strings unescaped in ``'``)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    return kind is str and value.isprintable() and "'" not in value and "\\" not in value


def _flat_repr(obj: Any, maxlen: int | None) -> str | None:
    """``repr(obj)`` when it is exactly what the streaming ``saferepr`` writes: a tuple, list
    or dict of plain values whose text is shorter than ``maxlen``; None otherwise."""
    kind = type(obj)
    if kind is dict:
        for key, value in obj.items():
            if not (_plain(key) and _plain(value)):
                return None
    elif kind is tuple or kind is list:
        for value in obj:
            if not _plain(value):
                return None
    else:
        return None
    text = repr(obj)
    return text if maxlen is None or len(text) < maxlen else None


def saferepr(obj: Any, maxlen: int | None = None, maxlevels: int = REPR_MAXLEVELS) -> str:
    """Celery's ``saferepr``: the text of ``argsrepr``/``kwargsrepr`` (cut at ``maxlen``)."""
    if maxlevels:
        flat = _flat_repr(obj, maxlen)
        if flat is not None:
            return flat
    return _stream_repr(obj, maxlen, maxlevels)


def _stream_repr(obj: Any, maxlen: int | None, maxlevels: int) -> str:
    out: list[str] = []
    closers: list[str] = []  # closing text of every container shown and still open
    for token in _stream(obj, maxlevels, 0, set()):
        if maxlen is not None and maxlen <= 0:
            if token[2] < 0:  # the cut fell at the end of a container: just close it
                out.append(token[1])
                closers.pop()
                continue
            out.append(", ...")
            out.extend(reversed(closers))
            break
        val = _render(token, maxlen, maxlevels)
        if token[2] > 0:
            closers.append(token[3])
        elif token[2] < 0:
            closers.pop()
        out.append(val)
        if maxlen is not None:
            maxlen -= len(val)
    return "".join(out)


# -- encode ----------------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else _utc(dt).isoformat()


def expiration_ms(expires: datetime, now: datetime | None = None) -> str:
    """The AMQP ``expiration`` property: milliseconds from ``now`` until ``expires``, as a
    string, clamped at ``"0"`` (what Celery sets when ``expires`` is given)."""
    delta = _utc(expires) - (datetime.now(UTC) if now is None else _utc(now))
    return str(max(round(delta.total_seconds() * 1000), 0))


def headers_for(message: TaskMessage) -> dict[str, Any]:
    """The protocol v2 headers Celery 5 writes for ``message``, in Celery's key order."""
    headers: dict[str, Any] = {
        "lang": message.lang,
        "task": message.task,
        "id": message.id,
        "shadow": message.shadow,
        "eta": _iso(message.eta),
        "expires": _iso(message.expires),
        "group": message.group,
        "group_index": message.group_index,
        "retries": message.retries,
        "timelimit": list(message.timelimit),
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "argsrepr": (
            saferepr(message.args, REPR_MAXSIZE) if message.argsrepr is None else message.argsrepr
        ),
        "kwargsrepr": (
            saferepr(message.kwargs, REPR_MAXSIZE)
            if message.kwargsrepr is None
            else message.kwargsrepr
        ),
        "origin": message.origin,
        "ignore_result": message.ignore_result,
        "replaced_task_nesting": message.replaced_task_nesting,
        "stamped_headers": message.stamped_headers,
        "stamps": message.stamps,
    }
    if message.extra_headers:
        headers.update(message.extra_headers)
    return headers


def encode(message: TaskMessage, *, now: datetime | None = None) -> RawMessage:
    """The ``RawMessage`` Celery would send for ``message`` (protocol v2).

    ``argsrepr``/``kwargsrepr`` default to ``saferepr`` of args/kwargs (cut at 1024 chars);
    ``expiration`` (ms from ``now`` until ``expires``, a string, clamped at "0") is set when
    ``expires`` is -- pass the ``now`` that ``expires`` was computed from so that
    ``expires=60`` gives exactly ``"60000"``; ``correlation_id`` = id; ``root_id`` defaults
    to id; ``compression`` adds kombu's ``compression`` header.
    """
    headers = headers_for(message)
    properties: dict[str, Any] = {
        "correlation_id": message.id,
        "reply_to": message.reply_to or "",
    }
    properties.update(message.extra_properties)
    properties["delivery_mode"] = message.delivery_mode
    if message.expires is not None:
        properties["expiration"] = expiration_ms(message.expires, now)
    properties["priority"] = message.priority
    embed = {
        "callbacks": message.callbacks,
        "errbacks": message.errbacks,
        "chain": message.chain,
        "chord": message.chord,
    }
    content_type, encoding, body = dumps((message.args, message.kwargs, embed), message.serializer)
    if message.compression:
        headers["compression"], body = compress(body, message.compression)
    return RawMessage(body, content_type, encoding, headers, properties)


# -- decode ----------------------------------------------------------------------------------


def _bad(name: str, value: Any, expected: str) -> DecodeError:
    return DecodeError(f"{name} must be {expected}, not {type(value).__name__}", field=name)


def _required_str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if isinstance(value, str) and value:
        return value
    raise DecodeError(f"task message has no valid {name!r} (got {value!r})", field=name)


_LABELS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
#: optional fields of a v2 header map / v1 body / embed, and the type each must have when set
_HEADER_TYPES: dict[str, type] = {
    "lang": str,
    "shadow": str,
    "group": str,
    "group_index": int,
    "root_id": str,
    "parent_id": str,
    "argsrepr": str,
    "kwargsrepr": str,
    "origin": str,
    "stamped_headers": list,
    "stamps": dict,
}
_V1_TYPES: dict[str, type] = {
    "taskset": str,
    "group": str,
    "group_index": int,
    "callbacks": list,
    "errbacks": list,
    "chord": dict,
}
_EMBED_TYPES: dict[str, type] = {"callbacks": list, "errbacks": list, "chain": list, "chord": dict}


def _check_types(data: dict[str, Any], types: dict[str, type]) -> None:
    """``DecodeError`` naming the first field of ``data`` set to a value of the wrong type."""
    for name, kind in types.items():
        value = data.get(name)
        if value is not None and not isinstance(value, kind):
            raise _bad(name, value, _LABELS[kind])


def _int(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _bad(name, value, "an integer")


def _datetime(value: Any, name: str, local: bool = False) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = parse_iso(value)
        except ValueError as exc:
            raise DecodeError(f"{name} is not an ISO-8601 time: {value!r}", field=name) from exc
    if not isinstance(value, datetime):
        raise _bad(name, value, "an ISO-8601 string")
    if value.tzinfo is None:
        return value.astimezone() if local else value.replace(tzinfo=UTC)
    return value


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return (None, None)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        hard, soft = value
        if all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value
        ):
            return (hard, soft)
    raise DecodeError(f"timelimit must be [hard, soft], not {value!r}", field="timelimit")


def _args_kwargs(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not isinstance(args, (list, tuple)):
        raise _bad("args", args, "a list")
    if not isinstance(kwargs, dict):
        raise _bad("kwargs", kwargs, "an object")
    return tuple(args), kwargs


def _embed(embed: Any) -> dict[str, Any]:
    if embed is None:
        embed = {}
    elif not isinstance(embed, dict):
        raise _bad("embed", embed, "an object")
    _check_types(embed, _EMBED_TYPES)
    return {
        "callbacks": embed.get("callbacks"),
        "errbacks": embed.get("errbacks"),
        "chain": embed.get("chain"),
        "chord": embed.get("chord"),
    }


def _transport_fields(raw: RawMessage, compression: str | None) -> dict[str, Any]:
    props = raw.properties
    reply_to = props.get("reply_to")
    return {
        "reply_to": reply_to if isinstance(reply_to, str) and reply_to else None,
        "priority": _int(props, "priority", 0),
        "delivery_mode": _int(props, "delivery_mode", 2),
        "extra_properties": {k: v for k, v in props.items() if k not in KNOWN_PROPERTIES},
        "serializer": NAME_BY_TYPE.get(raw.content_type, raw.content_type),
        "compression": COMPRESSION_NAMES.get(compression, compression) if compression else None,
    }


def _decode_v2(raw: RawMessage, payload: Any, compression: str | None) -> TaskMessage:
    if not isinstance(payload, (list, tuple)) or len(payload) != 3:
        raise DecodeError("protocol 2 body must be [args, kwargs, embed]", field="body")
    h = raw.headers
    _check_types(h, _HEADER_TYPES)
    args, kwargs = _args_kwargs(payload[0], payload[1])
    return TaskMessage(
        id=_required_str(h, "id"),
        task=_required_str(h, "task"),
        args=args,
        kwargs=kwargs,
        **_embed(payload[2]),
        lang=h.get("lang") or "py",
        shadow=h.get("shadow"),
        eta=_datetime(h.get("eta"), "eta"),
        expires=_datetime(h.get("expires"), "expires"),
        group=h.get("group"),
        group_index=h.get("group_index"),
        retries=_int(h, "retries", 0),
        timelimit=_timelimit(h.get("timelimit")),
        root_id=h.get("root_id"),
        parent_id=h.get("parent_id"),
        argsrepr=h.get("argsrepr"),
        kwargsrepr=h.get("kwargsrepr"),
        origin=h.get("origin"),
        ignore_result=bool(h.get("ignore_result")),
        replaced_task_nesting=_int(h, "replaced_task_nesting", 0),
        stamped_headers=h.get("stamped_headers"),
        stamps=h.get("stamps") or {},
        extra_headers={k: v for k, v in h.items() if k not in V2_HEADERS},
        **_transport_fields(raw, compression),
    )


def _decode_v1(raw: RawMessage, payload: Any, compression: str | None) -> TaskMessage:
    if not isinstance(payload, dict):
        raise DecodeError(
            "message has no 'task' header and its body is not a protocol 1 task", field="task"
        )
    b = payload
    _check_types(b, _V1_TYPES)
    args, kwargs = _args_kwargs(b.get("args", ()), b.get("kwargs") or {})
    local = b.get("utc", True) is False
    return TaskMessage(
        id=_required_str(b, "id"),
        task=_required_str(b, "task"),
        args=args,
        kwargs=kwargs,
        callbacks=b.get("callbacks"),
        errbacks=b.get("errbacks"),
        chord=b.get("chord"),
        eta=_datetime(b.get("eta"), "eta", local),
        expires=_datetime(b.get("expires"), "expires", local),
        group=b.get("taskset") or b.get("group"),
        group_index=b.get("group_index"),
        retries=_int(b, "retries", 0),
        timelimit=_timelimit(b.get("timelimit")),
        extra_headers={k: v for k, v in raw.headers.items() if k not in V2_HEADERS},
        protocol_version=1,
        **_transport_fields(raw, compression),
    )


def decode(raw: RawMessage, accept: Iterable[str] | None = None) -> TaskMessage:
    """Read a v2 or v1 task message; ``DecodeError`` / ``ContentDisallowed`` on bad input.

    ``accept`` is ``accept_content`` (serializer names or content types). The ``redelivered``
    header (kombu's restore flag) is not part of the task and is dropped.
    """
    headers = raw.headers
    if not isinstance(headers, dict):
        raise _bad("headers", headers, "an object")
    compression = headers.get("compression")
    body: bytes = raw.body
    if compression is not None:
        if not isinstance(compression, str):
            raise _bad("compression", compression, "a string")
        body = decompress(body, compression)
    payload = loads(body, raw.content_type, raw.content_encoding, accept)
    if headers.get("task") is not None:
        return _decode_v2(raw, payload, compression)
    return _decode_v1(raw, payload, compression)
