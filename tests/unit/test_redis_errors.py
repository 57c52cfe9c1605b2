"""Redis error replies become redis-py's exception classes (``_internal.redis_errors``)."""

from __future__ import annotations

import redis

from celeriac._internal.redis_errors import error_of


def test_error_reply_mapping() -> None:
    assert isinstance(error_of("NOSCRIPT No matching script"), redis.exceptions.NoScriptError)
    loading = error_of("LOADING Redis is loading the dataset in memory")
    assert isinstance(loading, redis.ConnectionError)  # ``Link`` retries it
    wrongpass = error_of("WRONGPASS invalid username-password pair")
    assert isinstance(wrongpass, redis.exceptions.AuthenticationError)
    assert isinstance(error_of("NOAUTH Authentication required."), redis.AuthenticationError)
    full = error_of("ERR max number of clients reached")
    assert type(full) is redis.ConnectionError
    assert type(error_of("ERR unknown command 'X'")) is redis.ResponseError
    assert isinstance(error_of("READONLY You can't write"), redis.exceptions.ReadOnlyError)
