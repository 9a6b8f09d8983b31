"""``taskgraph logs``: what tasks and actors printed, read from the workers' log files."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.util.state import list_actors

pytestmark = pytest.mark.usefixtures("cluster")


def cluster_arguments() -> list[str]:
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    return ["--address", runtime.address, "--token", runtime.cluster.token]


def logs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", "logs", *args, *cluster_arguments()],
        capture_output=True,
        text=True,
        timeout=60,
    )


@tg.remote
def say(text):
    print(text)
    return os.getpid(), tg.get_runtime_context().get_node_id()


@tg.remote
class Speaker:
    def say(self, text):
        print(text, file=sys.stderr)
        return os.getpid()


def shows(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``taskgraph logs *args`` once its output has ``text`` (the daemon writes a
    line a moment after it is printed)."""
    found: list[subprocess.CompletedProcess[str]] = []

    def has_it() -> bool:
        out = logs(*args)
        assert out.returncode == 0, out.stderr
        found[:] = [out]
        return text in out.stdout

    wait_for(has_it, what=f"{text!r} in 'taskgraph logs {' '.join(args)}'")
    return found[0]


def test_a_tasks_lines_and_only_those():
    first, second = say.remote("first task's line"), say.remote("second task's line")
    _, node = tg.get(first, timeout=30)
    tg.get(second, timeout=30)
    out = shows("first task's line", "--task", first.hex())  # a ref's id names its task
    assert out.stdout == "first task's line\n", "only that task's lines, nothing else"
    everything = shows("second task's line")
    assert "first task's line" in everything.stdout
    assert f"==> node {node} executor-" in everything.stdout, "several files: each named"
    assert "second task's line" in shows("second task's line", "--node", node[:6]).stdout


def test_an_actors_process_lines():
    speaker = Speaker.remote()
    pid = tg.get(speaker.say.remote("the actor speaks"), timeout=30)
    [actor] = [a for a in list_actors() if a["pid"] == pid]
    out = shows("the actor speaks", "--actor", actor["actor_id"])
    assert out.stdout.strip().endswith("the actor speaks")
    tg.kill(speaker)


def test_unknown_ids_are_clear_errors():
    for args, words in [
        (["--node", "zzzz"], "no node of the cluster has an id starting 'zzzz'"),
        (["--task", "ffff"], "no tasks on record have an id starting 'ffff'"),
        (["--actor", "ffff"], "no actors have an id starting 'ffff'"),
    ]:
        out = logs(*args)
        assert out.returncode == 1 and words in out.stderr, (args, out.stderr)


def test_following_shows_lines_printed_later():
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskgraph.cli", "logs", "--follow", "--tail", "0",
         *cluster_arguments()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:

        def printed_and_seen() -> bool:
            tg.get(say.remote("printed later"), timeout=30)  # (--tail 0: none shown before)
            return any("printed later" in line for line in seen)

        wait_for(printed_and_seen, every=0.5, what="a line printed while following")
        assert proc.poll() is None, "following goes on"
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        for pipe in (proc.stdout, proc.stderr):
            assert pipe is not None
            pipe.close()
