"""``taskgraph list``, ``summary`` and ``timeline`` against a live cluster, and
``tg.timeline``: a known workload, then the CLI run as another process with
``--address``/``--token``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.util.state import get_task, list_tasks

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("cluster")]


@tg.remote
def cli_square(x: int) -> int:
    return x * x


@tg.remote
def cli_breaks(why: str) -> None:
    raise KeyError(why)


@tg.remote
class CliKeeper:
    def ping(self) -> str:
        return "pong"


@tg.remote
def start(x: int) -> int:
    return x


@tg.remote
def step(x: int) -> int:
    return x + 1


@tg.remote
def join(a: int, b: int) -> int:
    return a + b


def taskgraph(*command: str) -> subprocess.CompletedProcess[str]:
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    return subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", *command, "--address", runtime.address,
         "--token", runtime.cluster.token],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def ok(*command: str) -> str:
    out = taskgraph(*command)
    assert out.returncode == 0, out.stderr
    return out.stdout


def as_json(*command: str) -> Any:
    return json.loads(ok(*command, "--format", "json"))


def finished(refs: list[tg.ObjectRef]) -> bool:
    """The scheduler's record of each ref's task is final (it may lag ``tg.get``)."""
    tasks = [get_task(ref.hex()) for ref in refs]
    return all(t is not None and t["state"] in ("FINISHED", "FAILED") for t in tasks)


@pytest.fixture(scope="module")
def workload() -> Any:
    """Five squares, two failures and an actor with one call, all on record."""
    squares = [cli_square.remote(i) for i in range(5)]
    assert tg.get(squares, timeout=30) == [0, 1, 4, 9, 16]
    failures = [cli_breaks.remote(str(i)) for i in range(2)]
    for ref in failures:
        with pytest.raises(tg.exceptions.TaskError):
            tg.get(ref, timeout=30)
    keeper = CliKeeper.remote()
    call = keeper.ping.remote()
    assert tg.get(call, timeout=30) == "pong"
    wait_for(lambda: finished([*squares, *failures, call]), what="the tasks' records")
    yield keeper
    tg.kill(keeper)


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = text.splitlines()
    return lines[0].split(), [line.split() for line in lines[1:] if line]


def test_list_tasks_as_a_table_and_as_json(workload):
    squares = as_json("list", "tasks", "--filter", "name=cli_square")
    assert len(squares) == 5
    assert {t["state"] for t in squares} == {"FINISHED"}
    assert "events" not in squares[0]
    header, rows = table_rows(ok("list", "tasks", "--filter", "name=cli_square"))
    assert header[:3] == ["TASK_ID", "NAME", "STATE"]
    assert sorted(r[0] for r in rows) == sorted(t["task_id"] for t in squares)
    assert all(r[1:3] == ["cli_square", "FINISHED"] for r in rows)


def test_filters_combine_and_negate(workload):
    failed = as_json("list", "tasks", "--filter", "name=cli_breaks", "--filter", "state=failed")
    assert len(failed) == 2 and {t["error_type"] for t in failed} == {"KeyError"}
    others = as_json("list", "tasks", "--filter", "name!=cli_square", "--limit", "0")
    assert others and not any(t["name"] == "cli_square" for t in others)
    assert ok("list", "tasks", "--filter", "name=nothing_by_this_name") == (
        "No tasks match the filters.\n"
    )


def test_a_limit_shows_how_many_of_how_many(workload):
    text = ok("list", "tasks", "--filter", "name=cli_square", "--limit", "2")
    _, rows = table_rows(text)
    assert len(rows) == 3  # two tasks and the closing line
    assert text.splitlines()[-1] == "Showing 2 of 5 tasks (--limit N for more, 0 for all)."
    out = taskgraph("list", "tasks", "--filter", "name=cli_square", "--limit", "2", "--format",
                    "json")  # fmt: skip
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 2
    assert "showing 2 of 5 tasks" in out.stderr


def test_a_detailed_task_has_its_events_and_phases(workload):
    (task,) = as_json("list", "tasks", "--filter", "name=cli_square", "--limit", "1", "--detail")
    assert [e["state"] for e in task["events"]][-1] == "FINISHED"
    assert set(task["phases"]) == {"fetch_s", "deserialize_s", "run_s", "store_s"}
    text = ok("list", "tasks", "--filter", "name=cli_square", "--limit", "1", "--detail")
    assert f"task_id:            {task['task_id']}" in text.splitlines()
    assert any(line.startswith("events:") and "FINISHED" in line for line in text.splitlines())


def test_actors_objects_nodes_and_workers(workload):
    (actor,) = as_json("list", "actors", "--filter", "class_name=CliKeeper")
    assert actor["state"] == "ALIVE"
    header, rows = table_rows(ok("list", "actors", "--filter", "class_name=CliKeeper"))
    assert header[:2] == ["ACTOR_ID", "CLASS_NAME"] and rows[0][:2] == [actor["actor_id"],
                                                                       "CliKeeper"]  # fmt: skip
    held = tg.put(b"x" * 1000)
    (obj,) = as_json("list", "objects", "--filter", f"object_id={held.hex()}")
    assert obj["object_size"] >= 1000 and obj["reference_type"] == "LOCAL_REFERENCE"
    del held
    (node,) = as_json("list", "nodes")
    assert node["resources_total"]["CPU"] == 2
    assert "2 CPU" in ok("list", "nodes")
    workers = as_json("list", "workers", "--filter", "worker_type=DAEMON")
    assert [w["node_id"] for w in workers] == [node["node_id"]]


def test_summaries_count_by_name_and_state(workload):
    tasks = as_json("summary", "tasks")
    assert tasks["summary"]["cli_square"]["state_counts"] == {"FINISHED": 5}
    assert tasks["summary"]["cli_breaks"]["state_counts"] == {"FAILED": 2}
    header, rows = table_rows(ok("summary", "tasks"))
    assert header[0].startswith("Summary")
    _, rows = table_rows("\n".join(ok("summary", "tasks").splitlines()[2:]))
    by_name = {r[0]: r for r in rows}
    assert by_name["cli_square"][-1] == "5" and by_name["cli_breaks"][1] == "NORMAL_TASK"
    actors = as_json("summary", "actors")
    assert actors["summary"]["CliKeeper"]["state_counts"] == {"ALIVE": 1}
    objects = as_json("summary", "objects")
    assert objects["total_objects"] == sum(g["objects"] for g in objects["summary"].values())
    assert "objects" in ok("summary", "objects").splitlines()[0]


def test_bad_arguments_are_errors_that_say_what_to_do():
    out = taskgraph("list", "tasks", "--filter", "colour=red")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("taskgraph list: error: tasks cannot be filtered by 'colour'")
    assert "use one of task_id, name, state" in out.stderr
    out = taskgraph("list", "tasks", "--filter", "state")
    assert out.returncode == 1
    assert out.stderr.startswith("taskgraph list: error: a filter is KEY=VALUE or KEY!=VALUE")
    out = taskgraph("list", "tasks", "--limit", "-1")
    assert out.returncode == 1 and "--limit" in out.stderr
    assert taskgraph("list", "jobs").returncode == 2  # argparse: not a kind
    with pytest.raises(ValueError, match="cannot be filtered by 'colour'"):
        list_tasks(filters=[("colour", "=", "red")])


# -- the timeline ------------------------------------------------------------------


def diamond() -> set[str]:
    """Six tasks: one start, two branches of two steps, one join; their task ids."""
    top = start.remote(1)
    inner = [step.remote(top), step.remote(top)]
    outer = [step.remote(ref) for ref in inner]
    end = join.remote(*outer)
    assert tg.get(end, timeout=30) == 6
    refs = [top, *inner, *outer, end]
    wait_for(lambda: finished(refs), what="the diamond's records")
    return {ref.hex()[:24] + "00000000" for ref in refs}  # a task's id: its first ref's, index 0


def check_trace(events: list[dict[str, Any]], ids: set[str]) -> None:
    slices = [e for e in events if e["ph"] == "X" and e.get("cat") == "task"]
    mine = [s for s in slices if s["args"]["task_id"] in ids]
    assert sorted(s["args"]["task_id"] for s in mine) == sorted(ids)  # one each
    assert {s["name"] for s in mine} == {"start", "step", "join"}
    assert all(s["args"]["state"] == "FINISHED" and s["args"]["path"] for s in mine)
    names = {(e["pid"], e["tid"], e["name"]): e["args"]["name"] for e in events if e["ph"] == "M"}
    for s in mine:
        assert names[(s["pid"], 0, "process_name")].startswith("node ")
        assert names[(s["pid"], s["tid"], "thread_name")] == f"executor {s['tid']}"
        phases = [
            e for e in events
            if e.get("cat") == "phase" and e["args"]["task_id"] == s["args"]["task_id"]
        ]  # fmt: skip
        assert {p["name"] for p in phases} <= {"fetch", "deserialize", "run", "store"}
        assert any(p["name"] == "run" for p in phases)
        for p in phases:
            assert (p["pid"], p["tid"]) == (s["pid"], s["tid"])
            assert s["ts"] <= p["ts"] and p["ts"] + p["dur"] <= s["ts"] + s["dur"]


def test_the_timeline_has_one_slice_per_task_with_its_phases_inside(tmp_path: Path):
    ids = diamond()
    path = tmp_path / "trace.json"
    assert tg.timeline(str(path)) is None
    check_trace(json.loads(path.read_text()), ids)
    returned = tg.timeline()
    assert isinstance(returned, list)
    check_trace(returned, ids)


def test_the_timeline_command_writes_the_same_trace(tmp_path: Path):
    ids = diamond()
    path = tmp_path / "out.json"
    said = ok("timeline", str(path))
    assert said.startswith("Wrote the timeline of ") and str(path) in said
    check_trace(json.loads(path.read_text()), ids)
    out = taskgraph("timeline", str(tmp_path / "no-such-folder" / "out.json"))
    assert out.returncode == 1 and "taskgraph timeline: error: cannot write" in out.stderr
