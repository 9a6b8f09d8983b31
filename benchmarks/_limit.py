"""The physical limit: what the machine does with no scheduler in the way.

Task rates: a bare ``multiprocessing.Pool(2)`` sending each call as its own
message (``apply``/``apply_async``, ``map`` with ``chunksize=1``), no objects,
no refs. Bytes: ``np.copyto`` into a destination whose pages are already
touched, the memory-bandwidth bound on a put that must copy once. Transfer
between hosts: one TCP socket on loopback, sending from reused buffers into
reused buffers, which is all a daemon-to-daemon pull must do at the least.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
from typing import Any

import numpy as np

from benchmarks import _engine
from benchmarks._engine import NUM_CPUS, Unsupported, Workload


class LimitEngine:
    name = "limit"

    def __init__(self) -> None:
        self.pool: Any = None

    def start(self) -> None:
        self.pool = multiprocessing.Pool(NUM_CPUS)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def cold_start(self, settle: float) -> dict[str, float]:
        raise Unsupported("no physical limit for cluster start")

    def workload(self, key: str, n: int) -> Workload:
        pool = self.pool
        f = _engine.small_value
        if key == "tasks_sync":
            return Workload(lambda: pool.apply(f), 1)
        if key in ("tasks_async", "tasks_and_get_batch"):

            def batch() -> None:
                for result in [pool.apply_async(f) for _ in range(n)]:
                    result.get()

            return Workload(batch, n if key == "tasks_async" else 1)
        if key in ("put_gigabytes", "get_large"):
            source = _engine.big_array(n)
            destination = np.empty_like(source)
            destination.fill(2)
            return Workload(lambda: np.copyto(destination, source), source.nbytes / 1e9)
        if key == "map":
            return Workload(lambda: pool.map(_engine.inc, range(n), chunksize=1), n)
        if key == "transfer_gigabytes":
            return loopback_workload(8 * n)
        raise Unsupported(f"no physical limit for {key!r}")


CHUNK = 16 << 20


def loopback_workload(nbytes: int) -> Workload:
    """Send ``nbytes`` through one loopback TCP connection to a thread that reads them."""
    chunk = memoryview(bytes(CHUNK))
    inbox = memoryview(bytearray(CHUNK))
    inbox[:] = chunk  # touch the receiving pages once, outside the timing

    def send() -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            # A daemon thread: if sending fails, the reader must not keep us alive.
            reader = threading.Thread(target=_receive, args=(server, inbox, nbytes), daemon=True)
            reader.start()
            with socket.create_connection(server.getsockname()) as sender:
                for start in range(0, nbytes, CHUNK):
                    sender.sendall(chunk[: min(CHUNK, nbytes - start)])
            reader.join()

    return Workload(send, nbytes / 1e9)


def _receive(server: socket.socket, inbox: memoryview, nbytes: int) -> None:
    conn, _ = server.accept()
    with conn:
        got = 0
        while got < nbytes:
            n = conn.recv_into(inbox)
            if n == 0:
                raise ConnectionError(f"the sender closed after {got} of {nbytes} bytes")
            got += n
