"""Large objects in shared memory: one ``/dev/shm`` segment per object.

A segment is written once by the process that made the value (an executor,
or a driver's ``put`` on the same host) and mapped read-only by every reader
on the host: numpy arrays and other protocol-5 buffers come back zero-copy.
The worker daemon owns the segments named after it and unlinks them when the
scheduler frees the object, or all at once when the daemon stops.

Layout (all little-endian, buffers 64-byte aligned)::

    u32 count | u64 header_len | u64 len * count | header | pad | buf0 | pad | buf1 ...
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskgraph import serialization

SHM_DIR = Path(os.environ.get("TASKGRAPH_SHM_DIR", "/dev/shm"))
PREFIX = "tg-"
ALIGN = 64


def segment_name(worker_id: str, object_id: bytes) -> str:
    return f"{PREFIX}{worker_id}-{object_id.hex()}"


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


def write(name: str, header: bytes, buffers: Sequence[Any]) -> int:
    """Write a serialized value into a new segment; return its size in bytes."""
    views = [memoryview(b).cast("B") for b in buffers]
    prefix, offsets, total = _layout(header, [v.nbytes for v in views])
    path = SHM_DIR / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, total)
        with mmap.mmap(fd, total) as mm:
            mm[: len(prefix)] = prefix
            mm[len(prefix) : len(prefix) + len(header)] = header
            for view, offset in zip(views, offsets, strict=True):
                mm[offset : offset + view.nbytes] = view
    except BaseException:
        os.close(fd)
        unlink(name)
        raise
    os.close(fd)
    return total


def read(name: str) -> Any:
    """Map a segment read-only and rebuild its value without copying buffers."""
    path = SHM_DIR / name
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return parse(memoryview(mm))


def parse(view: memoryview) -> Any:
    """Rebuild a value from a segment's bytes (mapped, or received whole)."""
    (count, header_len) = struct.unpack_from("<IQ", view, 0)
    sizes = struct.unpack_from(f"<{count}Q", view, 12)
    prefix_len = 12 + 8 * count
    header = bytes(view[prefix_len : prefix_len + header_len])
    _, offsets, _ = _layout(header, sizes)
    buffers = [view[o : o + s] for o, s in zip(offsets, sizes, strict=True)]
    return serialization.loads(header, buffers)


def create(name: str, size: int) -> mmap.mmap:
    """A new, writable segment of ``size`` bytes (for a copy arriving from a peer)."""
    fd = os.open(SHM_DIR / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        return mmap.mmap(fd, max(size, 1))
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)


def open_readonly(name: str) -> mmap.mmap:
    fd = os.open(SHM_DIR / name, os.O_RDONLY)
    try:
        return mmap.mmap(fd, max(os.fstat(fd).st_size, 1), prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    try:
        os.unlink(SHM_DIR / name)
    except FileNotFoundError:
        pass


def remove_all(worker_id: str) -> int:
    """Unlink every segment of one worker daemon (at its exit or after its crash)."""
    count = 0
    for path in SHM_DIR.glob(f"{PREFIX}{worker_id}-*"):
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count


def segments(worker_id: str = "") -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{PREFIX}{worker_id}*"))
