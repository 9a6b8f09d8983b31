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

Here: the parser, ``main`` (exit codes, signals, a closed pipe) and the
commands that read a running cluster (``status``, ``memory``, ``story``,
``logs``); nothing here starts a cluster implicitly: ``status`` only connects
to one that runs. ``start`` and ``stop`` live in ``_cli_start.py``; ``list``,
``summary`` and ``timeline`` in ``_cli_state.py``; what the commands share
(finding and connecting to a cluster, ``CliError``) in ``_cli_common.py``;
what they print in ``_cli_text.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
from typing import Any

from taskgraph import _cli_start, _cli_state, _cli_tls
from taskgraph import _cli_text as say
from taskgraph import _wire as w
from taskgraph._cli_common import (
    CliError,
    _add_cluster_arguments,
    _ask,
    _connected_to,
)
from taskgraph._client import Client
from taskgraph._ids import BASE

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
    _cli_start.add_commands(commands)
    _add_status(commands)
    _add_memory(commands)
    _add_story(commands)
    _add_logs(commands)
    _cli_state.add_commands(commands)
    _cli_tls.add_commands(commands)
    return parser


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
