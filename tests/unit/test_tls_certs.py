"""``taskgraph tls init`` makes a CA and certificates it signed, with keys only
their owner may read; and a process finds its TLS files where the user said
(flags or keywords, ``TASKGRAPH_TLS_*``, this host's record of the cluster)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from taskgraph import _tls, _tls_certs, config
from taskgraph.cli import main
from taskgraph.settings import reread


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_makes_a_ca_and_signed_certificates_with_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "certs"
    assert main(["tls", "init", str(folder), "--name", "head", "--name", "w1"]) == 0
    said = capsys.readouterr().out
    assert mode(folder) == 0o700
    for key in ("ca-key.pem", "head-key.pem", "w1-key.pem"):
        assert mode(folder / key) == 0o600, key
    ca = load(folder / "ca.pem")
    for name in ("head", "w1"):
        cert = load(folder / f"{name}.pem")
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
    # What goes where, with the flags to use.
    for line in ("ca.pem", "(--tls-ca)", "ca-key.pem", "keep it off the cluster", "head.pem"):
        assert line in said
    assert f"--tls-cert {folder / 'head.pem'} --tls-key {folder / 'head-key.pem'}" in said

    # Again in the same folder: a new certificate, signed by the same CA.
    assert main(["tls", "init", str(folder), "--name", "w2"]) == 0
    assert "signed by the CA already there" in capsys.readouterr().out
    load(folder / "w2.pem").verify_directly_issued_by(ca)
    assert load(folder / "ca.pem") == ca


def test_init_never_overwrites_and_refuses_bad_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tls", "init", str(tmp_path), "--name", "head"]) == 0
    before = (tmp_path / "head-key.pem").read_bytes()
    assert main(["tls", "init", str(tmp_path), "--name", "head"]) == 1
    assert "head.pem exists already; nothing was overwritten" in capsys.readouterr().err
    assert (tmp_path / "head-key.pem").read_bytes() == before
    for bad in ("ca", "a/b", "x-key", ""):
        assert main(["tls", "init", str(tmp_path), "--name", bad]) == 1
        assert "not a usable name" in capsys.readouterr().err
    assert main(["tls", "init", str(tmp_path), "--name", "w", "--days", "0"]) == 1
    assert "at least a day" in capsys.readouterr().err
    (tmp_path / "ca.pem").unlink()  # a CA key without its certificate
    assert main(["tls", "init", str(tmp_path), "--name", "w"]) == 1
    assert "ca-key.pem exists without its pair" in capsys.readouterr().err


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    _tls_certs.init(folder, ["node"], days=1)
    return folder


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set TASKGRAPH_* variables for one test; the settings are read again after it."""
    for name in ("TASKGRAPH_TLS_CERT", "TASKGRAPH_TLS_KEY", "TASKGRAPH_TLS_CA"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    monkeypatch.undo()
    reread()


def test_files_come_from_flags_else_the_environment(certs: Path, environment) -> None:
    files = [str(certs / n) for n in ("node.pem", "node-key.pem", "ca.pem")]
    reread()
    assert _tls.resolve(None, None, None) is None
    assert _tls.resolve(*files) == _tls.TLS(*files)
    environment.setenv("TASKGRAPH_TLS_CERT", files[0])
    environment.setenv("TASKGRAPH_TLS_KEY", files[1])
    environment.setenv("TASKGRAPH_TLS_CA", files[2])
    reread()
    assert _tls.resolve(None, None, None) == _tls.TLS(*files)
    with pytest.raises(ValueError, match=r"--tls-ca /nowhere\.pem: no such file"):
        _tls.resolve(None, None, "/nowhere.pem")
    environment.delenv("TASKGRAPH_TLS_CA")
    reread()
    with pytest.raises(ValueError, match=r"--tls-ca \(or TASKGRAPH_TLS_CA\) is missing"):
        _tls.resolve(None, None, None)


def test_a_scheduler_record_gives_its_files_to_processes_on_its_host(
    certs: Path, environment
) -> None:
    reread()
    tls = _tls.TLS.load(*(str(certs / n) for n in ("node.pem", "node-key.pem", "ca.pem")))
    record = config.record_cluster(
        "tcp://127.0.0.1:1", "t", os.getpid(), "scheduler", **tls.record()
    )
    try:
        assert _tls.resolve(None, None, None, address="tcp://127.0.0.1:1") == tls
        assert _tls.resolve(None, None, None, address="tcp://127.0.0.1:2") is None
    finally:
        record.unlink()
    # (One record per pid: this one replaces the first.)
    files = {"tls_cert": "/gone.pem", "tls_key": "k", "tls_ca": "c"}
    record = config.record_cluster("tcp://127.0.0.1:3", "t", os.getpid(), "scheduler", **files)
    try:
        with pytest.raises(ValueError, match=r"the scheduler's record's tls_cert /gone\.pem: no"):
            _tls.resolve(None, None, None, address="tcp://127.0.0.1:3")
    finally:
        record.unlink()


def test_a_key_that_is_not_the_certificates_is_named(certs: Path, tmp_path: Path) -> None:
    _tls_certs.init(tmp_path, ["other"], days=1)
    with pytest.raises(ValueError, match=r"other-key\.pem is not the key of --tls-cert"):
        _tls.TLS.load(
            str(certs / "node.pem"), str(tmp_path / "other-key.pem"), str(certs / "ca.pem")
        )
