"""Starting, joining and stopping clusters; what is left afterwards; bad peers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

import taskgraph as tg
from conftest import alive, descendants, segments, stored, taskgraph_threads, wait_for
from taskgraph import _connect
from taskgraph import _wire as w
from taskgraph.exceptions import AuthenticationError, NodeDiedError


@tg.remote
def square(x):
    return x * x


def _local_address() -> str:
    runtime = tg._api._runtime
    assert runtime is not None
    return runtime.address


def _port_open(address: str) -> bool:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_shutdown_leaves_nothing_behind():
    context = tg.init(num_cpus=2)
    assert tg.is_initialized()
    assert "local cluster" in repr(context) and context.address.startswith("tcp://127.0.0.1:")
    import numpy as np

    big = tg.put(np.ones(1_000_000))
    assert tg.get(square.remote(3)) == 9
    assert stored() == {big.hex()}, "a large put should live in shared memory"
    assert segments(), "the worker's arena is a file in /dev/shm"
    processes = descendants()
    assert len(processes) >= 4  # scheduler, worker, two executors
    runtime = tg._api._runtime
    assert runtime is not None and runtime.cluster is not None
    local_socket = runtime.cluster.local_address.removeprefix("unix://")
    assert os.path.exists(local_socket), "this driver reaches its scheduler over a Unix socket"
    tg.shutdown()
    del big
    assert not tg.is_initialized()
    wait_for(lambda: not alive(processes), what="every cluster process to exit")
    assert not segments()
    assert not taskgraph_threads()
    assert not _port_open(context.address)
    assert not os.path.exists(os.path.dirname(local_socket))


def test_a_driver_that_never_calls_shutdown_exits_cleanly():
    script = (
        "import psutil, taskgraph as tg\n"
        "tg.init(num_cpus=1)\n"
        "print(tg.get(tg.remote(lambda: 'ran').remote()))\n"
        "print(tg._api._runtime.cluster.socket_dir)\n"
        "print(' '.join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    ran, socket_dir, pids = out.stdout.splitlines()
    assert ran == "ran"
    assert not alive({int(p) for p in pids.split()}), "stopped before the driver exited"
    assert not os.path.exists(socket_dir)
    assert not segments()


def test_implicit_init_on_first_remote_call():
    assert not tg.is_initialized()
    try:
        assert tg.get(square.remote(5)) == 25
        assert tg.is_initialized()
    finally:
        processes = descendants()
        tg.shutdown()
    wait_for(lambda: not alive(processes))


def test_reinit_raises_unless_ignored(fresh_cluster):
    with pytest.raises(RuntimeError, match="already"):
        tg.init()
    again = tg.init(ignore_reinit_error=True)
    assert again.address == fresh_cluster.address


def test_connect_to_an_existing_cluster_by_address(fresh_cluster):
    token = tg._api._runtime.cluster.token
    script = (
        "import taskgraph as tg\n"
        f"tg.init({fresh_cluster.address!r}, token={token!r})\n"
        "@tg.remote\n"
        "def f(x): return x + 1\n"
        "print(tg.get(f.remote(41)))\n"
        "tg.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    env = dict(os.environ, TASKGRAPH_ADDRESS=fresh_cluster.address, TASKGRAPH_TOKEN=token)
    script = "import taskgraph as tg\nprint(tg.get(tg.put(7)))\ntg.shutdown()\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7"
    assert len(tg.nodes()) == 1, "a connecting driver must not start a cluster"


def test_wrong_token_is_refused_and_the_cluster_keeps_working(fresh_cluster):
    with pytest.raises(AuthenticationError, match="token"):
        _connect.connect(fresh_cluster.address, "not-the-token", "ns")
    assert tg.get(square.remote(4)) == 16


def test_garbage_from_a_peer_is_dropped(fresh_cluster):
    host, port = fresh_cluster.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.recv(4096)  # the challenge
        sock.sendall(b"\x10\x00\x00\x00" + b"\xff" * 16)
        sock.settimeout(5)
        data = sock.recv(4096)
        assert b"Rejected" in data or data == b"" or w.HANDSHAKE.decode(data[4:])
    assert tg.get(square.remote(6)) == 36


def test_unknown_addresses_raise_connection_error():
    with pytest.raises(ConnectionError, match="could not connect"):
        tg.init("tcp://127.0.0.1:1", token="x")
    assert not tg.is_initialized()
    with pytest.raises(ValueError, match="address"):
        tg.init("http://example:1", token="x")
    with pytest.raises(ValueError, match="existing"):
        tg.init("tcp://127.0.0.1:1", num_cpus=2, token="x")


def test_auto_without_a_cluster_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKGRAPH_STATE_DIR", str(tmp_path))
    with pytest.raises(ConnectionError, match="taskgraph start --head"):
        tg.init("auto")


def test_missing_token_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKGRAPH_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("TASKGRAPH_TOKEN", raising=False)
    with pytest.raises(AuthenticationError, match="TASKGRAPH_TOKEN"):
        tg.init("tcp://127.0.0.1:9")


@tg.remote(max_retries=0)
def sleep_long():
    time.sleep(60)


def test_dead_worker_fails_its_tasks_with_node_died(fresh_cluster):
    ref = sleep_long.remote()
    deadline = time.monotonic() + 15
    while tg.available_resources().get("CPU", 0) >= 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker_pid = tg.nodes()[0]["pid"]
    psutil.Process(worker_pid).kill()
    with pytest.raises(NodeDiedError):
        tg.get(ref, timeout=30)
    wait_for(lambda: tg.nodes() == [], what="the scheduler to drop the dead worker")


@tg.remote(max_retries=0)
def sleep_and_say_where(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)


def test_a_task_running_when_its_worker_is_killed_does_not_outlive_it(fresh_cluster, tmp_path):
    """Its executor cannot report to anyone: it ends within a moment, not after the task."""
    path = tmp_path / "pid"
    ref = sleep_and_say_where.remote(str(path))
    wait_for(lambda: path.exists() and path.read_text(), what="the task to start")
    executor = int(path.read_text())
    psutil.Process(tg.nodes()[0]["pid"]).kill()
    with pytest.raises(NodeDiedError):
        tg.get(ref, timeout=30)
    wait_for(lambda: not alive([executor]), timeout=10, what="the orphaned executor to end")


def test_driver_death_stops_its_local_cluster(tmp_path):
    script = (
        "import os, taskgraph as tg\n"
        "tg.init(num_cpus=1)\n"
        "import psutil\n"
        "print(tg._api._runtime.cluster.socket_dir)\n"
        "print(' '.join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    socket_dir, pid_line = out.stdout.splitlines()
    pids = {int(p) for p in pid_line.split()}
    assert pids
    wait_for(lambda: not alive(pids), what="orphaned cluster processes to stop themselves")
    wait_for(lambda: not segments())
    assert not os.path.exists(socket_dir), "the scheduler removes its Unix socket"


def test_a_silent_worker_is_dropped_and_its_tasks_retried(monkeypatch):
    monkeypatch.setenv("TASKGRAPH_WORKER_TIMEOUT", "2")
    tg.init(num_cpus=1)
    try:
        from conftest import start_worker, stop_process

        first = tg.nodes()[0]
        spare = start_worker("--num-cpus", "1")
        try:
            wait_for(lambda: len(tg.nodes()) == 2, what="the second worker")
            frozen = psutil.Process(first["pid"])
            frozen.suspend()  # a host that vanished without closing its connections
            try:
                wait_for(lambda: len(tg.nodes()) == 1, timeout=30, what="the silent worker dropped")
                assert tg.nodes()[0]["node_id"] != first["node_id"]
                assert tg.get(square.remote(7), timeout=30) == 49
            finally:
                frozen.resume()
            wait_for(
                lambda: not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE,
                what="the dropped worker to stop itself",
            )
        finally:
            stop_process(spare)
    finally:
        processes = descendants()
        tg.shutdown()
    wait_for(lambda: not alive(processes))


def test_the_next_daemon_cleans_up_after_a_killed_one(fresh_cluster):
    import numpy as np

    from conftest import start_worker, stop_process
    from taskgraph import config
    from taskgraph.worker import store

    big = tg.put(np.ones(1_000_000))
    node = tg.nodes()[0]
    (record,) = [r for r in config.records("daemon") if r.get("worker_id") == node["node_id"]]
    arena = store.arena_name(node["node_id"])
    assert os.path.isdir(record["socket_dir"]) and arena in segments()
    psutil.Process(node["pid"]).kill()
    wait_for(lambda: tg.nodes() == [], what="the scheduler to notice")
    assert arena in segments(), "a killed daemon cannot clean up after itself"
    successor = start_worker("--num-cpus", "1")
    try:
        wait_for(
            lambda: (
                arena not in segments()
                and not os.path.exists(record["socket_dir"])
                and not os.path.exists(record["path"])
            ),
            what="the next daemon to sweep segments, socket folder and record",
        )
    finally:
        stop_process(successor)
    del big
