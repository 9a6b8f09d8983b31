"""``taskgraph start`` and ``taskgraph stop``: the cluster's processes on this host.

``start`` runs the same programs as ``taskgraph-scheduler`` and
``taskgraph-worker`` (``_processes.py`` launches them), detached (a session
of their own, output to ``<state_dir>/logs``), waits until they are up and
records each in ``config.state_dir()``; ``stop`` reads those records, stops
the processes and removes what their workers left in shared memory. A
``start`` that fails stops whatever it started before it returns, so an
error never leaves a process behind.
"""

from __future__ import annotations

import argparse
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

from taskgraph import _cli_text as say
from taskgraph import _cli_tls, config
from taskgraph import _processes as processes
from taskgraph._cli_common import CliError, _connected, _normalize_address
from taskgraph._client import Client
from taskgraph.settings import settings
from taskgraph.worker import store

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
DEFAULT_PORT = 8786
DASHBOARD_PORT = config.DASHBOARD_PORT


# -- start ---------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> None:
    started: list[processes.Started] = []
    try:
        start = _start_head if args.head else _start_worker_only
        text = start(args, started)
    except BaseException:
        # Ctrl-C included: the children live in their own session and would not get it.
        processes.stop_processes(
            [processes.tree(s.pid) for s in started if s.popen.poll() is None], STOP_TIMEOUT
        )
        for s in started:
            (config.state_dir() / f"{s.kind}-{s.pid}.json").unlink(missing_ok=True)
            if s.worker_id:
                store.remove_all(s.worker_id)
        raise
    _release(started)
    # Only now: the cluster is up and outlives what becomes of our output
    # (`taskgraph start --head | head -2` closes the pipe early).
    print(text)


def _start_head(args: argparse.Namespace, started: list[processes.Started]) -> str:
    running = config.recorded("scheduler")
    if running:
        raise CliError(
            f"a taskgraph cluster is already running on this host at {running[0]['address']} "
            f"(scheduler pid {running[0]['pid']}); stop it with 'taskgraph stop', or add a "
            f"worker to it with 'taskgraph start --address {running[0]['address']}'"
        )
    token = args.token or settings().token or config.new_token()
    tls = _tls_of(args)
    deadline = time.monotonic() + args.timeout
    dashboard = (
        ["--dashboard-host", args.dashboard_host, "--dashboard-port", str(args.dashboard_port)]
        if args.include_dashboard
        else ["--no-dashboard"]
    )
    scheduler = processes.launch(
        "scheduler",
        ["taskgraph.scheduler.cli", "--host", args.host, "--port", str(args.port), *dashboard]
        + (tls.args() if tls else []),
        token,
    )
    started.append(scheduler)
    address = _wait_for_scheduler(scheduler, deadline)
    worker_id, worker = _launch_worker(address, token, args, tls)
    started.append(worker)
    with _connected(address, token, tls) as client:
        node = _wait_for_worker(client, worker, worker_id, deadline)
        dashboard_url = client.dashboard_url
    return say.head_started_text(
        address, token, args.host, scheduler, node, worker.log, dashboard_url
    ) + _cli_tls.started_note(tls)


def _start_worker_only(args: argparse.Namespace, started: list[processes.Started]) -> str:
    address = _normalize_address(args.address)
    token = args.token or config.token_for(address)
    if token is None:
        raise CliError(
            f"no token for the cluster at {address}: pass --token (printed by "
            f"'taskgraph start --head' on the head host) or set {config.TOKEN_ENV}"
        )
    tls = _tls_of(args, address)
    # Connecting first turns a wrong address or token into an error before anything starts.
    with _connected(address, token, tls) as client:
        worker_id, worker = _launch_worker(address, token, args, tls)
        started.append(worker)
        node = _wait_for_worker(client, worker, worker_id, time.monotonic() + args.timeout)
    return (
        f"Started worker {node['node_id']} (pid {worker.pid}) with "
        f"{say.resources_line(node['resources'])}\n"
        f"It joined the cluster at {address}. Log: {worker.log}\n"
        "Stop it with 'taskgraph stop' on this host."
    )


def _tls_of(args: argparse.Namespace, address: str | None = None) -> _cli_tls.TLS | None:
    try:
        return _cli_tls.tls_from_args(args, address)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _launch_worker(
    address: str, token: str, args: argparse.Namespace, tls: _cli_tls.TLS | None = None
) -> tuple[str, processes.Started]:
    worker_id = secrets.token_hex(6)
    module_args = ["taskgraph.worker.cli", address, "--worker-id", worker_id]
    module_args += tls.args() if tls else []
    module_args += processes.worker_arguments(
        args.num_cpus, args.num_gpus, args.memory, args.object_store_memory, args.resources
    )
    worker = processes.launch("worker", module_args, token)
    worker.worker_id = worker_id
    config.record_cluster(
        address,
        token,
        worker.pid,
        "worker",
        worker_id=worker_id,
        log=str(worker.log),
        shm_dir=str(store.shm_dir()),
    )
    return worker_id, worker


def _wait_for_scheduler(scheduler: processes.Started, deadline: float) -> str:
    while True:
        for record in config.recorded("scheduler"):
            if record["pid"] == scheduler.pid:
                return str(record["address"])
        if scheduler.popen.poll() is not None:
            raise CliError(f"the scheduler did not start:\n{processes.tail(scheduler.log)}")
        if time.monotonic() > deadline:
            raise CliError(
                f"the scheduler did not start in time (--timeout); its log says:\n"
                f"{processes.tail(scheduler.log)}"
            )
        time.sleep(0.05)


def _wait_for_worker(
    client: Client, worker: processes.Started, worker_id: str, deadline: float
) -> dict[str, Any]:
    while True:
        for node in client.query("nodes"):
            if node["node_id"] == worker_id:
                return dict(node)
        if worker.popen.poll() is not None:
            raise CliError(
                f"the worker exited with code {worker.popen.returncode} before joining:\n"
                f"{processes.tail(worker.log)}"
            )
        if time.monotonic() > deadline:
            raise CliError(
                f"the worker did not join in time (--timeout); its log says:\n{processes.tail(worker.log)}"
            )
        time.sleep(0.05)


def _release(started: list[processes.Started]) -> None:
    """Let the started processes outlive this command, as intended."""
    # Popen warns when it is dropped while its process runs; here that is the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        started.clear()


# -- stop ----------------------------------------------------------------------


def cmd_stop(args: argparse.Namespace) -> None:
    workers = config.records("worker")
    schedulers = config.records("scheduler")
    live = [r for r in workers + schedulers if r["alive"]]
    timeout = 0.0 if args.force else args.timeout
    killed = processes.stop_processes([processes.tree(r["pid"]) for r in live], timeout)
    for record in live:
        how = "Killed" if record["pid"] in killed else "Stopped"
        name = record.get("worker_id", "") if record["kind"] == "worker" else record["address"]
        print(f"{how} {record['kind']} {name} (pid {record['pid']})")
    segments = sum(_remove_segments(r) for r in workers)
    store.sweep_dead_daemons()  # what killed daemons of any cluster on this host left
    for record in workers + schedulers:
        config.forget(record)
    if segments:
        print(f"Removed {segments} leftover shared-memory segment(s).")
    if not live:
        print("Nothing to stop: no taskgraph process started on this host is running.")
    elif killed and not args.force:
        print(f"(killed: still running {timeout:g} s after SIGTERM)")


def _remove_segments(worker: dict[str, Any]) -> int:
    """Unlink what a stopped or crashed worker left in shared memory."""
    worker_id = str(worker.get("worker_id", ""))
    if not worker_id:
        return 0
    # The folder the worker used, which need not be this command's.
    folder = Path(worker.get("shm_dir") or store.shm_dir())
    count = 0
    for path in folder.glob(f"{store.PREFIX}{worker_id}-*"):
        path.unlink(missing_ok=True)
        count += 1
    return count


# -- arguments -----------------------------------------------------------------


def add_commands(commands: Any) -> None:
    _add_start(commands)
    _add_stop(commands)


def _resources_arg(text: str) -> dict[str, float]:
    try:
        return config.parse_resources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _yes_no(text: str) -> bool:
    """Ray's way of switching a part on or off (``--include-dashboard false``)."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is neither true nor false")


def _add_start(commands: Any) -> None:
    p = commands.add_parser(
        "start",
        help="start a cluster (--head) or add a worker to one (--address)",
        description=(
            "Start a scheduler and a worker on this host (--head), or a worker that joins "
            "the scheduler at --address. They run in the background until 'taskgraph stop'; "
            "their output goes to logs/ in the state directory ($TASKGRAPH_STATE_DIR, "
            "default /tmp/taskgraph-<uid>)."
        ),
    )
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--head", action="store_true", help="start a new cluster on this host")
    role.add_argument(
        "--address", metavar="HOST:PORT", help="join the cluster whose scheduler is at HOST:PORT"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="with --head: interface the scheduler listens on (0.0.0.0: all; default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"with --head: the scheduler's port (default {DEFAULT_PORT}; 0: any free port)",
    )
    p.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="with --head: interface of the dashboard's HTTP port (default 127.0.0.1)",
    )
    p.add_argument(
        "--dashboard-port",
        type=_port,
        default=DASHBOARD_PORT,
        help=f"with --head: the dashboard's port (default {DASHBOARD_PORT}, or a free one "
        "when it is taken; 0: any free port)",
    )
    p.add_argument(
        "--include-dashboard",
        type=_yes_no,
        metavar="true|false",
        default=True,
        help="with --head: serve the dashboard and /metrics (default true)",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"cluster token (default: {config.TOKEN_ENV}; with --head, a new one if unset; "
        "with --address, the one recorded on this host)",
    )
    p.add_argument(
        "--num-cpus",
        type=config.amount_argument,
        metavar="N",
        default=None,
        help="CPUs the worker offers (default: all)",
    )
    p.add_argument(
        "--num-gpus",
        type=config.amount_argument,
        metavar="N",
        default=None,
        help="GPUs the worker offers (default: detected)",
    )
    p.add_argument(
        "--memory",
        type=config.amount_argument,
        metavar="BYTES",
        default=None,
        help="bytes of memory the worker offers to tasks (default: 70%% of available)",
    )
    p.add_argument(
        "--object-store-memory",
        type=config.store_size_arg,
        metavar="BYTES",
        default=None,
        help="cap of the worker's shared-memory object store; above it objects spill to "
        "disk (default: 30%% of memory)",
    )
    p.add_argument(
        "--resources",
        type=_resources_arg,
        default={},
        metavar="JSON",
        help='custom resources the worker offers, e.g. \'{"disk": 1, "TPU": 4}\'',
    )
    p.add_argument(
        "--timeout",
        type=config.amount_argument,
        metavar="SECONDS",
        default=START_TIMEOUT,
        help=f"seconds to wait for the processes to come up (default {START_TIMEOUT:g})",
    )
    _cli_tls.add_tls_arguments(p)
    p.set_defaults(func=cmd_start)


def _add_stop(commands: Any) -> None:
    p = commands.add_parser(
        "stop",
        help="stop every process 'taskgraph start' started on this host",
        description=(
            "Stop the schedulers and workers started on this host by 'taskgraph start' "
            "(and schedulers started by hand with taskgraph-scheduler): SIGTERM, then "
            "SIGKILL after --timeout. Removes their records and the shared memory their "
            "workers left. Stopping a scheduler also tells workers on other hosts to exit."
        ),
    )
    p.add_argument(
        "--timeout",
        type=config.amount_argument,
        metavar="SECONDS",
        default=STOP_TIMEOUT,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {STOP_TIMEOUT:g})",
    )
    p.add_argument("--force", action="store_true", help="SIGKILL at once")
    p.set_defaults(func=cmd_stop)
