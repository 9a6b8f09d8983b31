"""Settings every process reads: the cluster token and where local clusters are recorded.

A cluster is protected by a token (any string). The scheduler never sends it;
peers prove they know it (see ``_transport``). A scheduler started by the CLI
records its address and token in a file readable only by its user, so that
``tg.init("auto")`` and ``taskgraph-worker`` on the same host find it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import psutil

TOKEN_ENV = "TASKGRAPH_TOKEN"
ADDRESS_ENV = "TASKGRAPH_ADDRESS"


def state_dir() -> Path:
    path = Path(os.environ.get("TASKGRAPH_STATE_DIR", f"/tmp/taskgraph-{os.getuid()}"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def new_token() -> str:
    return secrets.token_hex(16)


def token_bytes(token: str) -> bytes:
    return token.encode()


def record_cluster(address: str, token: str, pid: int, kind: str, **extra: Any) -> Path:
    """Write ``<state_dir>/<kind>-<pid>.json`` (mode 0600)."""
    path = state_dir() / f"{kind}-{pid}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"address": address, "token": token, "pid": pid, "kind": kind, **extra}, f)
    return path


def recorded(kind: str) -> list[dict[str, Any]]:
    """Live records of this kind, newest first; records of dead processes are removed."""
    found = []
    for path in state_dir().glob(f"{kind}-*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not psutil.pid_exists(record.get("pid", -1)):
            path.unlink(missing_ok=True)
            continue
        record["path"] = str(path)
        found.append((path.stat().st_mtime, record))
    return [r for _, r in sorted(found, key=lambda x: x[0], reverse=True)]


def token_for(address: str | None) -> str | None:
    """The token from the environment, or from the record of a scheduler at that address."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    for record in recorded("scheduler"):
        if address is None or _same_address(record["address"], address):
            return str(record["token"])
    return None


def _same_address(a: str, b: str) -> bool:
    def norm(x: str) -> str:
        x = x.removeprefix("tcp://")
        host, _, port = x.rpartition(":")
        if host in ("localhost", "0.0.0.0", "127.0.0.1", ""):
            host = "127.0.0.1"
        return f"{host}:{port}"

    return norm(a) == norm(b)
