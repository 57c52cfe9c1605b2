"""Redis error replies as redis-py's exception classes, for Celeriac's own connections.

The lean worker connection (``redis_wire``) and the client's raw connection (``redis_raw``)
read replies with ``hiredis`` and hand an error reply to ``error_of``, which returns the
exception redis-py would raise for it: ``NoScriptError`` for NOSCRIPT (the caller loads the
script), ``BusyLoadingError`` for LOADING (retried like a lost connection by ``Link``),
``AuthenticationError`` for WRONGPASS/NOAUTH (never retried), ``ResponseError`` otherwise. So
the code above either connection handles errors exactly as it does on redis-py's clients.
"""

from __future__ import annotations

from redis import exceptions as rex

#: the first word of an error reply -> the exception redis-py raises for it
ERROR_CODES: dict[str, type[rex.RedisError]] = {
    "NOSCRIPT": rex.NoScriptError,
    "LOADING": rex.BusyLoadingError,
    "WRONGPASS": rex.AuthenticationError,
    "NOAUTH": rex.AuthenticationError,
    "NOPERM": rex.NoPermissionError,
    "READONLY": rex.ReadOnlyError,
    "OOM": rex.OutOfMemoryError,
    "EXECABORT": rex.ExecAbortError,
}
#: ``ERR`` replies redis-py maps to something other than ``ResponseError``
ERR_MESSAGES: dict[str, type[rex.RedisError]] = {
    "max number of clients reached": rex.ConnectionError,
    "invalid password": rex.AuthenticationError,
}


def error_of(message: str) -> rex.RedisError:
    """The redis-py exception for an error reply's text."""
    code, _, rest = message.partition(" ")
    kind = ERROR_CODES.get(code)
    if kind is not None:
        return kind(rest)
    if code == "ERR":
        if rest in ERR_MESSAGES:
            return ERR_MESSAGES[rest](rest)
        if rest.startswith("AUTH") and "password" in rest:  # AUTH sent, no password is set
            return rex.AuthenticationError(rest)
        return rex.ResponseError(rest)
    return rex.ResponseError(message)
