"""Ray programs port by changing the import: behaviours that differed from Ray (issue 16).

Each test here failed before its fix. Clusters are real (scheduler, worker,
executors); what the tests read is public state (``taskgraph.util.state``,
``tg.available_resources()``, what a process prints).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import taskgraph as tg
from conftest import _checked_cluster, alive, processes_with_state_dir, wait_for
from taskgraph.exceptions import ActorDiedError, ObjectLostError, TaskError
from taskgraph.util.state import list_actors, list_objects, list_tasks

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[tg.ClusterContext]:
    """This module's cluster: 2 CPUs, and 2 GPUs (counted only: nothing here uses one)."""
    yield from _checked_cluster(num_cpus=2, num_gpus=2)


def actor_states(class_name: str) -> list[str]:
    return sorted(a["state"] for a in list_actors(filters=[("class_name", "=", class_name)]))


# -- actors that hold a CPU ------------------------------------------------------


@tg.remote(num_cpus=1)
class HoldsACpu:
    def ping(self) -> str:
        return "pong"


def test_actors_holding_a_cpu_each_do_not_overfill_a_node(cluster: tg.ClusterContext) -> None:
    first, second, third = (HoldsACpu.remote() for _ in range(3))
    assert tg.get([first.ping.remote(), second.ping.remote()], timeout=60) == ["pong"] * 2

    # The 2-CPU node is full: the third actor's creation waits in the scheduler
    # (Ray: PENDING_CREATION) instead of starting beside the other two.
    creations = list_tasks(filters=[("name", "=", "HoldsACpu.__init__")])
    assert sorted(t["state"] for t in creations) == [
        "FINISHED",
        "FINISHED",
        "PENDING_NODE_ASSIGNMENT",
    ]
    assert actor_states("HoldsACpu") == ["ALIVE", "ALIVE", "PENDING"]
    assert tg.available_resources().get("CPU", 0.0) == 0.0

    tg.kill(first)  # its CPU is free again: the third starts
    assert tg.get(third.ping.remote(), timeout=60) == "pong"
    assert actor_states("HoldsACpu") == ["ALIVE", "ALIVE", "DEAD"]
    for handle in (second, third):
        tg.kill(handle)
    wait_for(lambda: tg.available_resources().get("CPU") == 2.0, what="the CPUs to come back")


# -- how an actor's process ends ---------------------------------------------------


@tg.remote(max_restarts=1)
class Ends:
    """Counts its calls; a restart starts again from 0."""

    def __init__(self) -> None:
        self.calls = 0

    def count(self) -> int:
        self.calls += 1
        return self.calls

    def os_exit_0(self) -> None:
        os._exit(0)

    def sys_exit(self, code: object) -> None:
        sys.exit(code)

    def exit_actor(self) -> None:
        tg.actor.exit_actor()


def test_os_exit_0_in_a_method_is_a_crash_and_restarts_the_actor(
    cluster: tg.ClusterContext,
) -> None:
    actor = Ends.remote()
    assert tg.get([actor.count.remote(), actor.count.remote()], timeout=60) == [1, 2]

    with pytest.raises(ActorDiedError, match="exited with code 0"):
        tg.get(actor.os_exit_0.remote(), timeout=60)

    assert tg.get(actor.count.remote(), timeout=60) == 1, "restarted, fresh"
    tg.kill(actor)


@pytest.mark.parametrize("code", [1, None, "bad input"], ids=["code-1", "no-code", "message"])
def test_sys_exit_not_0_in_a_method_ends_the_process_and_restarts_the_actor(
    cluster: tg.ClusterContext, code: object
) -> None:
    # Ray (_raylet.pyx): only SystemExit with code 0 is an intended exit; any
    # other, sys.exit() with no code included, is a crash that max_restarts undoes.
    actor = Ends.remote()
    assert tg.get(actor.count.remote(), timeout=60) == 1

    with pytest.raises(ActorDiedError):
        tg.get(actor.sys_exit.remote(code), timeout=60)

    assert tg.get(actor.count.remote(), timeout=60) == 1, "restarted, fresh"
    tg.kill(actor)


@pytest.mark.parametrize("how", ["sys.exit(0)", "exit_actor()", "__taskgraph_terminate__"])
def test_an_actor_that_ends_on_purpose_is_not_restarted(
    cluster: tg.ClusterContext, how: str
) -> None:
    actor = Ends.remote()
    assert tg.get(actor.count.remote(), timeout=60) == 1

    if how == "sys.exit(0)":
        with pytest.raises(ActorDiedError, match=r"sys.exit\(0\) in its method 'sys_exit'"):
            tg.get(actor.sys_exit.remote(0), timeout=60)  # as in Ray: the call dies with it
    elif how == "exit_actor()":
        assert tg.get(actor.exit_actor.remote(), timeout=60) is None
    else:
        assert tg.get(actor.__taskgraph_terminate__.remote(), timeout=60) is None

    with pytest.raises(ActorDiedError, match="ended on purpose"):
        tg.get(actor.count.remote(), timeout=60)


@pytest.mark.parametrize("concurrency", ["threaded", "async"])
def test_sys_exit_ends_threaded_and_async_actors_too(
    cluster: tg.ClusterContext, concurrency: str
) -> None:
    @tg.remote(max_restarts=1, max_concurrency=2)
    class Threaded:
        def pid(self) -> int:
            return os.getpid()

        def leave(self, code: int) -> None:
            sys.exit(code)

    @tg.remote(max_restarts=1)
    class Async:
        async def pid(self) -> int:
            return os.getpid()

        async def leave(self, code: int) -> None:
            sys.exit(code)

    actor = (Threaded if concurrency == "threaded" else Async).remote()
    first = tg.get(actor.pid.remote(), timeout=60)
    with pytest.raises(ActorDiedError):
        tg.get(actor.leave.remote(2), timeout=60)
    assert tg.get(actor.pid.remote(), timeout=60) != first, "a new process"
    with pytest.raises(ActorDiedError, match="ended on purpose"):
        tg.get(actor.leave.remote(0), timeout=60)
    with pytest.raises(ActorDiedError, match="ended on purpose"):
        tg.get(actor.pid.remote(), timeout=60)


@tg.remote(max_restarts=1)
class ExitsInItsConstructor:
    def __init__(self, flag: str, code: int) -> None:
        if not Path(flag).exists():
            Path(flag).touch()
            sys.exit(code)

    def ping(self) -> str:
        return "pong"


def test_sys_exit_in_the_constructor_ends_the_process_as_in_ray(
    cluster: tg.ClusterContext, tmp_path: Path
) -> None:
    crashed = ExitsInItsConstructor.remote(str(tmp_path / "first-try"), 3)
    assert tg.get(crashed.ping.remote(), timeout=60) == "pong", "restarted after sys.exit(3)"

    ended = ExitsInItsConstructor.remote(str(tmp_path / "ends"), 0)
    with pytest.raises(ActorDiedError, match=r"sys.exit\(0\) in its constructor"):
        tg.get(ended.ping.remote(), timeout=60)
    tg.kill(crashed)


@tg.remote(max_retries=0)
def exits(code: int) -> None:
    sys.exit(code)


def test_sys_exit_in_a_plain_task_is_still_the_tasks_error(cluster: tg.ClusterContext) -> None:
    # Kept on purpose (docs/guide.md, Porting from Ray): Ray's worker process
    # exits and the task is retried as a crash, even for sys.exit(0) (ray#40358).
    with pytest.raises(TaskError, match="SystemExit"):
        tg.get(exits.remote(4), timeout=60)


# -- tracebacks: the user's files and lines, from the user's first frame ------------


def divide_by(x: int) -> float:  # a helper beside the remote code: it travels by value
    return 1 / x


@tg.remote(max_retries=0)
def uses_a_helper(x: int) -> float:
    return divide_by(x)


@tg.remote
class UsesAHelper:
    def call(self, x: int) -> float:
        return divide_by(x)


def frames(err: TaskError) -> list[str]:
    return re.findall(r'File "([^"]+)", line \d+, in (\w+)', err.remote_traceback)


@pytest.mark.parametrize("caller", ["task", "actor method"])
def test_a_traceback_shows_the_users_files_and_lines_from_the_users_frame(
    cluster: tg.ClusterContext, caller: str
) -> None:
    if caller == "task":
        ref, entry = uses_a_helper.remote(0), "uses_a_helper"
    else:
        ref, entry = UsesAHelper.remote().call.remote(0), "call"
    with pytest.raises(ZeroDivisionError) as caught:
        tg.get(ref, timeout=60)
    err = caught.value
    assert isinstance(err, TaskError)

    assert frames(err) == [(__file__, entry), (__file__, "divide_by")], err.remote_traceback
    assert "return 1 / x" in err.remote_traceback, "the helper's source line is shown"
    assert "<dynamic-code>" not in str(err)


# -- Ctrl-C in a terminal -------------------------------------------------------------

BLOCKED_IN_GET = """
import signal, sys, time
import taskgraph as tg

# Ctrl-C as at a terminal: Python leaves SIGINT ignored when it starts with it
# ignored, as everything a non-interactive shell runs in the background does
# (this suite too, then, and the driver it starts).
signal.signal(signal.SIGINT, signal.default_int_handler)

@tg.remote
def slow(path):
    open(path, "w").close()
    time.sleep(60)

tg.init(num_cpus=1)
ref = slow.remote(sys.argv[1])
tg.get(ref)
"""


def test_ctrl_c_during_get_ends_the_driver_without_false_warnings(tmp_path: Path) -> None:
    started, script = tmp_path / "started", tmp_path / "driver.py"
    script.write_text(BLOCKED_IN_GET)
    # A terminal's Ctrl-C goes to its foreground process group: the driver, and
    # whatever it started there. The driver leads a group of its own here.
    driver = subprocess.Popen(
        [sys.executable, str(script), str(started)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(started.exists, what="the task to start while the driver waits in get")
        cluster = [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert "KeyboardInterrupt" in err and "tg.get(ref)" in err, err
    assert "cannot be scheduled" not in err, err
    assert "no worker has joined" not in err, err
    wait_for(lambda: not alive(cluster), what="the driver's cluster to stop with it")


# -- taskgraph start, its output piped into a reader that stops early -------------------


class Shell:
    """``taskgraph ...`` against a state directory of its own; every process it
    starts inherits it, which is how the fixture finds (and stops) them all."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TASKGRAPH_TOKEN", "TASKGRAPH_ADDRESS", "TASKGRAPH_STATE_DIR")
        }
        self.env["TASKGRAPH_STATE_DIR"] = str(state_dir)

    def run(self, *args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskgraph.cli", *args],
            env=self.env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )

    def processes(self) -> list[psutil.Process]:
        """Every live process started for this state directory (children included)."""
        return processes_with_state_dir(self.state_dir)


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    runner = Shell(tmp_path / "state")
    try:
        yield runner
    finally:
        runner.run("stop")
        try:
            wait_for(lambda: not runner.processes(), what="every started process to exit")
        finally:
            for proc in runner.processes():
                proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_start_piped_into_a_reader_that_stopped_keeps_the_cluster_up(shell: Shell) -> None:
    read, write = os.pipe()
    os.close(read)  # `taskgraph start --head | head -2`, once head has read its lines
    try:
        port = str(free_port())
        started = shell.run("start", "--head", "--port", port, "--num-cpus", "1", stdout=write)
    finally:
        os.close(write)
    assert started.returncode == 0, started.stderr
    assert "BrokenPipeError" not in started.stderr, started.stderr

    status = shell.run("status", "--json")
    assert status.returncode == 0, status.stderr
    assert len(json.loads(status.stdout)["nodes"]) == 1, "the cluster is up"

    stopped = shell.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "Stopped scheduler" in stopped.stdout
    wait_for(lambda: not shell.processes(), what="'taskgraph stop' to stop the cluster")


# -- the runtime context: Ray's names -------------------------------------------------


def where_am_i() -> dict[str, Any]:
    ctx = tg.get_runtime_context()
    return {
        "job": ctx.get_job_id(),
        "job_property": ctx.job_id,
        "job_hex": ctx.job_id.hex(),
        "task": ctx.get_task_id(),
        "task_property": ctx.task_id,
        "node": ctx.get_node_id(),
        "node_property": ctx.node_id,
        "actor": ctx.get_actor_id(),
        "actor_property": ctx.actor_id,
        "resources": ctx.get_assigned_resources(),
        "accelerators": ctx.get_accelerator_ids(),
        "canceled": ctx.is_canceled(),
    }


@tg.remote(num_gpus=1)
def in_a_task() -> dict[str, Any]:
    return where_am_i()


@tg.remote(num_cpus=0)
def in_a_nested_task() -> dict[str, Any]:
    return tg.get(in_a_task.remote())


@tg.remote(num_gpus=1)
class InAnActor:
    def where(self) -> dict[str, Any]:
        return where_am_i()


@tg.remote(num_cpus=0)
def actor_made_in_a_task() -> dict[str, Any]:
    actor = InAnActor.remote()
    try:
        return tg.get(actor.where.remote())
    finally:
        tg.kill(actor)


def test_the_runtime_context_answers_with_rays_names(cluster: tg.ClusterContext) -> None:
    driver = tg.get_runtime_context()
    job = driver.get_job_id()
    assert job and driver.job_id == job and driver.job_id.hex() == job
    assert driver.task_id is None and driver.actor_id is None
    assert driver.get_accelerator_ids() == {"GPU": []}
    with pytest.raises(RuntimeError, match="not a driver"):
        driver.is_canceled()

    task = tg.get(in_a_task.remote(), timeout=60)
    assert task["job"] == task["job_property"] == task["job_hex"] == job
    assert task["task"] is not None and task["task_property"] == task["task"]
    assert task["node_property"] == task["node"] in [n["node_id"] for n in tg.nodes()]
    assert task["actor"] is None and task["actor_property"] is None
    assert task["resources"] == {"CPU": 1.0, "GPU": 1.0}
    [gpu] = task["accelerators"]["GPU"]
    assert gpu in ("0", "1") and task["canceled"] is False

    assert tg.get(in_a_nested_task.remote(), timeout=60)["job"] == job, "a task's task: same job"
    assert job in {t["job_id"] for t in list_tasks(filters=[("name", "=", "in_a_task")])}

    actor = InAnActor.remote()
    method = tg.get(actor.where.remote(), timeout=60)
    assert method["job"] == job
    assert method["actor"] is not None and method["actor_property"] == method["actor"]
    assert method["resources"] == {"GPU": 1.0}, "what the actor holds for life, as in Ray"
    assert len(method["accelerators"]["GPU"]) == 1
    tg.kill(actor)

    assert tg.get(actor_made_in_a_task.remote(), timeout=60)["job"] == job


@tg.remote(max_concurrency=2)
class Polls:
    """Runs until it sees that its call was cancelled (a running method is not
    interrupted by tg.cancel, in Ray as here)."""

    def __init__(self) -> None:
        self.started = False
        self.saw_cancel: bool | None = None

    def work(self) -> None:
        ctx = tg.get_runtime_context()
        self.started = True
        deadline = time.monotonic() + 60
        while not ctx.is_canceled() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.saw_cancel = ctx.is_canceled()

    def has_started(self) -> bool:
        return self.started

    def outcome(self) -> bool | None:
        assert not tg.get_runtime_context().is_canceled(), "another call: not cancelled"
        return self.saw_cancel


def test_a_running_method_sees_that_it_was_cancelled(cluster: tg.ClusterContext) -> None:
    actor = Polls.remote()
    ref = actor.work.remote()
    wait_for(lambda: tg.get(actor.has_started.remote(), timeout=30), what="the method to run")

    tg.cancel(ref)

    wait_for(
        lambda: tg.get(actor.outcome.remote(), timeout=30) is True,
        what="the method to see its cancel",
    )
    tg.kill(actor)


# -- refs whose ids crossed out of band ------------------------------------------------


def object_known(hex_id: str) -> bool:
    return any(o["object_id"] == hex_id for o in list_objects(limit=10_000))


@tg.remote
def read_by_id(hex_id: str) -> Any:
    return tg.get(tg.ObjectRef.from_hex(hex_id))


@tg.remote
class KeepsById:
    def __init__(self) -> None:
        self.kept: list[tg.ObjectRef] = []

    def keep(self, binary: bytes) -> None:
        self.kept.append(tg.ObjectRef(binary))

    def read(self) -> Any:
        return tg.get(self.kept[0])


def test_a_ref_made_from_its_id_is_the_same_ref(cluster: tg.ClusterContext) -> None:
    ref = tg.put({"value": 42})
    by_bytes, by_text = tg.ObjectRef(ref.binary()), tg.ObjectRef.from_hex(ref.hex())
    assert by_bytes == by_text == ref and hash(by_text) == hash(ref)
    del ref  # the refs made from its id hold the object too
    assert tg.get([by_bytes, by_text], timeout=30) == [{"value": 42}] * 2
    assert tg.get(read_by_id.remote(by_text.hex()), timeout=30) == {"value": 42}

    with pytest.raises(ValueError, match="16 bytes"):
        tg.ObjectRef(b"too short")
    with pytest.raises(ValueError, match="32 hex digits"):
        tg.ObjectRef.from_hex("not hex")


def test_a_ref_made_from_its_id_in_another_process_holds_the_object(
    cluster: tg.ClusterContext,
) -> None:
    ref = tg.put("kept")
    keeper = KeepsById.remote()
    tg.get(keeper.keep.remote(ref.binary()), timeout=30)  # its ref exists: ours may go
    hex_id = ref.hex()
    del ref
    assert tg.get(keeper.read.remote(), timeout=30) == "kept"
    assert object_known(hex_id)
    tg.kill(keeper)


def test_an_id_whose_object_was_freed_gives_object_lost(cluster: tg.ClusterContext) -> None:
    # As in Ray: an id held as text keeps nothing alive.
    ref = tg.put("gone")
    hex_id = ref.hex()
    del ref
    wait_for(lambda: not object_known(hex_id), what="the object to be freed")
    with pytest.raises(ObjectLostError):
        tg.get(tg.ObjectRef.from_hex(hex_id), timeout=30)
