"""A process's connection to the object store of a worker daemon on its host.

The arena is mapped once per process and stays mapped, so writing into a
range that was used before costs no page faults. Each request is answered
in order on this connection; unpins ride along with the next request (or the
client's flusher sends them), so dropping a view costs no round trip.

A value read from the store keeps its object pinned while any view of it is
alive: the views are slices of one read-only numpy array whose finalizer
queues the unpin. If this process dies, the daemon sees the connection close
and drops its pins.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from typing import Any

from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection, connect_blocking
from taskgraph.exceptions import ObjectLostError, ObjectStoreFullError
from taskgraph.settings import settings
from taskgraph.worker import store

# When the store is full, wait this long for other processes to let go of
# views (their unpins may be on the way) before raising ObjectStoreFullError.


class StoreClient:
    def __init__(self, worker_id: str, address: str, token: bytes, client_id: bytes) -> None:
        self.worker_id = worker_id
        self.address = address
        hello = w.Hello("store", b"", client_id, pid=os.getpid())
        self.conn: BlockingConnection
        self.conn, _ = connect_blocking(address, token, hello, w.STORE_REPLIES)
        try:
            path = store.shm_dir() / store.arena_name(worker_id)
            self._mm = store.map_file(path, os.stat(path).st_size, writable=True)
        except BaseException:
            self.conn.close()
            raise
        self.view = memoryview(self._mm)
        self._lock = threading.Lock()
        self._unpins: collections.deque[bytes] = collections.deque()

    def _ask(self, msg: Any) -> w.StoreReply:
        with self._lock:
            unpins = self._take_unpins()
            self.conn.send([*unpins, msg])
            (reply,) = self.conn.recv()
        assert isinstance(reply, w.StoreReply)
        return reply

    def _take_unpins(self) -> list[w.Msg]:
        oids = []
        while self._unpins:
            oids.append(self._unpins.popleft())
        return [w.StoreUnpin(oids)] if oids else []

    def flush_unpins(self) -> None:
        if self._unpins:
            with self._lock:
                unpins = self._take_unpins()
                if unpins:
                    self.conn.send(unpins)

    # -- writing ---------------------------------------------------------

    def write(self, object_id: bytes, header: bytes, buffers: list[Any]) -> int:
        """Store a serialized value; return its size. Raises ObjectStoreFullError."""
        size = store.packed_size(header, buffers)
        deadline = time.monotonic() + settings().store_full_wait
        pause = 0.005
        while True:
            reply = self._ask(w.StoreCreate(object_id, size))
            if reply.full is None or reply.full[0] > reply.full[2]:
                break  # stored, or it could never fit
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.2)
        if reply.full is not None:
            needed, used, capacity = reply.full
            raise ObjectStoreFullError(needed, used, capacity, node=self.worker_id)
        if reply.error:
            raise RuntimeError(f"the object store refused {object_id.hex()}: {reply.error}")
        store.pack_into(self.view[reply.offset : reply.offset + size], header, buffers)
        self._ask(w.StoreSeal(object_id))
        return size

    # -- reading ---------------------------------------------------------

    def read(self, object_id: bytes) -> Any:
        reply = self._ask(w.StorePin(object_id))
        if reply.error:
            raise ObjectLostError(object_id.hex(), reply.error)
        if reply.path:  # spilled, and no room to bring it back: map its file
            base = memoryview(store.map_file(reply.path, reply.size))
        else:
            base = self.view[reply.offset : reply.offset + reply.size].toreadonly()
        import numpy as np  # here: most processes never read from a store

        holder = np.frombuffer(base, np.uint8, reply.size)
        weakref.finalize(holder, self._unpins.append, object_id)
        return store.parse(memoryview(holder))  # type: ignore[arg-type]

    def stats(self) -> tuple[dict[str, int], list[bytes]]:
        reply = self._ask(w.StoreStats())
        return reply.stats or {}, reply.object_ids or []

    def close(self) -> None:
        try:
            self.flush_unpins()
        except OSError:
            pass
        self.conn.close()
        self.view.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # the user still holds values read from it; unmapped at exit
