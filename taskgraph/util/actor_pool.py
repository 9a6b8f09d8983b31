"""``ActorPool``: spread work over a fixed set of actors, one call per idle actor.

Work submitted while every actor is busy waits here, in order, and goes to the
first actor that comes back. Results come back in submission order
(``get_next``, ``map``) or as they finish (``get_next_unordered``,
``map_unordered``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from taskgraph import _api
from taskgraph._object_ref import ObjectRef
from taskgraph.exceptions import GetTimeoutError

Submit = Callable[[Any, Any], ObjectRef]


class ActorPool:
    def __init__(self, actors: Iterable[Any]) -> None:
        self._idle: list[Any] = list(actors)
        self._busy: dict[ObjectRef, tuple[int, Any]] = {}  # ref -> (submission index, actor)
        self._by_index: dict[int, ObjectRef] = {}
        self._waiting: deque[tuple[Submit, Any]] = deque()
        self._submitted = 0
        self._returned = 0

    def __repr__(self) -> str:
        return (
            f"ActorPool(idle={len(self._idle)}, busy={len(self._busy)}, "
            f"waiting={len(self._waiting)})"
        )

    def submit(self, fn: Submit, value: Any) -> None:
        """Run ``fn(actor, value)`` (which returns a ref) on an idle actor, or queue it."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        if not isinstance(ref, ObjectRef):
            raise TypeError(
                f"the function given to ActorPool must return an ObjectRef, got {ref!r}"
            )
        self._busy[ref] = (self._submitted, actor)
        self._by_index[self._submitted] = ref
        self._submitted += 1

    def has_next(self) -> bool:
        return bool(self._busy) or bool(self._waiting)

    def get_next(self, timeout: float | None = None) -> Any:
        """The next result in submission order."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        while self._returned not in self._by_index:
            self._returned += 1  # taken already by get_next_unordered
        ref = self._by_index[self._returned]
        ready, _ = _api.wait([ref], timeout=timeout)
        if not ready:
            raise GetTimeoutError(timeout)
        del self._by_index[self._returned]
        self._returned += 1
        return self._finish(ref)

    def get_next_unordered(self, timeout: float | None = None) -> Any:
        """Whichever result is ready first."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        ready, _ = _api.wait(list(self._busy), num_returns=1, timeout=timeout)
        if not ready:
            raise GetTimeoutError(timeout)
        ref = ready[0]
        del self._by_index[self._busy[ref][0]]
        return self._finish(ref)

    def _finish(self, ref: ObjectRef) -> Any:
        _, actor = self._busy.pop(ref)
        self._give_back(actor)
        return _api.get(ref)

    def _give_back(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    def map(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    def has_free(self) -> bool:
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any | None:
        """Take an idle actor out of the pool, or None if none is idle."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (it must not belong to it already)."""
        if actor in self._idle or any(a == actor for _, a in self._busy.values()):
            raise ValueError("this actor already belongs to the pool")
        self._give_back(actor)
