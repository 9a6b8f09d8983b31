"""State tables for objects and actors, and the scheduler's story of each key
(scheduler/story.py): every allowed change is taken, others raise, and the log
tells one task's history, retries included."""

from __future__ import annotations

import itertools

import pytest
from test_scheduler_state import Harness, failed, ok, ret
from test_worker_state import Harness as WorkerHarness

from taskgraph.scheduler.story import (
    ACTOR_TRANSITIONS,
    OBJECT_TRANSITIONS,
    ActorState,
    ObjectState,
    Story,
    check,
    stimulus_text,
)
from taskgraph.worker.records import (
    EXECUTOR_TRANSITIONS,
    ExecutorDied,
    ExecutorState,
    check_transition,
)


@pytest.mark.parametrize(
    ("table", "states", "kind"),
    [
        (OBJECT_TRANSITIONS, ObjectState, "object"),
        (ACTOR_TRANSITIONS, ActorState, "actor"),
    ],
)
def test_a_table_allows_its_pairs_and_no_other(table, states, kind) -> None:
    names = ["", *(s.value for s in states)]
    for start, finish in itertools.product(names, [s.value for s in states]):
        if (start, finish) in table:
            check(table, kind, b"k", start, finish)
        else:
            with pytest.raises(RuntimeError, match=f"no transition {start!r} -> {finish!r}"):
                check(table, kind, b"k", start, finish)


def test_every_state_of_a_table_is_reachable_from_the_start() -> None:
    for table, states in ((OBJECT_TRANSITIONS, ObjectState), (ACTOR_TRANSITIONS, ActorState)):
        reached, frontier = set(), {""}
        while frontier:
            reached |= frontier
            frontier = {f for (s, f) in table if s in frontier} - reached
        assert reached - {""} == {s.value for s in states}


def test_the_story_of_a_task_retried_after_its_executor_died() -> None:
    h = Harness()
    h.client()
    h.worker("w1", {"CPU": 1.0})
    spec = h.spec("fragile", max_retries=1)
    h.submit(b"c1", spec)
    h.want(b"c1", ret(spec))
    h.done("w1", failed(spec, "crashed"))
    h.done("w1", ok(spec))
    steps = [
        (c["kind"], c["from"], c["to"], c["stimulus"].split(" from ")[0])
        for c in h.state.story(spec.task_id)
    ]
    assert steps == [
        ("object", "", "pending", "SubmitTasks"),
        ("task", "new", "ready", "SubmitTasks"),
        ("task", "ready", "processing", "placement"),
        ("task", "processing", "ready", "TasksDone"),  # its executor died: retried
        ("task", "ready", "processing", "placement"),
        ("task", "processing", "memory", "TasksDone"),
        ("object", "pending", "ready", "TasksDone"),
    ]
    assert h.state.story(ret(spec)) == h.state.story(spec.task_id), "by its ref, too"
    worker_step = h.state.story(spec.task_id)[3]["stimulus"]
    assert worker_step == "TasksDone from worker w1"


def test_the_log_is_bounded() -> None:
    story = Story(length=3)
    for i in range(5):
        story.record("task", bytes([i]) * 16, "new", "ready", ("SubmitTasks",), float(i))
    assert len(story.log) == 3
    assert story.of(b"\0" * 16) == [], "the oldest are gone"
    assert [c["time"] for c in story.of(b"\4" * 16)] == [4.0]


def test_a_stimulus_reads_as_words() -> None:
    assert stimulus_text(("placement",)) == "placement"
    assert stimulus_text(("SubmitTasks", "client", b"\x01\x02")) == "SubmitTasks from client 0102"
    assert stimulus_text(("TasksDone", "worker", "w1")) == "TasksDone from worker w1"


def test_the_executor_table_allows_its_pairs_and_no_other() -> None:
    states = [s.value for s in ExecutorState]
    for start, finish in itertools.product(["", *states], states):
        if (start, finish) in EXECUTOR_TRANSITIONS:
            check_transition(1, start, finish)
        else:
            with pytest.raises(RuntimeError, match=f"no transition {start!r} -> {finish!r}"):
                check_transition(1, start, finish)


def test_an_executor_s_story_from_spawn_to_crash() -> None:
    h = WorkerHarness(min_executors=1)
    h.start()
    h.ready(1)
    a = h.assignment("t", cpus=1.0)
    h.assign(a)
    h.handle(ExecutorDied(1, -9))
    assert h.state.story(1) == [
        ("", "starting", "spawn"),
        ("starting", "idle", "ExecutorReady"),
        ("idle", "busy", "dispatch"),
        ("busy", "dead", "ExecutorDied"),
    ]
