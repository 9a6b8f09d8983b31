"""``tg.timeline``'s trace, built from task records: pure, no cluster."""

from __future__ import annotations

from typing import Any

from taskgraph._timeline import trace_events


def task(n: int, node: str = "n1", pid: int = 100, **more: Any) -> dict[str, Any]:
    return {
        "task_id": f"{n:032x}",
        "name": f"f{n}",
        "state": "FINISHED",
        "node_id": node,
        "worker_pid": pid,
        "error_type": None,
        "path": "scheduled",
        "start_time_ms": 1_000 + 10 * n,
        "end_time_ms": 1_005 + 10 * n,
        "phases": {"fetch_s": 0.001, "deserialize_s": 0.0, "run_s": 0.002, "store_s": 0.0005},
        **more,
    }


def test_each_node_is_a_process_and_each_executor_a_named_thread():
    events = trace_events([task(1, "nb", 7), task(2, "na", 8), task(3, "na", 9)])
    names = {(e["pid"], e["tid"], e["name"]): e["args"]["name"] for e in events if e["ph"] == "M"}
    assert names == {
        (1, 0, "process_name"): "node na",  # numbered in node id order
        (2, 0, "process_name"): "node nb",
        (1, 8, "thread_name"): "executor 8",
        (1, 9, "thread_name"): "executor 9",
        (2, 7, "thread_name"): "executor 7",
    }


def test_a_task_is_a_slice_in_microseconds_with_what_it_was():
    events = trace_events([task(1, error_type="KeyError", state="FAILED")])
    (slice_,) = [e for e in events if e.get("cat") == "task"]
    assert slice_ == {
        "name": "f1", "cat": "task", "ph": "X", "ts": 1_010_000, "dur": 5_000, "pid": 1,
        "tid": 100, "args": {"task_id": f"{1:032x}", "state": "FAILED",
                             "error_type": "KeyError", "path": "scheduled"},
    }  # fmt: skip


def test_phases_follow_one_another_from_the_start_inside_their_task():
    events = trace_events([task(1)])
    phases = [(e["name"], e["ts"], e["dur"]) for e in events if e.get("cat") == "phase"]
    # deserialize took no time: no slice
    assert phases == [("fetch", 1_010_000, 1_000), ("run", 1_011_000, 2_000),
                      ("store", 1_013_000, 500)]  # fmt: skip


def test_a_task_shorter_on_record_than_its_phases_is_drawn_as_long_as_them():
    # Times on record are whole milliseconds; phases are finer.
    short = task(1, end_time_ms=1_010, phases={"run_s": 0.0004, "store_s": 0.0002})
    events = trace_events([short])
    (slice_,) = [e for e in events if e.get("cat") == "task"]
    assert slice_["dur"] == 600
    for phase in (e for e in events if e.get("cat") == "phase"):
        assert slice_["ts"] <= phase["ts"]
        assert phase["ts"] + phase["dur"] <= slice_["ts"] + slice_["dur"]


def test_only_tasks_that_ran_and_ended_have_slices():
    waiting = task(2, start_time_ms=None, end_time_ms=None, node_id=None, worker_pid=None,
                   phases={}, state="PENDING_NODE_ASSIGNMENT")  # fmt: skip
    running = task(3, end_time_ms=None, phases={}, state="RUNNING")
    events = trace_events([task(1), waiting, running])
    assert [e["args"]["task_id"] for e in events if e.get("cat") == "task"] == [f"{1:032x}"]
    assert trace_events([]) == []
