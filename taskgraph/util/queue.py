"""``Queue``: a first-in first-out queue shared by tasks, actors and drivers, as Ray's.

The items live in one async actor (an ``asyncio.Queue``); the ``Queue`` object
is a thin handle around it, so it can be passed to tasks and actors like any
value and every holder sees the same queue. A blocking ``put`` or ``get``
waits inside the actor, which serves many waiters at once, so a consumer
waiting for an item never stops a producer from adding one.

Items travel wrapped in a list: an ``ObjectRef`` put in the queue comes out
as the same ``ObjectRef``, not as its value (Ray resolves it on the way in).
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections.abc import Iterable
from typing import Any

from taskgraph import _api
from taskgraph._object_ref import ObjectRef
from taskgraph.actor import TERMINATE, ActorClass, kill

__all__ = ["Empty", "Full", "Queue"]


class Empty(queue.Empty):
    """``get`` found no item (``block=False``, or none came within ``timeout``)."""


class Full(queue.Full):
    """``put`` found no room (``block=False``, or none came within ``timeout``)."""


class _QueueActor:
    """Holds the items. Answers are (ok, value) pairs, never exceptions: an empty or
    full queue is an ordinary outcome, and the handle raises ``Empty``/``Full`` itself."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize)

    async def qsize(self) -> int:
        return self.items.qsize()

    async def put(self, item: list[Any], timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self.items.put(item), timeout)
        except TimeoutError:
            return False
        return True

    async def put_nowait(self, item: list[Any]) -> bool:
        try:
            self.items.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def put_nowait_batch(self, items: list[list[Any]]) -> bool:
        if self.maxsize > 0 and self.items.qsize() + len(items) > self.maxsize:
            return False  # all or nothing
        for item in items:
            self.items.put_nowait(item)
        return True

    async def get(self, timeout: float | None) -> tuple[bool, list[Any] | None]:
        try:
            return True, await asyncio.wait_for(self.items.get(), timeout)
        except TimeoutError:
            return False, None

    async def get_nowait(self) -> tuple[bool, list[Any] | None]:
        try:
            return True, self.items.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    async def get_nowait_batch(self, n: int) -> list[list[Any]] | None:
        if self.items.qsize() < n:
            return None  # all or nothing
        return [self.items.get_nowait() for _ in range(n)]


@functools.cache
def _queue_actor_class() -> Any:
    return ActorClass(_QueueActor, {})


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    return timeout


class Queue:
    """A FIFO queue every task, actor and driver holding it shares.

    ``maxsize`` <= 0: no bound. ``actor_options``: options for the actor that
    holds the items (e.g. ``{"num_cpus": 0, "name": "jobs"}``)."""

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {maxsize!r}")
        self.maxsize = maxsize
        self.actor = _queue_actor_class().options(**(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def __repr__(self) -> str:
        return f"Queue(maxsize={self.maxsize})"

    def size(self) -> int:
        """How many items are in the queue now."""
        return int(_api.get(self.actor.qsize.remote()))

    qsize = size

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.size()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; with ``block``, wait for room (at most ``timeout`` seconds),
        else raise ``Full`` at once if there is none."""
        if not _api.get(self._put(item, block, timeout)):
            raise Full(_full_message(self.maxsize, timeout if block else None))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not await self._put(item, block, timeout):
            raise Full(_full_message(self.maxsize, timeout if block else None))

    def _put(self, item: Any, block: bool, timeout: float | None) -> ObjectRef:
        timeout = _check_timeout(timeout)
        if block:
            return self.actor.put.remote([item], timeout)
        return self.actor.put_nowait.remote([item])

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add all of ``items`` at once, or none of them (``Full``) if they do not fit."""
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"put_nowait_batch() takes a list of items, got {type(items).__name__}")
        wrapped = [[item] for item in items]
        if not _api.get(self.actor.put_nowait_batch.remote(wrapped)):
            raise Full(f"{len(wrapped)} items do not fit in a queue of maxsize {self.maxsize}")

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; with ``block``, wait for one (at most ``timeout``
        seconds), else raise ``Empty`` at once if there is none."""
        found, item = _api.get(self._get(block, timeout))
        if not found:
            raise Empty(_empty_message(timeout if block else None))
        return item[0]

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        found, item = await self._get(block, timeout)
        if not found:
            raise Empty(_empty_message(timeout if block else None))
        return item[0]

    def _get(self, block: bool, timeout: float | None) -> ObjectRef:
        timeout = _check_timeout(timeout)
        if block:
            return self.actor.get.remote(timeout)
        return self.actor.get_nowait.remote()

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Take ``num_items`` items at once, or none of them (``Empty``) if there are fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError(f"num_items must be a non-negative int, got {num_items!r}")
        items = _api.get(self.actor.get_nowait_batch.remote(num_items))
        if items is None:
            raise Empty(f"fewer than {num_items} items in the queue")
        return [item[0] for item in items]

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor: the items in it are lost, later calls fail. Without
        ``force`` it ends after the calls already sent to it (within ``grace_period_s``)."""
        if force:
            kill(self.actor)
            return
        done = getattr(self.actor, TERMINATE).remote()
        ready, _ = _api.wait([done], timeout=grace_period_s)
        if not ready:
            kill(self.actor)


def _full_message(maxsize: int, timeout: float | None) -> str:
    within = "" if not timeout else f" within {timeout:g} s"
    return f"no room in the queue (maxsize {maxsize}){within}"


def _empty_message(timeout: float | None) -> str:
    return "no item in the queue" + ("" if not timeout else f" within {timeout:g} s")
