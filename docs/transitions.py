"""Generate the task-state section of docs/architecture.md from ``SchedulerState.TRANSITIONS``.

The scheduler's transition table is the truth about task states; this script
draws it (a mermaid state diagram and a table of ``(start, finish) -> method``)
between the marker comments in architecture.md, so the document cannot drift
from the code unnoticed::

    python docs/transitions.py            print the generated block
    python docs/transitions.py --write    rewrite the block in docs/architecture.md
    python docs/transitions.py --check    exit 1 if docs/architecture.md is stale

A transition added to the table without a line in ``WHEN`` below still
renders, marked as undescribed, so ``--write`` never blocks on prose.

Objects, actors and executors have their tables in the code too, each change
described there (``scheduler/story.py``, ``worker/records.py``); their sections
are drawn between their own markers (``<!-- object-states:begin -->``, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskgraph.scheduler.state import SchedulerState
from taskgraph.scheduler.story import ACTOR_TRANSITIONS, OBJECT_TRANSITIONS
from taskgraph.worker.records import EXECUTOR_TRANSITIONS

ARCHITECTURE = Path(__file__).resolve().parent / "architecture.md"
BEGIN = "<!-- transitions:begin -->"
END = "<!-- transitions:end -->"
# Other records' states: marker name -> (table, where it lives).
STATE_TABLES: dict[str, tuple[dict[tuple[str, str], str], str]] = {
    "object-states": (OBJECT_TRANSITIONS, "OBJECT_TRANSITIONS (scheduler/story.py)"),
    "actor-states": (ACTOR_TRANSITIONS, "ACTOR_TRANSITIONS (scheduler/story.py)"),
    "executor-states": (EXECUTOR_TRANSITIONS, "EXECUTOR_TRANSITIONS (worker/records.py)"),
}

# When each transition happens, in the reader's words. Keyed like TRANSITIONS.
WHEN: dict[tuple[str, str], str] = {
    ("new", "waiting"): "submitted while some argument is still being computed",
    ("new", "ready"): "submitted with every argument already available (or none)",
    ("new", "erred"): (
        "submitted with an argument that already failed, or that was already freed "
        "(`ObjectLostError`); or a method call to an actor that is already dead "
        "(its `ActorDiedError`)"
    ),
    ("waiting", "ready"): "its last pending argument became available",
    ("waiting", "erred"): (
        "an argument's task failed: the same error becomes this task's result; or, for a "
        "method call, its actor died"
    ),
    ("waiting", "cancelled"): "`cancel()` before it could run",
    ("ready", "processing"): (
        "placement chose a worker with the resources free (or, CPU-only and not an actor's "
        "creation, room in a busy worker's queue): they are reserved and the task leaves in that worker's next "
        "`RunTasks`. A method call is not placed: it leaves when it reaches the head of its "
        "actor's queue while the actor is alive, for the actor's worker, reserving nothing"
    ),
    ("ready", "erred"): (
        "an argument failed in the same batch of events that made the task ready "
        "(failures propagate after each event, from a worklist); or, for a method call, "
        "its actor died while the call was queued"
    ),
    ("ready", "cancelled"): "`cancel()` while it was queued in the scheduler",
    ("processing", "memory"): "the worker reported success: its return objects become available",
    ("processing", "ready"): (
        "a retry: its executor crashed or its worker left (or it raised, with "
        "`retry_exceptions=True`) and it has retries left; a method call that was running "
        "when its actor's process died, with `max_task_retries` left, back at the head of "
        "the actor's queue; or the creation task of an actor whose process died in its "
        "constructor, with `max_restarts` left"
    ),
    ("processing", "erred"): (
        "it raised (`TaskError`), or crashed (`WorkerCrashedError`) or lost its worker "
        "(`NodeDiedError`) with no retries left; a method call whose actor died while it "
        "ran, or an actor's creation task whose constructor raised or whose actor died "
        "(`ActorError`, `ActorDiedError`)"
    ),
    ("processing", "cancelled"): (
        "`cancel()` while running: interrupted by SIGINT, killed by SIGKILL with "
        "`force=True`, or its worker left after the cancel was asked"
    ),
}


def _states(table: dict[tuple[str, str], str]) -> list[str]:
    """Every state, in order of first appearance in the table."""
    seen: dict[str, None] = {}
    for start, finish in table:
        seen.setdefault(start, None)
        seen.setdefault(finish, None)
    return list(seen)


def _either(states: list[str]) -> str:
    """`a`, `b` or `c`."""
    names = [f"`{s}`" for s in states]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def render(table: dict[tuple[str, str], str] | None = None) -> str:
    """The block between the markers, markers included."""
    table = SchedulerState.TRANSITIONS if table is None else table
    states = _states(table)
    starts = {start for start, _ in table}
    finishes = {finish for _, finish in table}
    initial = [s for s in states if s not in finishes]
    final = [s for s in states if s not in starts]
    lines = [
        BEGIN,
        "<!-- Generated by docs/transitions.py from SchedulerState.TRANSITIONS "
        "(scheduler/state.py). Do not edit by hand: run `python docs/transitions.py --write`. -->",
        "",
        "```mermaid",
        "stateDiagram-v2",
    ]
    lines += [f"    [*] --> {s}" for s in initial]
    lines += [f"    {start} --> {finish}" for start, finish in table]
    lines += [f"    {s} --> [*]" for s in final]
    lines += [
        "```",
        "",
        f"A task enters as {_either(initial)}. In {_either(final)} it is finished: the "
        "scheduler forgets it at once (`_forget`), releasing its hold on its arguments; "
        "its return objects stay as long as someone holds them. An actor's creation task "
        "and its method calls are tasks too and go through the same states; "
        "[Actors](#actors) says where they differ.",
        "",
        "| from | to | method | when |",
        "|---|---|---|---|",
    ]
    for (start, finish), method in table.items():
        when = WHEN.get((start, finish), "(not described yet: add it to `WHEN` in this script)")
        lines.append(f"| `{start}` | `{finish}` | `{method}` | {when} |")
    lines.append(END)
    return "\n".join(lines)


def render_states(name: str) -> str:
    """The block for one record's states (from ``STATE_TABLES``), markers included.
    A start of ``""`` is the record's creation; every state may end (forgotten)."""
    table, source = STATE_TABLES[name]
    states = [x for x in _states(table) if x]
    lines = [
        f"<!-- {name}:begin -->",
        f"<!-- Generated by docs/transitions.py from {source}. Do not edit by hand: "
        "run `python docs/transitions.py --write`. -->",
        "",
        "```mermaid",
        "stateDiagram-v2",
    ]
    lines += [f"    {start or '[*]'} --> {finish}" for start, finish in table]
    lines += [f"    {x} --> [*]" for x in states if not any(a == x for a, _ in table)]
    lines += ["```", "", "| from | to | when |", "|---|---|---|"]
    for (start, finish), when in table.items():
        lines.append(f"| {f'`{start}`' if start else '(created)'} | `{finish}` | {when} |")
    lines.append(f"<!-- {name}:end -->")
    return "\n".join(lines)


def splice_between(document: str, begin: str, end: str, block: str) -> str:
    if document.count(begin) != 1 or document.count(end) != 1:
        raise ValueError(f"expected exactly one {begin} and one {end} in the document")
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return head + block + tail


def refresh(document: str) -> str:
    """``document`` with every generated block drawn anew."""
    document = splice(document, render())
    for name in STATE_TABLES:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        document = splice_between(document, begin, end, render_states(name))
    return document


def splice(document: str, block: str) -> str:
    """``document`` with its marked block replaced by ``block``."""
    if document.count(BEGIN) != 1 or document.count(END) != 1:
        raise ValueError(f"expected exactly one {BEGIN} and one {END} in the document")
    head, rest = document.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the block in architecture.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if architecture.md is stale")
    args = parser.parse_args(argv)
    block = render()
    if not (args.write or args.check):
        print(block)
        return 0
    document = ARCHITECTURE.read_text()
    try:
        updated = refresh(document)
    except ValueError as exc:
        print(f"{ARCHITECTURE}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        if updated != document:
            print(
                f"{ARCHITECTURE} is stale: a state section does not match its table in "
                "the code. Run: python docs/transitions.py --write",
                file=sys.stderr,
            )
            return 1
        return 0
    if updated != document:
        ARCHITECTURE.write_text(updated)
        print(f"rewrote the state sections of {ARCHITECTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
