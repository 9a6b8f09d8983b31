"""A worker daemon whose message handling fails stops; it never limps on.

Issue 15: a daemon whose handler raised (a ``KeyError`` in its reader) kept
heartbeating while it heard nothing more: a node that ran nothing and that
the scheduler still counted. Now the daemon logs the failure and stops, and
the scheduler drops the node and runs its tasks elsewhere. The failure is
planted: the daemon runs with its handler wrapped to raise on the first
task it is sent (a bug stands in for any bug).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import stop_process, wait_for

pytestmark = pytest.mark.usefixtures("fresh_cluster")

# The daemon, with one of its handlers made to raise once it handles a task.
FAILING_DAEMON = """
import sys
from taskgraph import _wire as w
from taskgraph.worker import daemon, daemon_executors
from taskgraph.worker.cli import main

where = sys.argv.pop(1)
if where == "scheduler":
    handle = daemon.WorkerDaemon._scheduler_message

    def failing(self, msg):
        if isinstance(msg, w.RunTasks):
            raise KeyError("planted")
        return handle(self, msg)

    daemon.WorkerDaemon._scheduler_message = failing
else:
    frame = daemon_executors._executor_frame

    def failing(daemon, executor_id, client_id, msgs):
        if any(isinstance(m, w.Executed) for m in msgs):
            raise KeyError("planted")
        return frame(daemon, executor_id, client_id, msgs)

    daemon_executors._executor_frame = failing
main()
"""


DAEMON_OPTIONS = ("--num-cpus", "1", "--resources", '{"far": 1}')


@tg.remote(resources={"far": 1}, max_retries=0)
def on_the_failing_node() -> str:
    return "ran"


@tg.remote
def anywhere(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("where", ["scheduler", "executor"])
def test_a_daemon_whose_handler_fails_stops_and_leaves_the_cluster(where: str, tmp_path: Path):
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-c", FAILING_DAEMON, where, runtime.address, *DAEMON_OPTIONS],
            env=dict(os.environ, TASKGRAPH_TOKEN=runtime.cluster.token, TASKGRAPH_HOST_ID="far"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(lambda: len(tg.nodes()) == 2, what="the second daemon to join")
        ref = on_the_failing_node.remote()
        # The daemon stops (it does not heartbeat on, deaf) ...
        daemon.wait(timeout=60)
        assert "planted" in log.read_text() and "stopping" in log.read_text()
        # ... the scheduler drops it, and its task fails as on any lost node ...
        wait_for(lambda: len([n for n in tg.nodes() if n["alive"]]) == 1, what="the node dropped")
        with pytest.raises(tg.exceptions.TaskgraphError):
            tg.get(ref, timeout=60)
        # ... and the cluster goes on.
        assert tg.get(anywhere.remote(1), timeout=30) == 2
    finally:
        stop_process(daemon)
