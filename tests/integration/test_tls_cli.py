"""TLS from the command line and for a local cluster: ``taskgraph start`` with
certificates, the commands and drivers on the head host that find them in its
record, and ``tg.init()`` starting a cluster of its own on TLS."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import (
    another_driver,
    finish,
    processes_with_state_dir,
    running_processes,
    wait_for,
)

pytestmark = pytest.mark.cluster

DRIVER = """
import sys
import taskgraph as tg
tg.init(sys.argv[1], token=sys.argv[2] if len(sys.argv) > 2 else None)
print(sum(tg.get([tg.remote(lambda x: x * x).remote(i) for i in range(10)])))
tg.shutdown()
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls") / "certs"
    made = subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", "tls", "init", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    return folder


def flags(certs: Path) -> list[str]:
    cert, key, ca = (str(certs / name) for name in ("node.pem", "node-key.pem", "ca.pem"))
    return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca]


class Cli:
    """``taskgraph ...`` and drivers against one state directory, with no TLS or
    cluster settings in the environment."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TASKGRAPH_TLS_")
            and k not in ("TASKGRAPH_TOKEN", "TASKGRAPH_ADDRESS")
        }
        self.env["TASKGRAPH_STATE_DIR"] = str(state_dir)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskgraph.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"taskgraph {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def driver(self, *args: str, state_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", DRIVER, *args],
            env=dict(self.env, TASKGRAPH_STATE_DIR=str(state_dir or self.state_dir)),
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path / "state")
    try:
        yield runner
    finally:
        stopped = runner.run("stop")
        wait_for(
            lambda: not running_processes(processes_with_state_dir(runner.state_dir)),
            what="every process 'taskgraph start' started to exit",
        )
        assert stopped.returncode == 0, stopped.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_start_with_certificates_makes_a_tls_only_cluster(
    cli: Cli, certs: Path, tmp_path: Path
) -> None:
    port = free_port()
    out = cli.ok(
        "start", "--head", "--port", str(port), "--num-cpus", "1",
        "--include-dashboard", "false", *flags(certs),
    )  # fmt: skip
    token = re.search(r'token="([^"]+)"', out)
    assert token, out
    address = f"tcp://127.0.0.1:{port}"
    assert (
        f"TLS only: every other process needs a certificate of the CA in {certs / 'ca.pem'}" in out
    )

    # On this host the scheduler's record names the files: no flags needed.
    assert '"node_id"' in cli.ok("status", "--json")
    assert cli.ok("start", "--address", address, "--num-cpus", "1").startswith("Started worker")
    assert cli.driver("auto").stdout.strip() == "285"

    # Elsewhere (no record), a driver without certificates is refused, one with them is not.
    elsewhere = tmp_path / "elsewhere"
    refused = cli.driver(address, token.group(1), state_dir=elsewhere)
    assert refused.returncode == 1
    assert "asks for TLS" in refused.stderr
    elsewhere_cli = Cli(elsewhere)
    status = elsewhere_cli.run("status", "--address", address, "--token", token.group(1))
    assert status.returncode == 1
    assert "asks for TLS" in status.stderr
    status = elsewhere_cli.ok(
        "status", "--address", address, "--token", token.group(1), *flags(certs)
    )
    assert "2 nodes" in status
    env_certs = dict(
        cli.env,
        TASKGRAPH_STATE_DIR=str(elsewhere),
        TASKGRAPH_TLS_CERT=str(certs / "node.pem"),
        TASKGRAPH_TLS_KEY=str(certs / "node-key.pem"),
        TASKGRAPH_TLS_CA=str(certs / "ca.pem"),
    )
    joined = subprocess.run(
        [sys.executable, "-c", DRIVER, address, token.group(1)],
        env=env_certs,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout.strip() == "285"


def test_start_with_a_missing_certificate_starts_nothing(cli: Cli, certs: Path) -> None:
    bad = flags(certs)
    bad[3] = str(certs / "missing-key.pem")
    result = cli.run("start", "--head", "--port", str(free_port()), *bad)
    assert result.returncode == 1
    assert f"--tls-key {certs / 'missing-key.pem'}: no such file" in result.stderr
    assert not processes_with_state_dir(cli.state_dir)


def test_a_local_cluster_runs_on_tls_when_given_certificates(certs: Path) -> None:
    tg.init(
        num_cpus=1,
        tls_cert=str(certs / "node.pem"),
        tls_key=str(certs / "node-key.pem"),
        tls_ca=str(certs / "ca.pem"),
    )
    try:
        assert tg.get(tg.remote(lambda: "over TLS").remote(), timeout=60) == "over TLS"
        # Another driver with the address and token, but no certificates, is refused.
        code, _, err = finish(another_driver("import taskgraph as tg; tg.init()"))
        assert code == 1
        assert "asks for TLS" in err
    finally:
        tg.shutdown()
