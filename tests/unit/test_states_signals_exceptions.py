"""States precedence, signals dispatch, the exception tree."""

from __future__ import annotations

from typing import Any

from celeriac import exceptions, signals, states


def test_state_precedence_matches_celery() -> None:
    assert states.state(states.SUCCESS) > states.state(states.PENDING)
    assert states.state(states.FAILURE) > states.state(states.RETRY)
    assert states.state(states.STARTED) > states.state(states.RECEIVED)
    assert states.state("PROGRESS") > states.state(states.STARTED)  # custom states
    assert {states.SUCCESS, states.FAILURE, states.REVOKED} == states.READY_STATES


def test_signal_robust_send() -> None:
    sig = signals.Signal("x")
    seen: list[Any] = []

    def boom(sender: Any, **kw: Any) -> None:
        raise RuntimeError("boom")

    @sig.connect
    def good(sender: Any, **kw: Any) -> str:
        seen.append((sender, kw["value"]))
        return "ok"

    sig.connect(boom)
    results = sig.send(sender="s", value=1)
    assert seen == [("s", 1)]
    assert results[0][1] == "ok"
    assert isinstance(results[1][1], RuntimeError)
    assert sig.disconnect(boom)


def test_exception_tree() -> None:
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        if name != "SoftTimeLimitExceeded":
            assert issubclass(cls, exceptions.CeleriacError), name
    assert issubclass(exceptions.Retry, exceptions.TaskPredicate)
    assert issubclass(exceptions.NotRegistered, KeyError)
    err = exceptions.DecodeError("bad", field="headers.id")
    assert err.field == "headers.id"
    assert "in 5" in str(exceptions.Retry(when=5))
