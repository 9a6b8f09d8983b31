"""``taskgraph list``, ``summary`` and ``timeline``: the state API from the shell, as
``ray list``, ``ray summary`` and ``ray timeline``.

::

    taskgraph list tasks|actors|objects|nodes|workers   the records, as a table or JSON
    taskgraph summary tasks|actors|objects              counts by function, class or type
    taskgraph timeline [FILE]                           a Chrome/Perfetto trace of the tasks

They ask the scheduler the same ``list`` and ``summary`` queries as
``taskgraph.util.state`` (answered by ``scheduler/listing.py``); a filter the
scheduler refuses is a ``CliError`` with its words. Only the parser setup
and the commands live here; the tables are ``_cli_text``'s, the trace
``_timeline``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from taskgraph import _cli_text as say
from taskgraph import _timeline
from taskgraph._cli_common import CliError, _add_cluster_arguments, _ask, _connected_to

LIST_KINDS = ("tasks", "actors", "objects", "nodes", "workers")
SUMMARY_KINDS = ("tasks", "actors", "objects")
DEFAULT_LIMIT = 100  # Ray's, as taskgraph.util.state's


def cmd_list(args: argparse.Namespace) -> None:
    query = build_query(args.kind, args.filter, args.limit, args.detail)
    _, answer = _ask(args, "list", query)
    if "error" in answer:
        raise CliError(answer["error"])
    rows, total = answer["rows"], answer["total"]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        if total > len(rows):
            print(
                f"taskgraph list: showing {len(rows)} of {total} {args.kind} "
                "(--limit N for more, 0 for all)",
                file=sys.stderr,
            )
        return
    text = say.detail_text if args.detail else say.list_text
    print(text(args.kind, rows, total, bool(args.filter)))


def build_query(kind: str, filters: list[str], limit: int, detail: bool) -> dict[str, Any]:
    """The scheduler's ``list`` query, as ``taskgraph.util.state`` asks it."""
    if limit < 0:
        raise CliError(f"--limit is a whole number >= 0 (0: no limit), got {limit}")
    return {
        "kind": kind,
        "filters": [parse_filter(text) for text in filters],
        "limit": limit,
        "detail": detail,
    }


def parse_filter(text: str) -> list[str]:
    """``KEY=VALUE`` or ``KEY!=VALUE`` as the query's ``[key, predicate, value]``."""
    at = text.find("=")
    negated = at > 0 and text[at - 1] == "!"
    key = text[: at - 1 if negated else at].strip()
    if at > 0 and key:
        return [key, "!=" if negated else "=", text[at + 1 :].strip()]
    raise CliError(
        f"a filter is KEY=VALUE or KEY!=VALUE (e.g. --filter state=FAILED), got {text!r}"
    )


def cmd_summary(args: argparse.Namespace) -> None:
    address, answer = _ask(args, "summary", {"kind": args.kind})
    if "error" in answer:
        raise CliError(answer["error"])
    if args.format == "json":
        print(json.dumps(answer, indent=2))
        return
    print(say.summary_text(args.kind, address, answer))


def cmd_timeline(args: argparse.Namespace) -> None:
    filename = args.file or time.strftime("taskgraph-timeline-%Y-%m-%d_%H-%M-%S.json")
    with _connected_to(args):
        events = _timeline.timeline()
    assert events is not None
    try:
        with open(filename, "w") as f:
            json.dump(events, f)
    except OSError as exc:
        raise CliError(f"cannot write the timeline to {filename}: {exc}") from None
    tasks = sum(1 for e in events if e.get("cat") == "task")
    print(
        f"Wrote the timeline of {tasks} task{'' if tasks == 1 else 's'} to {filename}: "
        "open it in https://ui.perfetto.dev or chrome://tracing"
    )


# -- arguments ---------------------------------------------------------------------


def add_commands(commands: Any) -> None:
    _add_list(commands)
    _add_summary(commands)
    _add_timeline(commands)


def _add_list(commands: Any) -> None:
    p = commands.add_parser(
        "list",
        help="list the cluster's tasks, actors, objects, nodes or worker processes",
        description=(
            "List what the cluster has on record, as 'ray list' does: tasks and actor calls "
            "(the last finished ones and those not finished), actors, objects, nodes or "
            "worker processes, as taskgraph.util.state's list_* functions return them."
        ),
    )
    p.add_argument("kind", choices=LIST_KINDS, help="what to list")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep only records whose KEY is VALUE (KEY!=VALUE: is not); repeat to combine, "
        "e.g. --filter name=square --filter state=FAILED",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N records (default {DEFAULT_LIMIT}; 0: all)",
    )
    p.add_argument(
        "--detail", action="store_true", help="every field (a task's state changes and phases)"
    )
    _add_format(p)
    _add_cluster_arguments(p)
    p.set_defaults(func=cmd_list)


def _add_summary(commands: Any) -> None:
    p = commands.add_parser(
        "summary",
        help="count tasks, actors or objects by function, class or reference type",
        description=(
            "Count the cluster's tasks by function and state, actors by class and state, or "
            "objects and their bytes by reference type, as 'ray summary' does."
        ),
    )
    p.add_argument("kind", choices=SUMMARY_KINDS, help="what to count")
    _add_format(p)
    _add_cluster_arguments(p)
    p.set_defaults(func=cmd_summary)


def _add_timeline(commands: Any) -> None:
    p = commands.add_parser(
        "timeline",
        help="write a Chrome/Perfetto trace of the tasks on record",
        description=(
            "Write the tasks on record as a Chrome trace (JSON), as 'ray timeline' does: a "
            "track per executor process, a slice per task with its phases (fetch, "
            "deserialize, run, store) inside. The same file as tg.timeline(FILE). Open it "
            "in https://ui.perfetto.dev or chrome://tracing."
        ),
    )
    p.add_argument(
        "file",
        nargs="?",
        default=None,
        help="where to write it (default: taskgraph-timeline-DATE_TIME.json here)",
    )
    _add_cluster_arguments(p)
    p.set_defaults(func=cmd_timeline)


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a table to read (default) or JSON to parse",
    )
