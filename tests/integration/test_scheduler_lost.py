"""A driver whose scheduler is gone refuses new work at once, with ConnectionError.

Before, ``.remote()`` and ``put()`` went on returning refs whose values could
never come (and ``put`` stored a value nothing would free); only ``get``
raised. Now every call that would send work raises ``ClusterConnectionError``
(a ``ConnectionError``), as docs/guide.md's errors table says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DRIVER = """
import time
import psutil
import taskgraph as tg

@tg.remote
def f(x):
    return x

@tg.remote(num_cpus=0)
class A:
    def ping(self):
        return "pong"

tg.init(num_cpus=1)
a = A.remote()
assert tg.get([f.remote(1), a.ping.remote()]) == [1, "pong"]
me = psutil.Process()
scheduler = [
    p for p in me.children(recursive=True) if "taskgraph.scheduler.cli" in " ".join(p.cmdline())
]
assert len(scheduler) == 1, scheduler
scheduler[0].kill()
deadline = time.monotonic() + 30
while tg.statistics() and time.monotonic() < deadline:
    try:
        tg.put(0)  # refused once the client has heard
    except ConnectionError:
        break
    time.sleep(0.05)
for name, call in [
    ("remote", lambda: f.remote(2)),
    ("actor call", lambda: a.ping.remote()),
    ("put", lambda: tg.put(3)),
    ("get", lambda: tg.get(f.remote(4), timeout=5)),
]:
    try:
        call()
        print(name, "returned")
    except ConnectionError as exc:
        print(name, type(exc).__name__, "lost the connection to the scheduler" in str(exc))
tg.shutdown()
"""


def test_remote_put_and_actor_calls_raise_connection_error_once_the_scheduler_is_lost(
    tmp_path: Path,
):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TASKGRAPH_TOKEN", "TASKGRAPH_ADDRESS", "TASKGRAPH_STATE_DIR")
    }
    env["TASKGRAPH_STATE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "remote ClusterConnectionError True",
        "actor call ClusterConnectionError True",
        "put ClusterConnectionError True",
        "get ClusterConnectionError True",
    ], (proc.stdout, proc.stderr)
