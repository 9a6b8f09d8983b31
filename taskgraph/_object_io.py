"""Values in and out of a client's process: inline when small, through this
host's object stores when large.

A value is serialized once (``encode``): small ones travel inside messages;
large ones are written into the shared memory of a worker daemon on this host
(``worker/store.py``), and messages carry only their location. ``decode``
reads either back: a location on this host from its store, one on another host
as the client's kind says (a driver reads it into its own memory, an executor
has its daemon copy it here first). It knows nothing of refs, waiting or the
scheduler.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskgraph import _wire as w
from taskgraph import serialization
from taskgraph._store_client import StoreClient
from taskgraph.exceptions import ObjectLostError
from taskgraph.settings import settings

if TYPE_CHECKING:
    from taskgraph._tls import TLS

INLINE_LIMIT = 100 * 1024  # values above this go to shared memory


class Unreadable(ObjectLostError):
    """An object's copy could not be read where the scheduler said it was: its
    holder is gone. Readers tell the scheduler (``ObjectUnreadable``), which
    counts that copy lost and has the object made again (scheduler/lineage.py)."""

    def __init__(self, object_id: bytes, worker_id: str, reason: str) -> None:
        super().__init__(object_id.hex(), reason)
        self.worker_id = worker_id


def host_id() -> str:
    """Processes with the same host id share /dev/shm.

    ``TASKGRAPH_HOST_ID`` overrides it, for processes that share a machine but
    should act as separate hosts (containers, network namespaces, tests).
    """
    override = settings().host_id
    if override:
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{os.uname().nodename}/{boot}"


class ObjectIO:
    """One client's values in and out, and its connections to this host's stores.

    ``copy_here(object_id, location)``: a copy on this host of an object on
    another, or None to read it into this process's memory instead.
    """

    def __init__(
        self,
        client_id: bytes,
        token: bytes,
        workers: list[w.WorkerInfo],
        copy_here: Callable[[bytes, w.Location], w.Location | None],
    ) -> None:
        self.client_id = client_id
        self.token = token
        self.host = host_id()
        self.workers = workers  # the cluster's, as the client last heard
        self._copy_here = copy_here
        self.tls: TLS | None = None  # a driver's certificates, when its cluster runs on TLS
        self._stores: dict[str, StoreClient] = {}  # by store address: worker daemons here
        self._lock = threading.Lock()

    def encode(self, oid: bytes, value: Any, what: str) -> w.ReturnValue:
        """Serialize a value once: inline when small, into a local segment when large."""
        buffers: list[Any] = []
        if serialization.is_plain(value):  # checked once here, not again in dumps()
            header, contains = serialization.dumps(value, what=what, plain=True)
        else:
            header, buffers, contains = serialization.dumps_oob(value, what=what)
        size = serialization.serialized_size(header, buffers)
        worker = self.local_worker() if size > INLINE_LIMIT else None
        if worker is None:
            if buffers:  # small, or no store on this host: one in-band blob
                header, contains = serialization.dumps(value, what=what)
            return w.ReturnValue(oid, data=header, contains=contains)
        size = self.store_for(worker.worker_id, worker.address).write(oid, header, buffers)
        location = w.Location(worker.worker_id, worker.address, size, self.host, worker.peer)
        return w.ReturnValue(oid, location=location, contains=contains)

    def decode(self, value: w.Value) -> Any:
        """The value itself (its error raised; ``Unreadable`` if its copy is gone)."""
        if value.error is not None:
            raise serialization.loads_error(value.error)
        if value.location is not None:
            try:
                return self._read(value.object_id, value.location)
            except ObjectLostError as exc:
                raise Unreadable(value.object_id, value.location.worker_id, exc.reason) from exc
        assert value.data is not None
        return serialization.loads(value.data)

    def _read(self, object_id: bytes, location: w.Location) -> Any:
        from taskgraph.worker import transfer

        if location.host != self.host:
            here = self._copy_here(object_id, location)
            if here is None:
                return transfer.pull_into_memory(location, self.token, object_id, self.tls)
            location = here
        try:
            return self.store_for(location.worker_id, location.store).read(object_id)
        except (OSError, ConnectionError) as exc:
            self._forget_store(location.store)
            raise ObjectLostError(
                object_id.hex(), f"the worker daemon holding it is gone ({exc})"
            ) from exc

    def local_worker(self) -> w.WorkerInfo | None:
        for info in self.workers:
            if info.host == self.host:
                return info
        return None

    def store_for(self, worker_id: str, address: str) -> StoreClient:
        """The connection to a worker daemon's object store on this host."""
        with self._lock:
            client = self._stores.get(address)
            if client is None:
                client = StoreClient(worker_id, address, self.token, self.client_id)
                self._stores[address] = client
            return client

    def _forget_store(self, address: str) -> None:
        with self._lock:
            client = self._stores.pop(address, None)
        if client is not None:
            client.close()

    def flush_unpins(self) -> None:
        """Tell the stores which of their objects we stopped reading (the flusher)."""
        for store_client in list(self._stores.values()):
            try:
                store_client.flush_unpins()
            except OSError:
                pass  # that daemon is gone, and its pins with it

    def close(self) -> None:
        with self._lock:
            stores, self._stores = self._stores, {}
        for store_client in stores.values():
            store_client.close()
