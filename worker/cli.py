"""``taskgraph-worker``: run a worker daemon that joins a scheduler."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sys

from taskgraph import config
from taskgraph._cli_tls import add_tls_arguments, tls_from_args

from .daemon import WorkerDaemon, run
from .host import default_resources


def _worker_id(text: str) -> str:
    # The id names the worker's shared-memory arena, tg-<id>-arena.
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid worker id: use 1 to 64 letters, digits or _"
        )
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="taskgraph-worker", description="Run a taskgraph worker daemon in the foreground."
    )
    p.add_argument(
        "address",
        nargs="?",
        default=None,
        help="scheduler address, tcp://HOST:PORT (default: the scheduler started on this host)",
    )
    p.add_argument(
        "--num-cpus", type=config.amount_argument, default=None, help="CPUs to offer (default: all)"
    )
    p.add_argument(
        "--num-gpus",
        type=config.amount_argument,
        default=None,
        help="GPUs to offer (default: detected)",
    )
    p.add_argument(
        "--resources", default="{}", help="custom resources as JSON, e.g. '{\"disk\": 1}'"
    )
    p.add_argument(
        "--memory-limit",
        type=config.amount_argument,
        default=None,
        help="bytes of task memory to offer",
    )
    p.add_argument(
        "--object-store-memory",
        type=config.store_size_arg,
        default=None,
        metavar="BYTES",
        help="cap of the shared-memory object store; above it objects spill to disk "
        "(default: 30%% of memory, at most what /dev/shm can hold)",
    )
    p.add_argument(
        "--spill-dir",
        default=None,
        metavar="DIR",
        help="where objects spill above the cap (default: a folder in the temp directory)",
    )
    p.add_argument("--token", default=None, help=f"cluster token ({config.TOKEN_ENV} by default)")
    p.add_argument(
        "--worker-id",
        type=_worker_id,
        default=None,
        help="this worker's id: letters, digits and _ (default: a random one; must be unique)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    add_tls_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    # Long-lived tables of tasks and objects make the default collector scan a
    # large heap every few hundred allocations; collect far less often.
    gc.set_threshold(100_000, 50, 100)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    address = args.address
    if address is None:
        records = config.recorded("scheduler")
        if not records:
            sys.exit(
                "taskgraph-worker: no scheduler address given and none is running on this host"
            )
        address = records[0]["address"]
    token = args.token or config.token_for(address)
    if token is None:
        sys.exit(
            f"taskgraph-worker: no token for {address}: pass --token or set {config.TOKEN_ENV}"
        )
    try:
        tls = tls_from_args(args, address)
    except ValueError as exc:
        sys.exit(f"taskgraph-worker: {exc}")
    try:
        custom = config.parse_resources(args.resources)
        resources = default_resources(args.num_cpus, args.num_gpus, args.memory_limit, custom)
    except ValueError as exc:
        sys.exit(f"taskgraph-worker: bad --resources: {exc}")
    daemon = WorkerDaemon(
        address,
        config.token_bytes(token),
        resources,
        worker_id=args.worker_id,
        parent_pid=args.parent_pid,
        object_store_memory=args.object_store_memory,
        spill_dir=args.spill_dir,
        tls=tls,
    )
    print(f"taskgraph-worker {daemon.worker_id} (pid {os.getpid()}) joining {address}", flush=True)
    run(daemon)


if __name__ == "__main__":
    main()
