"""Tasks that behave badly on purpose must not wedge or kill what runs them (issue 15)."""

from __future__ import annotations

import os
import time

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.exceptions import TaskError, WorkerCrashedError
from taskgraph.util.state import list_tasks


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


@tg.remote(max_retries=3)
def raise_unprintable() -> None:
    raise Unprintable("x")


def test_an_exception_whose_str_and_repr_raise_is_a_task_error_naming_its_class(
    cluster: tg.ClusterContext,
) -> None:
    with pytest.raises(TaskError) as caught:
        tg.get(raise_unprintable.remote(), timeout=30)
    err = caught.value
    assert isinstance(err, Unprintable), "still caught as its own class"
    assert "Unprintable" in str(err) and "its __str__ raised RuntimeError" in str(err)
    assert "Unprintable" in repr(err)
    [record] = [t for t in list_tasks(limit=0) if t["name"].endswith("raise_unprintable")]
    assert record["state"] == "FAILED" and record["error_type"] == "Unprintable"
    assert record["attempt_number"] == 0, "a task's error, not a crash retried"
    assert tg.get(tg.remote(lambda: "the executor lives").remote(), timeout=30)


@tg.remote(max_retries=0)
def close_every_descriptor() -> str:
    os.closerange(3, 1024)  # the executor's links to its daemon go with them
    time.sleep(30)
    return "ran on, unheard"


def test_a_task_that_closes_its_executors_descriptors_fails_and_gives_its_cpu_back(
    cluster: tg.ClusterContext,
) -> None:
    began = time.monotonic()
    with pytest.raises(WorkerCrashedError):
        tg.get(close_every_descriptor.remote(), timeout=25)
    assert time.monotonic() - began < 25, "detected, not waited out"
    wait_for(
        lambda: tg.available_resources().get("CPU") == tg.cluster_resources()["CPU"],
        what="the CPU to come back",
    )
    assert tg.get(tg.remote(lambda: "next task runs").remote(), timeout=30) == "next task runs"
