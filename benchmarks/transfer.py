"""Object transfer between two worker daemons, next to loopback TCP (issue 3's "≥ 1 GB/s").

Two daemons on this machine are told they are different hosts
(``TASKGRAPH_HOST_ID``), so an object made on one must be pulled by the other
over TCP. A task on the far daemon makes an array of ones; a task pinned to
the near daemon touches it; the time of the second task is the pull (plus one
task's overhead). The physical limit is one socket's throughput on loopback.

    python -m benchmarks.transfer [--mb 800]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import taskgraph as tg
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy


def loopback_gbps(nbytes: int) -> float:
    chunk = bytes(16 << 20)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def receive() -> None:
        conn, _ = server.accept()
        view = memoryview(bytearray(16 << 20))
        got = 0
        while got < nbytes:
            got += conn.recv_into(view)
        conn.close()

    reader = threading.Thread(target=receive)
    reader.start()
    sender = socket.create_connection(server.getsockname())
    start = time.perf_counter()
    for _ in range(0, nbytes, len(chunk)):
        sender.sendall(chunk)
    reader.join()
    elapsed = time.perf_counter() - start
    sender.close()
    server.close()
    return nbytes / elapsed / 1e9


def daemons_gbps(nbytes: int, repeat: int) -> list[float]:
    tg.init(num_cpus=1)
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    near = tg.nodes()[0]["node_id"]
    far = subprocess.Popen(
        [sys.executable, "-m", "taskgraph.worker.cli", runtime.address, "--num-cpus", "1",
         "--resources", '{"far": 1}'],
        env=dict(os.environ, TASKGRAPH_TOKEN=runtime.cluster.token, TASKGRAPH_HOST_ID="far"),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while len(tg.nodes()) < 2:
            time.sleep(0.05)

        @tg.remote(resources={"far": 1})
        def produce(n: int) -> np.ndarray:
            return np.ones(n // 8)

        @tg.remote
        def touch(array: np.ndarray) -> int:
            return int(array.nbytes)

        on_near = NodeAffinitySchedulingStrategy(near)
        rates = []
        for _ in range(repeat):
            ref = produce.remote(nbytes)
            tg.wait([ref], timeout=300)
            start = time.perf_counter()
            moved = tg.get(touch.options(scheduling_strategy=on_near).remote(ref))
            rates.append(moved / (time.perf_counter() - start) / 1e9)
            del ref
        return rates
    finally:
        far.terminate()
        far.wait()
        tg.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=800)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nbytes = args.mb * 1024 * 1024
    rates = daemons_gbps(nbytes, args.repeat)
    limit = loopback_gbps(nbytes)
    best = max(rates)
    print(f"daemon to daemon : {best:.2f} GB/s best of {args.repeat} ({args.mb} MiB)")
    print(f"loopback TCP     : {limit:.2f} GB/s  ({100 * best / limit:.0f}% of it)")


if __name__ == "__main__":
    main()
