"""The state API (``taskgraph.util.state``): every task, actor, object, node and worker
process on record, with Ray's names, filters and limits, whichever road a task took."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import taskgraph as tg
from conftest import leased, switch_to_direct, wait_for
from taskgraph.util.state import (
    get_actor,
    get_task,
    list_actors,
    list_nodes,
    list_objects,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_objects,
    summarize_tasks,
)


@tg.remote
def square(x):
    return x * x, os.getpid(), tg.get_runtime_context().get_node_id()


@tg.remote
def breaks(why):
    raise KeyError(why)


@tg.remote
def quick():
    return os.getpid()


@tg.remote
class Keeper:
    def history(self):
        return None

    def pid(self):
        return os.getpid()


def named(name: str, **more) -> list[dict]:
    return list_tasks(
        filters=[("name", "=", name), *((k, "=", v) for k, v in more.items())], limit=0
    )


def settled(name: str, count: int) -> list[dict]:
    """The tasks of that name once ``count`` of them finished on record (a task that
    went down a channel is reported a moment after its caller has the result)."""
    wait_for(
        lambda: len([t for t in named(name) if t["state"] in ("FINISHED", "FAILED")]) >= count,
        what=f"{count} {name} tasks finished on record",
    )
    return named(name)


def on_record(ref) -> dict:
    """get_task, once the task's end is on record."""
    wait_for(lambda: get_task(ref.hex())["state"] in ("FINISHED", "FAILED"), what="its end")
    return get_task(ref.hex())


def test_a_known_workload_is_on_record_and_summarized(cluster):
    refs = [square.remote(i) for i in range(6)]
    tg.get(refs, timeout=30)
    failed = [breaks.remote(str(i)) for i in range(2)]
    for ref in failed:
        with pytest.raises(tg.exceptions.TaskError):
            tg.get(ref, timeout=30)
    squares = settled("square", 6)
    assert len(squares) == 6
    assert all(t["state"] == "FINISHED" and t["type"] == "NORMAL_TASK" for t in squares)
    broke = list_tasks(filters=[("name", "=", "breaks"), ("state", "=", "failed")], limit=0)
    assert len(broke) == 2 and {t["error_type"] for t in broke} == {"KeyError"}
    summary = summarize_tasks()["summary"]
    assert summary["square"]["state_counts"]["FINISHED"] >= 6
    assert summary["breaks"]["state_counts"] == {"FAILED": 2}
    not_square = list_tasks(filters=[("name", "!=", "square")], limit=0)
    assert not any(t["name"] == "square" for t in not_square)


def test_one_task_in_detail_has_its_times_process_and_phases(cluster):
    ref = square.remote(7)
    (value, pid, node) = tg.get(ref, timeout=30)
    assert value == 49
    task = on_record(ref)  # (get_task: a ref's id names its task)
    assert task["task_id"] == ref.hex()[:24] + "00000000"
    assert task["worker_pid"] == pid and task["node_id"] == node
    states = [e["state"] for e in task["events"]]
    assert states[-2:] == ["RUNNING", "FINISHED"] and "PENDING_ARGS_AVAIL" in states
    times = [e["created_ms"] for e in task["events"]]
    assert times == sorted(times), "state changes in order of time"
    assert task["start_time_ms"] <= task["end_time_ms"]
    assert set(task["phases"]) == {"fetch_s", "deserialize_s", "run_s", "store_s"}
    assert all(v >= 0 for v in task["phases"].values())
    assert get_task("ab" * 16) is None
    with pytest.raises(ValueError, match="hex id"):
        get_task("not an id")


def test_a_leased_task_and_a_direct_actor_call_are_listed_with_their_path(cluster):
    leased(quick)
    wait_for(lambda: named("quick", path="lease", state="FINISHED"), what="a leased task on record")
    keeper = Keeper.remote()
    switch_to_direct(keeper)
    before = tg.statistics().direct_actor_calls
    pid = tg.get(keeper.pid.remote(), timeout=30)
    assert tg.statistics().direct_actor_calls == before + 1, "the call went straight to the actor"
    wait_for(
        lambda: any(
            t["path"] == "actor_direct" and t["worker_pid"] == pid
            for t in named("Keeper.pid", state="FINISHED")
        ),
        what="the direct call on record",
    )
    [call] = [t for t in named("Keeper.pid") if t["path"] == "actor_direct"]
    assert call["type"] == "ACTOR_TASK" and call["actor_id"]
    tg.kill(keeper)


def test_actors_listed_filtered_got_and_summarized(cluster):
    keeper = Keeper.options(name="the-keeper").remote()
    pid = tg.get(keeper.pid.remote(), timeout=30)
    [row] = list_actors(filters=[("name", "=", "the-keeper")])
    assert row["class_name"] == "Keeper" and row["state"] == "ALIVE" and row["pid"] == pid
    detail = get_actor(row["actor_id"])
    assert detail is not None and "pid" in detail["methods"]
    assert summarize_actors()["summary"]["Keeper"]["state_counts"]["ALIVE"] >= 1
    tg.kill(keeper)
    wait_for(lambda: get_actor(row["actor_id"])["state"] == "DEAD", what="the actor dead on record")


def test_objects_show_size_place_and_what_holds_them(cluster):
    big = tg.put(np.zeros(200_000))
    [row] = list_objects(filters=[("object_id", "=", big.hex())], detail=True)
    assert row["object_size"] >= 1_600_000 and row["state"] == "READY"
    assert row["reference_type"] == "LOCAL_REFERENCE" and row["node_id"] in row["node_ids"]
    assert row["task_id"] is None, "a put, not a task's return"
    kinds = summarize_objects()["summary"]
    assert kinds["LOCAL_REFERENCE"]["size_bytes"] >= 1_600_000
    del big
    wait_for(lambda: not list_objects(filters=[("object_id", "=", row["object_id"])]))


def test_nodes_and_worker_processes(cluster):
    [node] = list_nodes()
    assert node["state"] == "ALIVE" and node["resources_total"]["CPU"] == 2
    pid = tg.get(quick.remote(), timeout=30)
    wait_for(
        lambda: any(
            w["pid"] == pid for w in list_workers(filters=[("worker_type", "=", "EXECUTOR")])
        ),
        what="the executor among the workers (heartbeats, once a second)",
    )
    assert len(list_workers(filters=[("worker_type", "=", "DAEMON")])) == 1


def test_limits_warn_and_bad_queries_are_clear_errors(cluster):
    tg.get([quick.remote() for _ in range(3)], timeout=30)
    with pytest.warns(UserWarning, match="showing the first 2"):
        assert len(list_tasks(limit=2)) == 2
    with pytest.raises(ValueError, match="cannot be filtered by 'colour'"):
        list_tasks(filters=[("colour", "=", "red")])
    with pytest.raises(ValueError, match="'=' or '!='"):
        list_actors(filters=[("state", ">", "ALIVE")])
    with pytest.raises(TypeError, match="key, predicate, value"):
        list_tasks(filters=["state=RUNNING"])
    with pytest.raises(ValueError, match="limit"):
        list_tasks(limit=-1)


WINDOW = """
import taskgraph as tg
from taskgraph.util.state import list_tasks, summarize_tasks
from taskgraph.testing import wait_for
tg.init("local", num_cpus=1)

@tg.remote
def quick():
    return 1

tg.get([quick.remote() for _ in range(20)], timeout=30)
wait_for(lambda: summarize_tasks()["total_tasks"] == 5 and summarize_tasks()["dropped"] == 15)
print(len(list_tasks(filters=[("state", "=", "FINISHED")], limit=0)))
tg.shutdown()
"""


def test_the_window_of_finished_tasks_is_bounded_and_counts_what_it_dropped(cluster):
    # (the scheduler reads TASKGRAPH_TASK_EVENTS when it starts: a cluster of its own)
    env = {k: v for k, v in os.environ.items() if k != "TASKGRAPH_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", WINDOW],
        env=dict(env, TASKGRAPH_TASK_EVENTS="5"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5"]


def test_an_objects_call_site_names_the_users_file_function_and_line(cluster):
    import inspect

    line = inspect.currentframe().f_lineno + 1
    kept, made = tg.put(b"kept"), square.remote(3)
    tg.get(made, timeout=30)
    for ref in (kept, made):
        [row] = list_objects(filters=[("object_id", "=", ref.hex())])
        where = (
            f"{__file__}:test_an_objects_call_site_names_the_users_file_function_and_line:{line}"
        )
        assert row["call_site"] == where, row
