"""Two hosts in network namespaces: a scheduler and worker on one, a worker on the other.

The namespaces are joined by a veth pair with addresses that exist only
inside them. Objects made on one host and needed on the other travel
worker to worker across that link; what a task prints on the other host
reaches the driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import stop_process, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 ('ip')",
)

# The addresses exist only inside the two namespaces, so sessions running side
# by side (pytest-xdist's workers) may share a subnet harmlessly; what must
# differ, and does, are the namespace and veth names: this process's pid is in them.
SUBNET = f"10.231.{os.getpid() % 250}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    a, b = f"tga{os.getpid()}", f"tgb{os.getpid()}"
    va, vb = f"va{os.getpid()}"[:15], f"vb{os.getpid()}"[:15]
    ip("netns", "add", a)
    ip("netns", "add", b)
    try:
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        ip("link", "set", va, "netns", a)
        ip("link", "set", vb, "netns", b)
        ip("-n", a, "addr", "add", f"{SUBNET}.1/24", "dev", va)
        ip("-n", b, "addr", "add", f"{SUBNET}.2/24", "dev", vb)
        for ns, dev in ((a, va), (b, vb)):
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        ip("netns", "delete", a)  # takes the veth pair with it
        ip("netns", "delete", b)


DRIVER = """
import hashlib, sys
import numpy as np
import taskgraph as tg
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

tg.init(sys.argv[1], token=sys.argv[2])

@tg.remote(resources={"b": 1})
def produce():
    return np.arange(3_000_000, dtype=np.float64)

@tg.remote(resources={"a": 1})
def consume(array):
    return hashlib.sha256(array.tobytes()).hexdigest(), tg.get_runtime_context().get_node_id()

ref = produce.remote()
digest, node = tg.get(consume.remote(ref), timeout=120)
want = hashlib.sha256(np.arange(3_000_000, dtype=np.float64).tobytes()).hexdigest()
assert digest == want, "the copy differs"
local = tg.get(ref, timeout=120)
assert hashlib.sha256(local.tobytes()).hexdigest() == want
peers = sorted(n["peer"] for n in tg.nodes())

@tg.remote(resources={"b": 1})
def shout():
    import os
    print("hello from the other host")
    return os.getpid(), tg.get_runtime_context().get_node_id()

import io, time
real, sys.stdout = sys.stdout, io.StringIO()  # what the driver shows of its tasks
pid, far = tg.get(shout.remote(), timeout=120)
deadline = time.monotonic() + 30
while "hello from the other host" not in sys.stdout.getvalue() and time.monotonic() < deadline:
    time.sleep(0.05)
shown, sys.stdout = sys.stdout.getvalue(), real
print("OK", peers, tg.object_store_stats()["nodes"])
print("SHOWN", shown, "FROM", pid, far[:6])
tg.shutdown()
"""


def test_objects_cross_between_two_hosts(two_hosts, tmp_path):
    a, b = two_hosts
    token = "multi-host-test-token"
    env = dict(os.environ, TASKGRAPH_TOKEN=token, TASKGRAPH_STATE_DIR=str(tmp_path))
    py = sys.executable
    scheduler = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            a,
            py,
            "-m",
            "taskgraph.scheduler.cli",
            "--host",
            f"{SUBNET}.1",
            "--port",
            "0",
            "--no-record",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    workers: list[subprocess.Popen[bytes]] = []
    try:
        assert scheduler.stdout is not None
        line = scheduler.stdout.readline().decode()
        assert "listening at" in line, line
        address = line.split()[-1]
        for ns, host, resources in ((a, "host-a", '{"a": 1}'), (b, "host-b", '{"b": 1}')):
            workers.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        py,
                        "-m",
                        "taskgraph.worker.cli",
                        address,
                        "--num-cpus",
                        "1",
                        "--resources",
                        resources,
                    ],
                    env=dict(env, TASKGRAPH_HOST_ID=host),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                )
            )
        driver = subprocess.run(
            ["ip", "netns", "exec", a, py, "-c", DRIVER, address, token],
            env=dict(env, TASKGRAPH_HOST_ID="host-a"),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert driver.returncode == 0, driver.stdout + driver.stderr
        assert driver.stdout.startswith("OK"), driver.stdout
        assert f"tcp://{SUBNET}.1:" in driver.stdout and f"tcp://{SUBNET}.2:" in driver.stdout
        # What a task on the other host printed reached this driver, named by its node.
        pid, node = driver.stdout.split(" FROM ")[1].split()
        assert f"(shout pid={pid}, node={node}) hello from the other host" in driver.stdout
        # The head reads the other host's log files through its worker daemon.
        logs = subprocess.run(
            ["ip", "netns", "exec", a, py, "-m", "taskgraph.cli", "logs", "--node", node,
             "--address", address, "--token", token],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert logs.returncode == 0, logs.stderr
        assert f"==> node {node}" in logs.stdout and "hello from the other host" in logs.stdout
    finally:
        for proc in workers:
            stop_process(proc)
        stop_process(scheduler)
        if scheduler.stdout is not None:
            scheduler.stdout.close()
        wait_for(lambda: all(p.poll() is not None for p in [scheduler, *workers]))
