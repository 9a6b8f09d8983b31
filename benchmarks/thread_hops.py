"""``python -m benchmarks.thread_hops``: what a thread between a socket and its reader costs here.

Two processes play ping-pong over a socket pair, a byte each way, in four
ways: each side reads in the thread that acts on the byte ("direct"), or a
reading thread hands the byte to it (a ``queue.SimpleQueue`` in the answering
process, as an executor's channel does; a lock released in the asking one, as
a client's did before its waiting thread read for itself)::

    asker ──byte──▶ answerer        asker: main thread, or reader thread → main
          ◀──byte──                 answerer: main thread, or reader thread → main

Why it matters: a synchronous actor call is such a round trip, and on a
virtual machine each thread woken can cost more than the rest of the call
(taskgraph/_channels.py, ``Channel.wait_for``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import statistics
import threading
import time

WAYS = {
    "direct": (False, False),
    "reader thread in the answerer": (False, True),
    "reader thread in the asker": (True, False),
    "reader threads in both": (True, True),
}


def _answer(sock: socket.socket, with_reader: bool) -> None:
    if not with_reader:
        while (data := sock.recv(64)) and data != b"q":
            sock.send(data)
        return
    handed: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        while True:
            data = sock.recv(64)
            handed.put(data)
            if not data or data == b"q":
                return

    threading.Thread(target=read, daemon=True).start()
    while (data := handed.get()) and data != b"q":
        sock.send(data)


def _ask(sock: socket.socket, with_reader: bool, n: int) -> float:
    started = time.perf_counter()
    if not with_reader:
        for _ in range(n):
            sock.send(b"x")
            sock.recv(64)
        return time.perf_counter() - started
    gates: list[threading.Lock] = []

    def read() -> None:
        with contextlib.suppress(OSError):  # (closed under it at the end)
            while sock.recv(64):
                gates.pop().release()

    threading.Thread(target=read, daemon=True).start()
    started = time.perf_counter()
    for _ in range(n):
        gate = threading.Lock()
        gate.acquire()
        gates.append(gate)
        sock.send(b"x")
        gate.acquire()
    return time.perf_counter() - started


def round_trip_us(asker_reader: bool, answerer_reader: bool, n: int) -> float:
    """Microseconds per round trip, between this process and a forked one."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the answerer
        mine.close()
        try:
            _answer(theirs, answerer_reader)
        finally:
            os._exit(0)
    theirs.close()
    try:
        return _ask(mine, asker_reader, n) / n * 1e6
    finally:
        mine.send(b"q")
        mine.close()
        os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thread_hops", description=__doc__)
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="each way, interleaved")
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way, (asker, answerer) in WAYS.items():
            times[way].append(round_trip_us(asker, answerer, args.round_trips))
    print("| way | µs per round trip (median, min-max) |\n| --- | --- |")
    for way, values in times.items():
        print(f"| {way} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
