"""Messages of the object store: any process with its host's worker daemon, and
daemons on two hosts (peer transfer).

A process asks its host's daemon for room to write an object, seals it, and
pins it to read it (``worker/store.py``, ``taskgraph/_store_client.py``); a
daemon pulls an object held on another host from that host's peer server
(``worker/transfer.py``).
"""

from __future__ import annotations

from .common import Msg

# -- a process <-> its host's worker daemon (the object store) -----------------


class StoreCreate(Msg):
    """Room for a new object of ``size`` bytes; answered with a StoreReply."""

    object_id: bytes
    size: int


class StoreSeal(Msg):
    """The object is written; answered, so readers never see it half-done."""

    object_id: bytes


class StorePin(Msg):
    """Where is the object? Keep it there until unpinned."""

    object_id: bytes


class StoreUnpin(Msg):
    """Not answered: the last views of these objects are gone."""

    object_ids: list[bytes]


class StoreStats(Msg):
    """What the store holds; answered with a StoreReply carrying ``stats``."""


class StoreReply(Msg):
    object_id: bytes
    offset: int = -1  # in the arena
    size: int = 0
    path: str = ""  # a spilled object's file, when it could not come back
    error: str = ""
    full: list[int] | None = None  # needed, used, capacity: the store is full
    stats: dict[str, int] | None = None
    object_ids: list[bytes] | None = None  # with stats: every object held


# -- worker <-> worker (peer transfer) ----------------------------------------


class FetchObject(Msg):
    object_id: bytes


class ObjectData(Msg):
    """Followed on the stream by exactly ``size`` raw bytes: the object."""

    object_id: bytes
    size: int


class ObjectMissing(Msg):
    object_id: bytes
    reason: str
