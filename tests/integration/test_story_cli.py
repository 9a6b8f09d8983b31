"""``taskgraph story KEY``: what happened to one task, from a live cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import taskgraph as tg

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(max_retries=1)
def dies_once(marker: str) -> str:
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the executor dies: the scheduler retries the task
    return "second time"


def story(key: str, *more: str) -> subprocess.CompletedProcess[str]:
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    return subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", "story", key, "--address", runtime.address,
         "--token", runtime.cluster.token, *more],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_story_of_a_task_whose_executor_died_shows_the_retry(tmp_path):
    ref = dies_once.remote(str(tmp_path / "died"))
    assert tg.get(ref, timeout=60) == "second time"
    out = story(ref.hex(), "--json")
    assert out.returncode == 0, out.stderr
    changes = [(c["kind"], c["from"], c["to"]) for c in json.loads(out.stdout)]
    assert changes[-1] == ("object", "pending", "ready")
    task = [(start, finish) for kind, start, finish in changes if kind == "task"]
    assert task[-3:] == [("processing", "ready"), ("ready", "processing"), ("processing", "memory")]
    text = story(ref.hex())
    assert text.returncode == 0, text.stderr
    assert "processing ->" in text.stdout and "TasksDone from worker" in text.stdout


def test_a_story_of_an_unknown_id_says_so():
    out = story("00" * 16)
    assert out.returncode == 0 and "has no record of" in out.stdout
    bad = story("not-hex")
    assert bad.returncode == 1 and "is not an id" in bad.stderr
