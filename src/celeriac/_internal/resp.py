"""RESP request bytes: ``pack_command`` (one command) and ``pack`` (several, for one write).

``hiredis.pack_command`` is the fastest for the usual command (0.15-0.3 us per argument) but
falls off a cliff once the command's bytes pass about 128 KB (the allocator moves its growing
buffer to ``mmap``, and every growth copies it): a 1,000-value ``LPUSH`` of 1.3 KB task
messages costs it 3-4.5 us per value, against 0.3-0.4 us for a ``b"".join`` of the same pieces
(hiredis 3.5, this project's machines). A bulk publish sends such commands, so commands of
more than ``SHORT`` arguments and ``LARGE`` bytes are joined here; the rest (the worker's
batched script calls: many small arguments, where hiredis is twice as fast as the join) go to
hiredis when it is installed.

Arguments are encoded as redis-py encodes them: bytes as they are, ``str`` as UTF-8, ``int``
and ``float`` as their ``repr`` (a ``bool`` is refused, as redis-py refuses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_hiredis_pack: Callable[..., Any] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency of the redis extra
    _hiredis_pack = None

#: commands of up to this many arguments go to hiredis without a look at their size
SHORT = 64
#: longer commands of more bytes than this are joined in Python (see the module docstring)
LARGE = 64 * 1024


def _encode(value: Any) -> bytes:
    kind = type(value)
    if kind is bytes:
        return value  # type: ignore[no-any-return]
    if kind is str:
        return value.encode()  # type: ignore[no-any-return]
    if kind is int or kind is float:
        return repr(value).encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return str(value).encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(
        f"A Redis command argument must be str, int, float or bytes, not {kind.__name__}"
    )


def _join(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        data = _encode(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


def pack_command(args: Sequence[Any]) -> bytes:
    """The RESP bytes of one command (``args``: its name and arguments)."""
    if _hiredis_pack is not None and (len(args) <= SHORT or _size(args) <= LARGE):
        return bytes(_hiredis_pack(tuple(args)))
    return _join(args)


def _size(args: Sequence[Any]) -> int:
    """About how many bytes ``args`` take (numbers not counted)."""
    total = 0
    for arg in args:
        if type(arg) is bytes or type(arg) is str:
            total += len(arg)
    return total


def pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """The RESP bytes of ``commands``, one after the other."""
    if len(commands) == 1:
        return pack_command(commands[0])
    return b"".join([pack_command(c) for c in commands])


__all__ = ["LARGE", "SHORT", "pack", "pack_command"]
