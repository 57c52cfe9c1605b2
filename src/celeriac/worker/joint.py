"""Results and acks in one round trip, when the result store and the broker are one Redis.

The worker's batch (``worker.iobatch.IOBatch``) stores a turn's results, then acks their
messages. When the result backend's native store and the broker's transport are the same Redis
server and database (``same_redis`` of their URLs) and the drivers offer it (the store's
``set_publish_args``, the transport's ``ack_with_writes``), both go out as one script call on
the broker's connection: the writes (``SET`` + ``PUBLISH`` each, what the store itself would
send) and then the acks, in one atomic step. So a result is stored before its message is acked,
and a write that fails acks nothing, as with two calls; a failed call is retried whole (the
writes are idempotent; an ack of a message no longer held is skipped).

Nothing here imports a driver: the capabilities are looked up on the objects the worker has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from celeriac._internal.urls import same_redis

if TYPE_CHECKING:
    from celeriac.backends.base import AsyncResultBackend
    from celeriac.protocol.result_meta import ResultMeta
    from celeriac.transports.base import AsyncTransport, Delivery


@runtime_checkable
class _WritesWithAcks(Protocol):
    url: str

    async def ack_with_writes(
        self, deliveries: Sequence[Delivery], keys: Sequence[str], args: Sequence[Any]
    ) -> bool: ...


@runtime_checkable
class _ScriptWrites(Protocol):
    url: str

    def set_publish_args(
        self, items: Sequence[tuple[str, bytes, float | None]]
    ) -> tuple[list[str], list[Any]]: ...


class JointWriter:
    """Stores results and acks messages with one call (see the module docstring)."""

    def __init__(
        self, backend: AsyncResultBackend, store: _ScriptWrites, transport: _WritesWithAcks
    ) -> None:
        self.backend = backend
        self.store = store
        self.transport = transport

    @classmethod
    def find(
        cls, transport: AsyncTransport, backend: AsyncResultBackend | None
    ) -> JointWriter | None:
        """A writer when ``transport`` and ``backend``'s native store are one Redis, else None."""
        store = getattr(backend, "store", None)
        if (
            backend is None
            or not isinstance(store, _ScriptWrites)
            or not isinstance(transport, _WritesWithAcks)
            or not same_redis(transport.url, store.url)
        ):
            return None
        return cls(backend, store, transport)

    async def store_and_ack(self, metas: Sequence[ResultMeta], acks: Sequence[Delivery]) -> bool:
        """Write the records of ``metas``, then ack ``acks``, in one call; False when nothing
        was done (too many acks for one call): store and ack separately then. Raises what
        encoding a record raises (``EncodeError``, ...) before anything is sent."""
        items = await self.backend.writes_for(metas)
        keys, args = self.store.set_publish_args(items)
        return await self.transport.ack_with_writes(acks, keys, args)
