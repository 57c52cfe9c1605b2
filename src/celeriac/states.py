"""Task states with Celery's names and precedence.

``precedence(state)`` orders states so that a newer, more final state wins when two writes race:
SUCCESS/FAILURE/REVOKED beat RETRY beat STARTED beat RECEIVED beat PENDING. Unknown (custom) states
sit between RETRY and STARTED, as in Celery.
"""

from __future__ import annotations

PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"
RETRY = "RETRY"
IGNORED = "IGNORED"

#: Most final first; index = precedence rank (lower wins).
PRECEDENCE: list[str | None] = [
    SUCCESS,
    FAILURE,
    None,  # custom states
    REVOKED,
    STARTED,
    RECEIVED,
    REJECTED,
    RETRY,
    PENDING,
]
_NONE_INDEX = PRECEDENCE.index(None)
_LOOKUP = {state: i for i, state in enumerate(PRECEDENCE)}

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, REJECTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED})

ALL_STATES = frozenset(
    {PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED, IGNORED}
)


def precedence(state: str | None) -> int:
    """Rank of ``state``: a lower number is more final."""
    return _LOOKUP.get(state, _NONE_INDEX)


class state(str):
    """A state string that compares by precedence: ``state(SUCCESS) > state(PENDING)``."""

    def __gt__(self, other: object) -> bool:
        return precedence(self) < precedence(str(other))

    def __ge__(self, other: object) -> bool:
        return precedence(self) <= precedence(str(other))

    def __lt__(self, other: object) -> bool:
        return precedence(self) > precedence(str(other))

    def __le__(self, other: object) -> bool:
        return precedence(self) >= precedence(str(other))

    __hash__ = str.__hash__
