"""Settings every process reads: the cluster token and where local clusters are recorded.

A cluster is protected by a token (any string). The scheduler never sends it;
peers prove they know it (see ``_transport``). A scheduler started by the CLI
records its address and token in a file readable only by its user, so that
``tg.init("auto")`` and ``taskgraph-worker`` on the same host find it.
``taskgraph start`` records the workers it starts the same way (kind
"worker"), and ``taskgraph stop`` stops every recorded process::

    <state_dir>/scheduler-<pid>.json   address, token, pid, create_time
    <state_dir>/worker-<pid>.json      ... and worker_id, log
    <state_dir>/logs/<kind>-<pid>.log  output of processes started by the CLI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from taskgraph.settings import settings

TOKEN_ENV = "TASKGRAPH_TOKEN"
ADDRESS_ENV = "TASKGRAPH_ADDRESS"
DASHBOARD_PORT = 8686  # the scheduler's HTTP port unless told: neither Ray's 8265 nor Dask's 8787


def state_dir() -> Path:
    return settings().state_path()


def new_token() -> str:
    return secrets.token_hex(16)


def token_bytes(token: str) -> bytes:
    return token.encode()


def record_cluster(address: str, token: str, pid: int, kind: str, **extra: Any) -> Path:
    """Write ``<state_dir>/<kind>-<pid>.json`` (mode 0600) atomically.

    The record keeps the process's start time, so that a later reader never
    mistakes an unrelated process that reused the pid for this one.
    """
    directory = state_dir()
    path = directory / f"{kind}-{pid}.json"
    record = {
        "address": address,
        "token": token,
        "pid": pid,
        "kind": kind,
        "create_time": _create_time(pid),
        **extra,
    }
    # Written aside and renamed, so a reader never sees half a record.
    partial = directory / f".{kind}-{pid}.json.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    partial.replace(path)
    return path


def records(kind: str) -> list[dict[str, Any]]:
    """Every record of this kind, newest first, each with ``path`` and ``alive`` added."""
    found = []
    for path in state_dir().glob(f"{kind}-*.json"):
        try:
            record = json.loads(path.read_text())
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        record["path"] = str(path)
        record["alive"] = is_alive(record)
        found.append((mtime, record))
    return [r for _, r in sorted(found, key=lambda x: x[0], reverse=True)]


def recorded(kind: str) -> list[dict[str, Any]]:
    """Live records of this kind, newest first; records of dead processes are removed."""
    live = []
    for record in records(kind):
        if record["alive"]:
            live.append(record)
        else:
            forget(record)
    return live


def forget(record: dict[str, Any]) -> None:
    """Remove a record's file (it may already be gone)."""
    Path(record["path"]).unlink(missing_ok=True)


def is_alive(record: dict[str, Any]) -> bool:
    """Whether the recorded process still runs (the same process, not a reused pid)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    import psutil  # here: only the CLIs and daemons look at other processes

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except psutil.Error:
        return False
    expected = record.get("create_time")
    return expected is None or abs(created - float(expected)) < 1.0


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


MIN_OBJECT_STORE = 1 << 20


def store_size_arg(text: str) -> int:
    """``--object-store-memory``: a whole number of bytes, at least 1 MiB."""
    try:
        size = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if size < MIN_OBJECT_STORE:
        raise argparse.ArgumentTypeError(
            f"{size} bytes is too small for an object store: give at least "
            f"{MIN_OBJECT_STORE} (1 MiB)"
        )
    return size


def parse_resources(text: str) -> dict[str, float]:
    """Custom resources from JSON such as ``'{"disk": 1, "TPU": 4}'``; ValueError says why not."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not valid JSON ({exc}); expected an object such as '{{\"disk\": 1}}'"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"{text!r} is a JSON {type(value).__name__}; expected an object such as "
            "'{\"disk\": 1}'"
        )
    resources: dict[str, float] = {}
    for name, amount in value.items():
        if name in ("CPU", "GPU"):
            raise ValueError(f"set {name} with --num-{name.lower()}s, not in custom resources")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not math.isfinite(amount)
            or amount < 0
        ):
            raise ValueError(
                f"resource {name!r} must be a non-negative number, got {json.dumps(amount)}"
            )
        resources[name] = float(amount)
    return resources


def token_for(address: str | None) -> str | None:
    """The token from the environment, or from the record of a scheduler at that address."""
    token = settings().token
    if token:
        return token
    record = scheduler_record(address)
    return None if record is None else str(record["token"])


def scheduler_record(address: str | None) -> dict[str, Any] | None:
    """This host's record of the live scheduler at ``address`` (None: any)."""
    for record in recorded("scheduler"):
        if address is None or _same_address(record["address"], address):
            return record
    return None


def _same_address(a: str, b: str) -> bool:
    def norm(x: str) -> str:
        x = x.removeprefix("tcp://")
        host, _, port = x.rpartition(":")
        if host in ("localhost", "0.0.0.0", "127.0.0.1", ""):
            host = "127.0.0.1"
        return f"{host}:{port}"

    return norm(a) == norm(b)


def amount_argument(text: str) -> float:
    """A command line's resource amount (argparse ``type=``): finite, not negative."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative number")
    return value
