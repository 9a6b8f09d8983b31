"""Processes the ``taskgraph`` command starts and stops: detached, logged, and
stopped as a tree (a worker with its executors). ``_local_cluster.py`` starts
its children with the same environment (``child_env``) and a worker with the
same arguments (``worker_arguments``)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from taskgraph import config

STOP_TIMEOUT = 10.0


def child_env(token: str) -> dict[str, str]:
    """The environment for a cluster process: the token in it (not on the command
    line, where ps would show it), and no address of another cluster."""
    env = dict(os.environ)
    env[config.TOKEN_ENV] = token
    env.pop(config.ADDRESS_ENV, None)
    return env


def worker_arguments(
    num_cpus: float | None,
    num_gpus: float | None,
    memory: int | float | None,
    object_store_memory: int | float | None,
    resources: dict[str, float] | None,
) -> list[str]:
    """``taskgraph-worker``'s options for what the worker offers (None, empty: its default)."""
    args: list[str] = []
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    if memory is not None:
        args += ["--memory-limit", str(memory)]
    if object_store_memory is not None:
        args += ["--object-store-memory", str(object_store_memory)]
    if resources:
        args += ["--resources", json.dumps(resources)]
    return args


@dataclass
class Started:
    """A process this command started, until it is handed over to the records."""

    kind: str
    popen: subprocess.Popen[bytes]
    log: Path
    worker_id: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid


def launch(kind: str, module_args: list[str], token: str) -> Started:
    """Start ``python -m <module_args>`` detached, its output in a log file."""
    logs = config.state_dir() / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    log = logs / f"{kind}-starting-{secrets.token_hex(4)}.log"
    env = child_env(token)
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    named = logs / f"{kind}-{popen.pid}.log"
    log.replace(named)  # the open file follows its new name
    return Started(kind, popen, named)


def tree(pid: int) -> list[psutil.Process]:
    """The process and its descendants (a worker's executors), root first."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_processes(trees: list[list[psutil.Process]], timeout: float) -> set[int]:
    """SIGTERM each tree's root, wait up to ``timeout``, then SIGKILL whatever remains.

    Returns the roots that had to be killed.
    """
    for tree in trees:
        if tree:
            try:
                tree[0].terminate()
            except psutil.Error:
                pass
    remaining = wait_gone([p for tree in trees for p in tree], timeout)
    roots = {tree[0].pid for tree in trees if tree}
    killed = set()
    for proc in remaining:
        try:
            proc.kill()
        except psutil.Error:
            continue
        if proc.pid in roots:
            killed.add(proc.pid)
    wait_gone(remaining, STOP_TIMEOUT)
    return killed


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        running = [p for p in procs if is_running(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.02)


def is_running(proc: psutil.Process) -> bool:
    # A zombie has exited; it is gone once its new parent (often init) reaps it,
    # which may take a while, so waiting for the pid to vanish would be wrong.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace").rstrip()
    except OSError:
        return f"    (no log at {log})"
    shown = text.splitlines()[-lines:] or ["(the log is empty)"]
    return "\n".join(f"    {line}" for line in shown) + f"\n  (full log: {log})"
