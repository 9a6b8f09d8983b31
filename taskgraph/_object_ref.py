"""``ObjectRef``: a future for a value somewhere in the cluster.

A ref is 16 bytes of id and a pointer to this process's client, which counts
the live refs per id and tells the scheduler when the last one is gone.
Pickling a ref (into a task's arguments, a ``put`` value, a return value)
records its id so the container keeps the object alive; unpickling one in
another process makes that process a holder too.

A ref the user makes from an id (``ObjectRef(ref.binary())``,
``ObjectRef.from_hex(ref.hex())``: the id crossed out of band, as text or
bytes) is a holder like an unpickled one, from when the scheduler hears of
it. Ids as text or bytes hold nothing, so, as in Ray, whoever hands one over
keeps the original ref alive until the receiver has made its own; an id whose
object was freed meanwhile gives ``ObjectLostError``.
"""

from __future__ import annotations

import concurrent.futures
import enum
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal

from taskgraph import serialization

if TYPE_CHECKING:
    from taskgraph._client import Client


class _Made(enum.Enum):
    BY_USER = "by the user, from an id"


ID_BYTES = 16


class ObjectRef:
    """A future for a value somewhere in the cluster.

    ``ObjectRef(binary)`` and ``ObjectRef.from_hex(text)`` make a ref from the
    id another ref gave (``ref.binary()``, ``ref.hex()``), as in Ray; see the
    module's docstring for what it holds."""

    __slots__ = ("__weakref__", "_client", "_id")

    def __init__(
        self,
        object_id: bytes,
        client: Client | Literal[_Made.BY_USER] | None = _Made.BY_USER,
        *,
        borrowed: bool = False,
    ) -> None:
        if client is _Made.BY_USER:
            from taskgraph import _api

            self._client = None  # (__del__ runs even when the id is refused)
            object_id = _checked_id(object_id)
            client, borrowed = _api.current_client(), True
        self._id = object_id
        self._client = client
        if client is not None:
            client.incref(object_id, acquire=borrowed)

    @classmethod
    def from_hex(cls, hex_id: str) -> ObjectRef:
        """The ref whose ``hex()`` is ``hex_id`` (Ray's ``ObjectRef.from_hex``)."""
        try:
            object_id = bytes.fromhex(hex_id)
        except (TypeError, ValueError):
            raise ValueError(
                f"{hex_id!r} is not an object id: expected {2 * ID_BYTES} hex digits, "
                "as ref.hex() gives them"
            ) from None
        return cls(object_id)

    def __del__(self) -> None:
        client = self._client
        if client is not None:
            # Only an append: __del__ may run in any thread, inside any lock.
            client.released.append(self._id)

    def __reduce__(self) -> tuple[Any, ...]:
        if not serialization.note_ref(self._id) and self._client is not None:
            # Pickled by the user (out of band): nobody can tell when those bytes
            # die, so, as in Ray, the object stays alive while this client is
            # connected: a count that is never given back.
            self._client.incref(self._id, acquire=False)
        return (_rebuild_ref, (self._id,))

    def __copy__(self) -> ObjectRef:
        return self  # immutable; and not through __reduce__, which would pin the object

    def __deepcopy__(self, memo: Any) -> ObjectRef:
        return self

    @property
    def id(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def binary(self) -> bytes:
        return self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def _repr_html_(self) -> str:
        from taskgraph import _html  # here: executors never draw HTML

        return _html.object_ref(self._id.hex(), self._state())

    def _state(self) -> str:
        """What this process knows of the value without asking anyone: ``ready``,
        ``failed``, or ``not here yet`` (running, waiting, or done but not fetched)."""
        value = self._client.peek(self._id) if self._client is not None else None
        if value is None:
            return "not here yet"
        return "failed" if value.error is not None else "ready"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def _require_client(self) -> Client:
        if self._client is None:
            from taskgraph import _api

            self._client = _api.client()
            self._client.incref(self._id, acquire=True)
        return self._client

    def result(self, timeout: float | None = None) -> Any:
        """Block for the value, like ``tg.get(ref)``."""
        return self._require_client().get([self], timeout)[0]

    def done(self) -> bool:
        return self._require_client().is_ready(self._id)

    def future(self) -> concurrent.futures.Future[Any]:
        """A ``concurrent.futures.Future`` that completes with the value or the error."""
        return self._require_client().future(self)

    def __await__(self) -> Generator[Any, None, Any]:
        import asyncio  # here: asyncio costs every process ~20 ms to import

        return asyncio.wrap_future(self.future()).__await__()


serialization.register_plain_type(ObjectRef)


def _checked_id(object_id: Any) -> bytes:
    if isinstance(object_id, bytearray | memoryview):
        object_id = bytes(object_id)
    if not isinstance(object_id, bytes) or len(object_id) != ID_BYTES:
        size = (
            f"{len(object_id)} bytes" if isinstance(object_id, bytes) else type(object_id).__name__
        )
        raise ValueError(
            f"an object id is {ID_BYTES} bytes, as ref.binary() gives them; got {size}"
        )
    return object_id


def _rebuild_ref(object_id: bytes) -> ObjectRef:
    from taskgraph import _api

    return ObjectRef(object_id, _api.current_client(), borrowed=True)


class ObjectRefGenerator:
    """What ``.remote()`` of a generator function (or an actor's generator method)
    returns: refs to items as they are yielded (Ray's ``num_returns="streaming"``).

    Iterating blocks until the task yields the next item (or ends); each item
    is its own object, readable before the task finishes. An error raised by
    the generator surfaces when iteration reaches it. ``async for`` waits on a
    thread instead, leaving the event loop free.
    """

    def __init__(self, task_id: bytes, end: ObjectRef, client: Client) -> None:
        self._task_id = task_id
        self._end = end  # the task's return: how many items it yielded
        self._client = client
        self._next = 0

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()}, next={self._next})"

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        from taskgraph._ids import generator_item_id

        item = ObjectRef(generator_item_id(self._task_id, self._next), self._client)
        self._client.wait_values([item.id, self._end.id], 1, None)
        value = self._client.peek(item.id)
        if value is None and self._end_failed():
            # A failed end may overtake the items before it (an actor's direct
            # call answers down its channel; its items come by the scheduler),
            # and tells no count: wait for the item, which the scheduler settles
            # (an error if it was never yielded).
            self._client.wait_values([item.id], 1, None)
            value = self._client.peek(item.id)
        if value is None or value.error is not None:
            # Not yielded (yet): the task ended. Its count, or its error, says why.
            count = self._end.result()
            if self._next >= count:
                raise StopIteration
        self._next += 1
        return item

    def _end_failed(self) -> bool:
        end = self._client.peek(self._end.id)
        return end is not None and end.error is not None

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        item = await asyncio.to_thread(self._next_or_none)
        if item is None:
            raise StopAsyncIteration
        return item

    def _next_or_none(self) -> ObjectRef | None:
        try:
            return self.__next__()
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        """A ref that is ready when the generator has finished (its value: the item count)."""
        return self._end

    def __reduce__(self) -> Any:
        raise TypeError("an ObjectRefGenerator cannot leave the process that submitted its task")


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of what it yielded, in order.

    An ordinary value: ``get`` it, or pass its ref (or it) to other tasks.
    If the generator raised, the last ref holds the error (``get`` raises it).
    """

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
