"""``taskgraph``: start, inspect and stop a cluster from the shell, as ``ray start`` does.

::

    taskgraph start --head          a scheduler and one worker on this host, in the background
    taskgraph start --address A     one more worker on this host, joining the scheduler at A
    taskgraph status                the nodes and their resources, used/total
    taskgraph memory                the object store: bytes per node, the largest objects
    taskgraph story KEY             what happened to one task, object or actor
    taskgraph logs                  what tasks and actors printed, from any node
    taskgraph list KIND             tasks, actors, objects, nodes or workers on record
    taskgraph summary KIND          tasks, actors or objects counted by name and state
    taskgraph timeline [FILE]       a Chrome/Perfetto trace of the tasks on record
    taskgraph stop                  stop every process ``start`` started on this host
    taskgraph tls init DIR          a cluster's CA and certificates, for TLS (_cli_tls.py)

``start`` runs the same programs as ``taskgraph-scheduler`` and
``taskgraph-worker``, detached (a session of their own, output to
``<state_dir>/logs``), and records each in ``config.state_dir()``; ``stop``
reads those records. A command that fails stops whatever it started before it
returns, so an error never leaves a process behind, and nothing here starts a
cluster implicitly: ``status`` only connects to one that runs. ``list``,
``summary`` and ``timeline`` live in ``_cli_state.py``; what the commands
share (finding and connecting to a cluster, ``CliError``) in ``_cli_common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from taskgraph import _cli_state, _cli_tls, config
from taskgraph import _cli_text as say
from taskgraph import _processes as processes
from taskgraph import _wire as w
from taskgraph._cli_common import (
    CliError,
    _add_cluster_arguments,
    _ask,
    _connected,
    _connected_to,
    _normalize_address,
)
from taskgraph._client import Client
from taskgraph._ids import BASE
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
    module_args += ["--resources", json.dumps(args.resources)]
    if args.num_cpus is not None:
        module_args += ["--num-cpus", str(args.num_cpus)]
    if args.num_gpus is not None:
        module_args += ["--num-gpus", str(args.num_gpus)]
    if args.memory is not None:
        module_args += ["--memory-limit", str(args.memory)]
    if args.object_store_memory is not None:
        module_args += ["--object-store-memory", str(args.object_store_memory)]
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
    from taskgraph.worker.store import sweep_dead_daemons

    sweep_dead_daemons()  # what killed daemons of any cluster on this host left
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


# -- status --------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> None:
    address, nodes = _ask(args, "nodes")
    if args.json:
        print(json.dumps({"address": address, "nodes": nodes}, indent=2))
        return
    print(say.status_text(address, nodes))


def cmd_memory(args: argparse.Namespace) -> None:
    address, report = _ask(args, "memory", args.top)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(say.memory_text(address, report))


def cmd_story(args: argparse.Namespace) -> None:
    try:
        key = bytes.fromhex(args.key)
    except ValueError:
        raise CliError(
            f"{args.key!r} is not an id: give a task's, object's or actor's hex id"
        ) from None
    address, changes = _ask(args, "story", key)
    if args.json:
        print(json.dumps(changes, indent=2))
        return
    print(say.story_text(address, args.key, changes))


def cmd_logs(args: argparse.Namespace) -> None:
    with _connected_to(args) as (_, client):
        targets = _log_targets(client, args)
        offsets: dict[tuple[str, int], dict[str, int]] = {}
        shown = say.LogPrinter(
            sys.stdout, several=len(targets) > 1 or not (args.actor or args.task)
        )
        while True:
            for node, pid, task in targets:
                known = offsets.get((node, pid))
                files = client.request(w.ReadLogs(0, node, pid, task, known, args.tail))
                if isinstance(files, dict):
                    raise CliError(files["error"])
                offsets[(node, pid)] = {f["file"]: f["offset"] for f in files}
                shown.show(node, files)
            if not args.follow:
                break
            time.sleep(FOLLOW_EVERY)
        if not shown.printed:
            print(f"nothing printed yet {say.log_scope(args)}", file=sys.stderr)


FOLLOW_EVERY = 0.5  # seconds between reads of the log files while following


def _log_targets(client: Client, args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """The (node, pid, task) whose log files to read: 0 is every process, "" every task."""
    if args.actor:
        actors = [a for a in client.query("actors") if a["actor_id"].startswith(args.actor)]
        if len(actors) != 1:
            raise CliError(f"{len(actors) or 'no'} actors have an id starting {args.actor!r}")
        if not actors[0]["node_id"] or not actors[0]["pid"]:
            raise CliError(f"actor {args.actor} has no process yet ({actors[0]['state']})")
        return [(actors[0]["node_id"], actors[0]["pid"], "")]
    if args.task:
        # A task's id or one of its objects' (ObjectRef.hex()): the same first 12 bytes.
        key = args.task[: 2 * BASE] if len(args.task) >= 2 * BASE else args.task
        tasks = [t for t in client.query("tasks") if t["task_id"].startswith(key)]
        if len(tasks) != 1:
            raise CliError(
                f"{len(tasks) or 'no'} tasks on record have an id starting {args.task!r}"
            )
        if not tasks[0]["node_id"]:
            raise CliError(f"task {args.task} has not run yet ({tasks[0]['state']})")
        return [(tasks[0]["node_id"], 0, tasks[0]["task_id"])]
    nodes = [n["node_id"] for n in client.query("nodes")]
    if args.node:
        nodes = [n for n in nodes if n.startswith(args.node)]
        if not nodes:
            raise CliError(f"no node of the cluster has an id starting {args.node!r}")
    return [(node, 0, "") for node in nodes]


# -- arguments -----------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskgraph",
        description="Start, inspect and stop taskgraph clusters.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  taskgraph start --head --num-cpus 4             a cluster on this host\n"
            "  taskgraph start --address HEAD:8786 --token T   add this host to it\n"
            "  taskgraph status                                its nodes and resources\n"
            "  taskgraph stop                                  stop what start started here\n"
            "\n"
            'Then, in Python on the head host: tg.init("auto").'
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_start(commands)
    _add_stop(commands)
    _add_status(commands)
    _add_memory(commands)
    _add_story(commands)
    _add_logs(commands)
    _cli_state.add_commands(commands)
    _cli_tls.add_commands(commands)
    return parser


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


def _add_status(commands: Any) -> None:
    p = commands.add_parser(
        "status",
        help="show the cluster's nodes and resources",
        description=(
            "Show each node of a running cluster with its resources used/total, and the "
            "totals. Looks at the cluster started on this host unless --address is given."
        ),
    )
    _add_cluster_arguments(p)
    p.add_argument("--json", action="store_true", help="print the nodes as JSON")
    p.set_defaults(func=cmd_status)


def _add_memory(commands: Any) -> None:
    p = commands.add_parser(
        "memory",
        help="show the object store: objects and bytes per node, the largest objects",
        description=(
            "Show each node's objects and bytes in shared memory, the small objects the "
            "scheduler keeps inline, and the largest objects with who holds them."
        ),
    )
    _add_cluster_arguments(p)
    p.add_argument("--top", type=int, default=10, help="how many of the largest objects to list")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_memory)


def _add_story(commands: Any) -> None:
    p = commands.add_parser(
        "story",
        help="show what happened to one task, object or actor",
        description=(
            "Show each state change of a task (and its returns), an object or an actor, "
            "with what caused it, from the scheduler's log of its last 100,000 changes."
        ),
    )
    p.add_argument("key", help="the hex id of a task, object or actor (ObjectRef.hex())")
    _add_cluster_arguments(p)
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    p.set_defaults(func=cmd_story)


def _add_logs(commands: Any) -> None:
    p = commands.add_parser(
        "logs",
        help="show what tasks and actors printed, from any node",
        description=(
            "Show the log files workers keep of what their processes printed (stdout "
            "and stderr): of every node, one node, one actor's process or one task. "
            "Ids may be shortened to a prefix, as the driver's output shows node ids."
        ),
    )
    p.add_argument("--node", metavar="NODE_ID", help="only this node's processes")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--actor", metavar="ID", help="only this actor's process")
    which.add_argument(
        "--task", metavar="ID", help="only what this task printed (its id, or its ref's)"
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep showing new lines")
    p.add_argument(
        "--tail",
        type=int,
        default=100,
        metavar="N",
        help="lines of each file to show (default 100)",
    )
    _add_cluster_arguments(p)
    p.set_defaults(func=cmd_logs)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    # An exception, unlike the default action, lets 'start' stop what it started.
    raise SystemExit(128 + signum)


def _reader_gone(stream: Any) -> bool:
    """Whether ``stream`` is a pipe whose reading end was closed."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    try:
        args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can be told apart
    except BrokenPipeError:
        if not _reader_gone(sys.stdout):
            raise  # a socket's, say: not ours to hide
        # Whoever read our output stopped (`... | head`): the command did its
        # work; what it had left to say goes nowhere, and no traceback either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CliError as exc:
        print(f"taskgraph {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"taskgraph {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
