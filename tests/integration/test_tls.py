"""A cluster on TLS, run for real: a scheduler and two workers started with
certificates ``taskgraph tls init`` made, and drivers with and without them.

The two workers are told they are on different hosts (``TASKGRAPH_HOST_ID``),
so objects move between their stores through their peer servers, over TLS,
as between two real hosts. Everything is on loopback.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import taskgraph as tg
from conftest import stop_process, wait_for
from taskgraph import _wire as w
from taskgraph._transport import HANDSHAKE_TIMEOUT, HELLO_LIMIT, connect_blocking, recv_frame
from taskgraph.exceptions import ClusterConnectionError
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.cluster

TOKEN = "tls-test-token"
SIZE = 500_000  # float64s: 4 MB, well above what travels inline


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskgraph.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def plain_env(**extra: str) -> dict[str, str]:
    """This environment without any TLS or cluster settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGRAPH_TLS_")}
    env.pop("TASKGRAPH_ADDRESS", None)
    return dict(env, TASKGRAPH_TOKEN=TOKEN, **extra)


@dataclass(frozen=True)
class Certs:
    folder: Path
    other: Path  # another cluster's CA and a certificate it signed ("stranger")

    def flags(self, name: str, ca: Path | None = None) -> list[str]:
        ca = ca or self.folder / "ca.pem"
        return [
            "--tls-cert",
            str(self.folder / f"{name}.pem"),
            "--tls-key",
            str(self.folder / f"{name}-key.pem"),
            "--tls-ca",
            str(ca),
        ]

    def keywords(self, name: str = "driver") -> dict[str, str]:
        return {
            "tls_cert": str(self.folder / f"{name}.pem"),
            "tls_key": str(self.folder / f"{name}-key.pem"),
            "tls_ca": str(self.folder / "ca.pem"),
        }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    base = tmp_path_factory.mktemp("tls")
    made = run_cli("tls", "init", str(base / "cluster"), "--name", "head", "--name", "far")
    assert made.returncode == 0, made.stderr
    more = run_cli("tls", "init", str(base / "cluster"), "--name", "driver")  # the same CA
    assert more.returncode == 0, more.stderr
    other = run_cli("tls", "init", str(base / "other"), "--name", "stranger")
    assert other.returncode == 0, other.stderr
    return Certs(base / "cluster", base / "other")


@dataclass(frozen=True)
class Cluster:
    address: str
    log: Path  # the scheduler's stderr

    def log_says(self, text: str) -> bool:
        return text in self.log.read_text()


def start_scheduler(log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    with open(log, "wb") as err:
        scheduler = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskgraph.scheduler.cli",
                *("--port", "0", "--no-record"),
                "--no-dashboard",
                *flags,
            ],
            env=plain_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert scheduler.stdout is not None
    line = scheduler.stdout.readline().decode()
    assert "listening at" in line, log.read_text()
    return scheduler, line.split()[-1]


def start_worker(address: str, *flags: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskgraph.worker.cli", address, "--num-cpus", "1", *flags],
        env=plain_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tls_cluster(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    log = tmp_path_factory.mktemp("scheduler") / "stderr"
    scheduler, address = start_scheduler(log, *certs.flags("head"))
    near = start_worker(address, *certs.flags("head"))
    far = start_worker(
        address, *certs.flags("far"), "--resources", '{"far": 1}', TASKGRAPH_HOST_ID="far-host"
    )
    try:
        # Up, with their arenas made, before any test's leak check looks.
        tg.init(address, token=TOKEN, **certs.keywords())
        try:
            wait_for(lambda: len(tg.nodes()) == 2, what="both workers to join")
        finally:
            tg.shutdown()
        yield Cluster(address, log)
    finally:
        for proc in (near, far, scheduler):
            stop_process(proc)
        assert scheduler.stdout is not None
        scheduler.stdout.close()


@pytest.fixture
def driver(tls_cluster: Cluster, certs: Certs) -> Iterator[Cluster]:
    """This process joined to the TLS cluster as a driver."""
    tg.init(tls_cluster.address, token=TOKEN, **certs.keywords())
    try:
        yield tls_cluster
    finally:
        tg.shutdown()


@tg.remote(resources={"far": 1})
def produce(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(SIZE)


@tg.remote
def digest(array: np.ndarray) -> tuple[str, str]:
    return hashlib.sha256(array.tobytes()).hexdigest(), tg.get_runtime_context().get_node_id()


@tg.remote
def combine(*digests: tuple[str, str]) -> str:
    return hashlib.sha256("".join(d for d, _ in digests).encode()).hexdigest()


def expected(seed: int) -> str:
    return hashlib.sha256(np.random.default_rng(seed).random(SIZE).tobytes()).hexdigest()


def test_a_task_graph_runs_over_tls_between_two_hosts(driver: Cluster) -> None:
    far = next(n for n in tg.nodes() if n["host"] == "far-host")
    near = next(n for n in tg.nodes() if n["host"] != "far-host")
    on_near = NodeAffinitySchedulingStrategy(near["node_id"])

    # Made on the far host, read on the near one: pulled from store to store.
    arrays = [produce.remote(seed) for seed in range(3)]
    digests = [digest.options(scheduling_strategy=on_near).remote(a) for a in arrays]
    total = combine.remote(*digests)
    got = tg.get(digests, timeout=120)
    assert [d for d, _ in got] == [expected(seed) for seed in range(3)]
    assert {node for _, node in got} == {near["node_id"]}
    assert (
        tg.get(total, timeout=60)
        == hashlib.sha256("".join(expected(seed) for seed in range(3)).encode()).hexdigest()
    )
    holders = {n["node_id"]: n["objects"] for n in tg.object_store_stats()["nodes"]}
    assert holders[near["node_id"]] >= 3, "the near worker holds copies it pulled"
    assert holders[far["node_id"]] >= 3

    # The driver, on neither host, pulls from the far worker's peer server itself.
    array = tg.get(arrays[0], timeout=60)
    assert hashlib.sha256(array.tobytes()).hexdigest() == expected(0)


def test_a_workers_peer_server_refuses_plain_tcp(driver: Cluster) -> None:
    far = next(n for n in tg.nodes() if n["host"] == "far-host")
    hello = w.Hello("peer", b"", os.urandom(8), pid=os.getpid())
    with pytest.raises(ClusterConnectionError, match="asks for TLS"):
        connect_blocking(far["peer"], TOKEN.encode(), hello, w.PEER_REPLIES)


def test_a_driver_without_certificates_is_refused_and_both_sides_say_why(
    tls_cluster: Cluster,
) -> None:
    with pytest.raises(ClusterConnectionError, match=r"asks for TLS .* this process has none"):
        tg.init(tls_cluster.address, token=TOKEN)
    assert not tg.is_initialized()
    wait_for(
        lambda: tls_cluster.log_says("it closed without starting TLS"),
        what="the scheduler to log the refusal",
    )


def test_a_peer_that_never_starts_tls_is_dropped_at_the_handshake_deadline(
    tls_cluster: Cluster,
) -> None:
    host, port = tls_cluster.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT + 10) as sock:
        assert w.HANDSHAKE.decode(recv_frame(sock, HELLO_LIMIT)) == [w.StartTLS()]
        started = time.monotonic()
        assert sock.recv(1) == b"", "the scheduler closes the connection"
        assert time.monotonic() - started >= HANDSHAKE_TIMEOUT - 1
    wait_for(
        lambda: tls_cluster.log_says("it did not finish a TLS handshake within"),
        what="the scheduler to log why",
    )


def test_a_driver_and_a_worker_give_up_on_a_server_that_never_finishes_tls(
    certs: Certs,
) -> None:
    """A server that says StartTLS and then nothing: each client's handshake deadline
    (the driver's blocking socket, the worker's event loop), side by side."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        accepted: list[socket.socket] = []

        def accept() -> None:
            for _ in range(2):
                conn, _ = server.accept()
                conn.sendall(w.encode([w.StartTLS()]))
                accepted.append(conn)  # held open, silent

        thread = threading.Thread(target=accept)
        thread.start()
        started = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskgraph.worker.cli", address, *certs.flags("far")],
            env=plain_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with pytest.raises(ClusterConnectionError, match=r"TLS handshake .* took over"):
                tg.init(address, token=TOKEN, **certs.keywords())
            assert time.monotonic() - started >= HANDSHAKE_TIMEOUT - 1
            _, err = worker.communicate(timeout=60)
            assert worker.returncode == 1
            assert "TLS handshake with" in err and "took over" in err
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
            thread.join(30)
            for conn in accepted:
                conn.close()
    assert not tg.is_initialized()


def test_a_worker_without_certificates_exits_with_the_reason(tls_cluster: Cluster) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "taskgraph.worker.cli", tls_cluster.address, "--num-cpus", "1"],
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 1
    assert "asks for TLS" in worker.stderr


def test_a_certificate_from_another_ca_is_refused(
    tls_cluster: Cluster, certs: Certs, tmp_path: Path
) -> None:
    stranger = {
        "tls_cert": str(certs.other / "stranger.pem"),
        "tls_key": str(certs.other / "stranger-key.pem"),
    }
    # Trusting the other CA, the driver refuses the scheduler's certificate...
    with pytest.raises(ClusterConnectionError, match="is not signed by this cluster's CA"):
        tg.init(tls_cluster.address, token=TOKEN, tls_ca=str(certs.other / "ca.pem"), **stranger)
    # ...and trusting the cluster's CA, it is refused by the scheduler.
    with pytest.raises(ClusterConnectionError, match="refused this process's certificate"):
        tg.init(tls_cluster.address, token=TOKEN, tls_ca=str(certs.folder / "ca.pem"), **stranger)
    assert not tg.is_initialized()
    wait_for(
        lambda: tls_cluster.log_says("it refused this process's certificate"),
        what="the scheduler to log that its certificate was refused",
    )
    wait_for(
        lambda: tls_cluster.log_says("its certificate is not signed by this cluster's CA"),
        what="the scheduler to log the refusal",
    )


def test_a_process_with_certificates_refuses_a_plain_scheduler(
    certs: Certs, tmp_path: Path
) -> None:
    log = tmp_path / "stderr"
    scheduler, address = start_scheduler(log)
    try:
        with pytest.raises(ClusterConnectionError, match="speaks plain TCP"):
            tg.init(address, token=TOKEN, **certs.keywords())
        wait_for(
            lambda: "refuses plain TCP" in log.read_text(),
            what="the plain scheduler to log why the peer left",
        )
    finally:
        stop_process(scheduler)
        assert scheduler.stdout is not None
        scheduler.stdout.close()


def bad_file(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "missing.pem"
    if kind == "folder":
        return folder
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate")
    return garbage


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("missing", "no such file"),
        ("folder", "a folder, not a file"),
        ("garbage", "not a PEM certificate"),
    ],
)
def test_a_bad_certificate_file_stops_each_program_at_start(
    certs: Certs, tmp_path: Path, kind: str, says: str
) -> None:
    bad = str(bad_file(kind, tmp_path))
    flags = certs.flags("head")
    flags[1] = bad  # --tls-cert
    scheduler = subprocess.run(
        [sys.executable, "-m", "taskgraph.scheduler.cli", "--port", "0", "--no-record", *flags],
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scheduler.returncode == 1
    assert f"taskgraph-scheduler: --tls-cert {bad}: {says}" in scheduler.stderr
    worker = subprocess.run(
        [sys.executable, "-m", "taskgraph.worker.cli", "tcp://127.0.0.1:9", *flags],
        env=plain_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 1
    assert f"taskgraph-worker: --tls-cert {bad}: {says}" in worker.stderr
    with pytest.raises(ValueError, match=re.escape(f"tls_cert='{bad}': {says}")):
        tg.init("tcp://127.0.0.1:9", token=TOKEN, **dict(certs.keywords(), tls_cert=bad))
    assert not tg.is_initialized()


def test_tls_needs_all_three_files(certs: Certs) -> None:
    only_cert = {"tls_cert": certs.keywords()["tls_cert"]}
    with pytest.raises(
        ValueError,
        match=re.escape(
            "tls_key (or TASKGRAPH_TLS_KEY) and tls_ca (or TASKGRAPH_TLS_CA) are missing"
        ),
    ):
        tg.init("tcp://127.0.0.1:9", token=TOKEN, **only_cert)
    assert not tg.is_initialized()
