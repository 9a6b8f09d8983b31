"""Large objects in shared memory: one arena per worker daemon.

The arena is a ``/dev/shm`` file (``tg-<worker id>-arena``) of the store's
capacity, mapped once by every process on the host. The daemon owns the
allocator (:class:`ObjectStore`); other processes ask it over the store
connection (see ``taskgraph/_store_client.py``) for room to write an object
(``create`` then ``seal``) and for where an object is to read it (``pin``,
``unpin`` when the reader's last view of it is gone)::

    writer: create(oid, size) → offset; write; seal(oid)
    reader: pin(oid) → offset (or a spill file); map; ... views die → unpin(oid)

Freed ranges are reused, so their pages stay allocated and stay in each
process's page tables: a large ``put`` runs at memory-copy speed.

Above the capacity, the least recently used sealed objects that nobody has
pinned are written to the spill directory and their room reused; pinning a
spilled object brings it back (or, when nothing can make room, maps the
spill file itself). Only when nothing can be spilled is the store full.

An object's bytes (all little-endian, buffers 64-byte aligned)::

    u32 count | u64 header_len | u64 len * count | header | pad | buf0 | pad | buf1 ...
"""

from __future__ import annotations

import collections
import errno
import itertools
import mmap
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskgraph import config, serialization
from taskgraph.settings import settings

from .arena import Arena, round_up


def shm_dir() -> Path:
    """Where arenas live (``TASKGRAPH_SHM_DIR``)."""
    return Path(settings().shm_dir)


PREFIX = "tg-"
ALIGN = 64
PARALLEL_COPY = 16 << 20  # buffers above this are copied by several threads


def arena_name(worker_id: str) -> str:
    return f"{PREFIX}{worker_id}-arena"


def default_spill_dir(worker_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"taskgraph-spill-{worker_id}"


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _layout(header: bytes, sizes: Sequence[int]) -> tuple[bytes, list[int], int]:
    prefix = struct.pack(f"<IQ{len(sizes)}Q", len(sizes), len(header), *sizes)
    offset = _align(len(prefix) + len(header))
    offsets = []
    for size in sizes:
        offsets.append(offset)
        offset = _align(offset + size)
    return prefix, offsets, max(offset, 1)


def packed_size(header: bytes, buffers: Sequence[Any]) -> int:
    return _layout(header, [memoryview(b).nbytes for b in buffers])[2]


def _copy(dst: memoryview, src: memoryview) -> None:
    """memcpy, split over a few threads when large (numpy lets go of the GIL).

    Threads are started per copy (tens of microseconds, next to milliseconds
    of copying) so that none outlive it.
    """
    n = src.nbytes
    threads = min(4, os.cpu_count() or 1)
    if n < PARALLEL_COPY or threads == 1:
        dst[:n] = src
        return
    import numpy as np  # here: every executor imports this module, few copy this much

    a = np.frombuffer(dst, np.uint8, n)
    b = np.frombuffer(src, np.uint8, n)
    step = -(-n // threads)
    helpers = [
        threading.Thread(target=np.copyto, args=(a[i : i + step], b[i : i + step]))
        for i in range(step, n, step)
    ]
    for helper in helpers:
        helper.start()
    np.copyto(a[:step], b[:step])
    for helper in helpers:
        helper.join()


def pack_into(view: memoryview, header: bytes, buffers: Sequence[Any]) -> None:
    """Write a serialized value into ``view`` (at least ``packed_size`` bytes)."""
    views = [memoryview(b).cast("B") for b in buffers]
    prefix, offsets, _ = _layout(header, [v.nbytes for v in views])
    view[: len(prefix)] = prefix
    view[len(prefix) : len(prefix) + len(header)] = header
    for src, offset in zip(views, offsets, strict=True):
        _copy(view[offset : offset + src.nbytes], src)


def parse(view: memoryview) -> Any:
    """Rebuild a value from an object's bytes; buffers stay views of ``view``."""
    (count, header_len) = struct.unpack_from("<IQ", view, 0)
    sizes = struct.unpack_from(f"<{count}Q", view, 12)
    prefix_len = 12 + 8 * count
    header = bytes(view[prefix_len : prefix_len + header_len])
    _, offsets, _ = _layout(header, sizes)
    buffers = [view[o : o + s] for o, s in zip(offsets, sizes, strict=True)]
    return serialization.loads(header, buffers)


def map_file(path: str | Path, size: int, writable: bool = False) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, max(size, 1), prot=prot)
    finally:
        os.close(fd)


class StoreFull(Exception):
    def __init__(self, needed: int, used: int, capacity: int, reason: str = "") -> None:
        super().__init__(reason or f"{needed} bytes do not fit ({used} of {capacity} in use)")
        self.needed = needed
        self.used = used
        self.capacity = capacity
        self.reason = reason


@dataclass
class Entry:
    size: int
    offset: int | None  # in the arena; None while spilled
    spill_path: Path | None = None
    sealed: bool = False
    pins: int = 0
    freed: bool = False  # the cluster let go of it; goes when the last pin does


@dataclass
class Where:
    """Where a pinned object is to be read: the arena, or its spill file."""

    size: int
    offset: int = -1
    path: str = ""


class ObjectStore:
    """The daemon's side: the arena, who pins what, spilling. Not thread-safe."""

    def __init__(self, worker_id: str, capacity: int, spill_dir: Path | None = None) -> None:
        self.worker_id = worker_id
        self.path = shm_dir() / arena_name(worker_id)
        self.arena = Arena(capacity)
        self.spill_dir = spill_dir or default_spill_dir(worker_id)
        self.entries: collections.OrderedDict[bytes, Entry] = collections.OrderedDict()
        self.holders: dict[Hashable, collections.Counter[bytes]] = {}
        # Freed copies of objects made again since, still pinned: object id -> keys.
        self.retired: dict[bytes, list[bytes]] = {}
        self._retired_of: dict[bytes, bytes] = {}
        self._retired_count = itertools.count()
        self.spilled_bytes = 0
        self.spilled_total = 0  # objects ever spilled
        self.restored_total = 0
        self._committed = 0  # bytes from the start of the arena that have pages
        self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(self._fd, max(self.arena.capacity, 1))
            self._mm = mmap.mmap(self._fd, max(self.arena.capacity, 1))
        except BaseException:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
            raise
        self.view = memoryview(self._mm)

    @property
    def capacity(self) -> int:
        return self.arena.capacity

    # -- writers -----------------------------------------------------------

    def create(self, object_id: bytes, size: int, holder: Hashable) -> int:
        """Room for a new object, pinned by its writer until sealed; its offset."""
        old = self.entries.get(object_id)
        if old is not None and not old.freed and not old.sealed:
            raise ValueError(f"object {object_id.hex()} is already in the store")
        if old is not None and not old.freed:
            # A task run again (lineage) for a lost sibling return of this one,
            # whose copy here lives on: the new bytes go to a place of their own,
            # freed as their writer seals them. Readers keep the copy they know.
            offset = self._allocate(size)
            key = self._retired_key(object_id)
            self.entries[key] = Entry(size, offset, pins=1, freed=True)
            self.holders.setdefault(holder, collections.Counter())[key] += 1
            return offset
        if old is not None:
            self._retire(object_id)
        offset = self._allocate(size)
        self.entries[object_id] = Entry(size, offset, pins=1)
        self.holders.setdefault(holder, collections.Counter())[object_id] += 1
        return offset

    def seal(self, object_id: bytes, holder: Hashable) -> None:
        self.entries[object_id].sealed = True
        self.unpin(object_id, holder)

    # -- readers -----------------------------------------------------------

    def pin(self, object_id: bytes, holder: Hashable) -> Where:
        """Keep an object where it is until unpinned; restore it if spilled."""
        entry = self.entries.get(object_id)
        if entry is None or not entry.sealed:
            raise KeyError(object_id)
        self.entries.move_to_end(object_id)
        if entry.offset is None:
            self._restore(entry)
        entry.pins += 1
        self.holders.setdefault(holder, collections.Counter())[object_id] += 1
        if entry.offset is None:
            assert entry.spill_path is not None
            return Where(entry.size, path=str(entry.spill_path))
        return Where(entry.size, offset=entry.offset)

    def unpin(self, object_id: bytes, holder: Hashable) -> None:
        pins = self.holders.get(holder)
        if pins is None:
            return  # already dropped with its holder
        for key in self.retired.get(object_id, ()):
            if pins[key] > 0:  # (an older copy's pin goes first)
                object_id = key
                break
        if pins[object_id] <= 0:
            return
        pins[object_id] -= 1
        if pins[object_id] == 0:
            del pins[object_id]
        entry = self.entries[object_id]
        entry.pins -= 1
        if entry.pins == 0 and (entry.freed or not entry.sealed):
            self._release(object_id)

    def drop_holder(self, holder: Hashable) -> None:
        """A process went away: its pins go, and what it never sealed is freed."""
        for object_id, count in (self.holders.pop(holder, None) or {}).items():
            entry = self.entries[object_id]
            entry.pins -= count
            if entry.pins == 0 and (entry.freed or not entry.sealed):
                self._release(object_id)

    # -- the cluster -------------------------------------------------------

    def _retire(self, object_id: bytes) -> None:
        """An object is made again (lineage) while readers still map its freed
        copy: that copy moves to a key of its own, kept until their pins go."""
        key = self._retired_key(object_id)
        self.entries[key] = self.entries.pop(object_id)
        for pins in self.holders.values():
            if object_id in pins:
                pins[key] = pins.pop(object_id)

    def _retired_key(self, object_id: bytes) -> bytes:
        key = object_id + b"~" + next(self._retired_count).to_bytes(8, "big")
        self.retired.setdefault(object_id, []).append(key)
        self._retired_of[key] = object_id
        return key

    def free(self, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is None:
            return
        if entry.pins:
            entry.freed = True  # readers still map it
        else:
            self._release(object_id)

    def read(self, object_id: bytes) -> memoryview:
        """The bytes of a pinned object (the daemon's own reads: peers, spilling)."""
        entry = self.entries[object_id]
        if entry.offset is not None:
            return self.view[entry.offset : entry.offset + entry.size]
        assert entry.spill_path is not None
        return memoryview(map_file(entry.spill_path, entry.size))

    def stats(self) -> dict[str, int]:
        in_memory = [e.size for e in self.entries.values() if e.offset is not None]
        return {
            "objects": len(self.entries),
            "bytes_in_memory": sum(in_memory),
            "bytes_reserved": self.arena.used,
            "capacity": self.capacity,
            "bytes_spilled": self.spilled_bytes,
            "objects_spilled": len(self.entries) - len(in_memory),
            "spilled_total": self.spilled_total,
            "restored_total": self.restored_total,
        }

    def close(self) -> None:
        self.view.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # a view is still out (a transfer in flight); the mapping dies with us
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    # -- inside ----------------------------------------------------------

    def _allocate(self, size: int) -> int:
        if round_up(size) > self.capacity:
            raise StoreFull(
                size, self.arena.used, self.capacity, "larger than the whole object store"
            )
        while (offset := self.arena.allocate(size)) is None:
            victim = next(
                (
                    oid
                    for oid, e in self.entries.items()
                    if e.offset is not None and e.sealed and e.pins == 0
                ),
                None,
            )
            if victim is None:
                raise StoreFull(size, self.arena.used, self.capacity)
            self._spill(victim)
        end = offset + round_up(size)
        if end > self._committed:
            # Give the pages a home now: a write into a /dev/shm that ran out
            # of room would kill the writer with SIGBUS instead of an error.
            try:
                os.posix_fallocate(self._fd, self._committed, end - self._committed)
            except OSError as exc:
                self.arena.free(offset)
                if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise StoreFull(
                        size, self.arena.used, self.capacity, f"{shm_dir()} is out of space"
                    ) from exc
                raise
            self._committed = end
        return offset

    def _spill(self, object_id: bytes) -> None:
        entry = self.entries[object_id]
        assert entry.offset is not None
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / object_id.hex()
        with open(path, "wb") as f:
            f.write(self.view[entry.offset : entry.offset + entry.size])
        self.arena.free(entry.offset)
        entry.offset = None
        entry.spill_path = path
        self.spilled_bytes += entry.size
        self.spilled_total += 1

    def _restore(self, entry: Entry) -> None:
        """Back into the arena if room can be made; else it is read from its file."""
        assert entry.spill_path is not None
        try:
            offset = self._allocate(entry.size)
        except StoreFull:
            return
        with open(entry.spill_path, "rb") as f:
            f.readinto(self.view[offset : offset + entry.size])
        entry.spill_path.unlink(missing_ok=True)
        entry.spill_path = None
        entry.offset = offset
        self.spilled_bytes -= entry.size
        self.restored_total += 1

    def _release(self, object_id: bytes) -> None:
        entry = self.entries.pop(object_id)
        original = self._retired_of.pop(object_id, None)
        if original is not None:  # a retired copy (see _retire)
            keys = self.retired[original]
            keys.remove(object_id)
            if not keys:
                del self.retired[original]
        if entry.offset is not None:
            self.arena.free(entry.offset)
        if entry.spill_path is not None:
            entry.spill_path.unlink(missing_ok=True)
            self.spilled_bytes -= entry.size


def remove_all(worker_id: str, spill_dir: str | Path | None = None) -> int:
    """Remove a worker daemon's arena and spill files (at its exit or after its crash)."""
    count = 0
    for path in shm_dir().glob(f"{PREFIX}{worker_id}-*"):
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    shutil.rmtree(spill_dir or default_spill_dir(worker_id), ignore_errors=True)
    return count


def segments(worker_id: str = "") -> list[str]:
    return sorted(p.name for p in shm_dir().glob(f"{PREFIX}{worker_id}*"))


def default_capacity() -> int:
    """30% of the host's memory, as Ray; no more than /dev/shm can hold."""
    import psutil

    total = int(psutil.virtual_memory().total * 0.3)
    try:
        usage = shutil.disk_usage(shm_dir())
        total = min(total, int(usage.free * 0.8))
    except OSError:
        pass
    return max(total // 4096 * 4096, 64 << 20)


def sweep_dead_daemons() -> int:
    """Remove the arenas, spill files, socket folders and records of worker daemons that died.

    A daemon cleans up after itself when it stops; one killed outright
    cannot, so the next daemon on the host (or ``taskgraph stop``) does.
    """
    swept = 0
    for record in config.records("daemon"):
        if record["alive"]:
            continue
        worker_id = str(record.get("worker_id", ""))
        folder = Path(record.get("shm_dir") or shm_dir())
        if worker_id:
            for path in folder.glob(f"{PREFIX}{worker_id}-*"):
                path.unlink(missing_ok=True)
            spill_dir = record.get("spill_dir")
            if spill_dir and os.path.basename(str(spill_dir)).startswith("taskgraph-spill-"):
                shutil.rmtree(str(spill_dir), ignore_errors=True)
        socket_dir = str(record.get("socket_dir", ""))
        if os.path.basename(socket_dir).startswith("tg-"):
            shutil.rmtree(socket_dir, ignore_errors=True)
        config.forget(record)
        swept += 1
    return swept
