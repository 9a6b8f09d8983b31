"""What ``taskgraph list`` and ``summary`` print, and how ``--filter`` reads: pure text,
no cluster."""

from __future__ import annotations

import pytest

from taskgraph import _cli_text as say
from taskgraph._cli_common import CliError
from taskgraph._cli_state import build_query, parse_filter

TASKS = [
    {"task_id": "aa" * 16, "name": "square", "state": "FINISHED", "worker_pid": 41,
     "error_type": None},
    {"task_id": "bb" * 16, "name": "a_longer_name", "state": "FAILED", "worker_pid": 4242,
     "error_type": "KeyError"},
]  # fmt: skip


def test_a_table_aligns_columns_under_an_upper_case_header():
    lines = say.list_text("tasks", TASKS, total=2, filtered=False).splitlines()
    assert lines[0].split() == ["TASK_ID", "NAME", "STATE", "WORKER_PID", "ERROR_TYPE"]
    assert len(lines) == 3  # no closing line: nothing was left out
    for column in ("NAME", "STATE", "WORKER_PID", "ERROR_TYPE"):
        start = lines[0].index(column)
        for row in lines[1:] if column != "ERROR_TYPE" else lines[2:]:
            assert row[start - 2 : start] == "  " and row[start] != " "
    assert lines[1].rstrip() == lines[1]  # None is an empty cell, with no trailing spaces
    assert lines[2].endswith("KeyError")


def test_a_limited_table_says_how_many_of_how_many():
    text = say.list_text("tasks", TASKS[:1], total=7, filtered=False)
    assert text.splitlines()[-1] == "Showing 1 of 7 tasks (--limit N for more, 0 for all)."


def test_an_empty_list_says_so():
    assert say.list_text("actors", [], total=0, filtered=False) == "No actors on record."
    assert say.list_text("tasks", [], total=0, filtered=True) == "No tasks match the filters."


def test_cells_show_resources_as_status_does_and_nothing_for_none():
    assert say.cell({"CPU": 2.0, "memory": 2 * 1024**3}) == "2 CPU, 2.0 GiB memory"
    assert say.cell(None) == "" and say.cell(3) == "3" and say.cell(0.5) == "0.5"
    assert say.cell(["a", "b"]) == "a, b"


def test_a_detailed_task_is_a_block_with_its_events_and_phases():
    task = {
        **TASKS[0],
        "events": [
            {"state": "PENDING_ARGS_AVAIL", "created_ms": 1000},
            {"state": "RUNNING", "created_ms": 1004},
            {"state": "FINISHED", "created_ms": 1010},
        ],
        "phases": {"fetch_s": 0.0, "run_s": 0.0025},
    }
    lines = say.detail_text("tasks", [task], total=3, filtered=False).splitlines()
    assert lines[0] == f"task_id:    {'aa' * 16}"
    assert "events:     PENDING_ARGS_AVAIL +0 ms, RUNNING +4 ms, FINISHED +10 ms" in lines
    assert "phases:     fetch: 0.000 ms, run: 2.500 ms" in lines
    assert "error_type:" in lines  # None: nothing after the name
    assert lines[-1] == "Showing 1 of 3 tasks (--limit N for more, 0 for all)."


def test_a_task_summary_has_a_column_per_state_in_life_order():
    summary = {
        "summary": {
            "square": {"func_or_class_name": "square", "type": "NORMAL_TASK",
                       "state_counts": {"FINISHED": 6, "RUNNING": 1}},
            "breaks": {"func_or_class_name": "breaks", "type": "NORMAL_TASK",
                       "state_counts": {"FAILED": 2}},
        },
        "total_tasks": 9,
        "dropped": 4,
    }  # fmt: skip
    lines = say.summary_text("tasks", "tcp://h:1", summary).splitlines()
    assert lines[0] == (
        "Summary of the tasks of the taskgraph cluster at tcp://h:1: 9 tasks "
        "(4 finished ones no longer on record)"
    )
    assert lines[2].split() == ["FUNC_OR_CLASS_NAME", "TYPE", "RUNNING", "FAILED", "FINISHED"]
    assert lines[3].split() == ["square", "NORMAL_TASK", "1", "0", "6"]
    assert lines[4].split() == ["breaks", "NORMAL_TASK", "0", "2", "0"]


def test_actor_and_object_summaries():
    actors = {"summary": {"K": {"class_name": "K", "state_counts": {"ALIVE": 1}}},
              "total_actors": 1}  # fmt: skip
    assert say.summary_text("actors", "A", actors).splitlines()[0].endswith(": 1 actor")
    objects = {
        "summary": {"LOCAL_REFERENCE": {"objects": 2, "size_bytes": 3 * 1024**2}},
        "total_objects": 2,
        "total_size_bytes": 3 * 1024**2,
    }
    lines = say.summary_text("objects", "A", objects).splitlines()
    assert lines[0].endswith(": 2 objects, 3.0 MiB")
    assert lines[2:] == [
        "REFERENCE_TYPE   OBJECTS  SIZE",
        "LOCAL_REFERENCE  2        3.0 MiB",
    ]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("state=FAILED", ["state", "=", "FAILED"]),
        ("name!=square", ["name", "!=", "square"]),
        ("call_site=a.py:f:3", ["call_site", "=", "a.py:f:3"]),
        ("name=a=b", ["name", "=", "a=b"]),
        ("error_type=", ["error_type", "=", ""]),
    ],
)
def test_filters_read_as_key_predicate_value(text, parsed):
    assert parse_filter(text) == parsed


@pytest.mark.parametrize("text", ["state", "=FAILED", "!=x", ""])
def test_a_filter_without_a_key_and_predicate_is_an_error(text):
    with pytest.raises(CliError, match="a filter is KEY=VALUE or KEY!=VALUE"):
        parse_filter(text)


def test_a_negative_limit_is_an_error():
    with pytest.raises(CliError, match="--limit"):
        build_query("tasks", [], -1, False)
    assert build_query("tasks", ["state=RUNNING"], 0, True) == {
        "kind": "tasks", "filters": [["state", "=", "RUNNING"]], "limit": 0, "detail": True,
    }  # fmt: skip
