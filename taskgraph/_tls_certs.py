"""A cluster's certificate authority and its nodes' certificates, as PEM files in
one folder (``taskgraph tls init``)::

    ca.pem            the CA's certificate: every process gets it (--tls-ca)
    ca-key.pem        the CA's key: signs more certificates; stays off the cluster
    <name>.pem        a certificate the CA signed, for a host or a driver (--tls-cert)
    <name>-key.pem    its key (--tls-key)

Keys are P-256 elliptic-curve keys, written readable by their owner only
(0600), in a folder only its owner may enter (0700). A folder that already
holds a CA gets certificates signed by it; no file is ever overwritten.
Knows nothing of sockets or of the command line (``_cli_tls.py``).
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650  # the CA outlives the certificates it signs
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EARLY = datetime.timedelta(minutes=5)  # valid a little before now: clocks differ between hosts


@dataclass(frozen=True)
class Made:
    """One file written, and what it is for."""

    path: Path
    meaning: str


def init(folder: Path, names: list[str], days: int) -> list[Made]:
    """Make (or reuse) the CA in ``folder`` and a certificate for each name;
    ``ValueError`` for a bad name or ``days``, or a file that exists already."""
    if days < 1:
        raise ValueError(f"--days {days}: a certificate must be valid for at least a day")
    for name in names:
        if not NAME.fullmatch(name) or name in ("ca", "ca-key") or name.endswith("-key"):
            raise ValueError(
                f"{name!r} is not a usable name: use 1 to 64 letters, digits, '.', '_' or '-' "
                "(not 'ca', nor ending in '-key')"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"a name is given twice: {' '.join(names)}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken = [p for n in names for p in (folder / f"{n}.pem", folder / f"{n}-key.pem") if p.exists()]
    if taken:
        raise ValueError(
            f"{taken[0]} exists already; nothing was overwritten (choose another name)"
        )
    made: list[Made] = []
    ca_cert, ca_key = _ca(folder, days, made)
    for name in names:
        cert, key = _node(name, ca_cert, ca_key, days)
        _write(folder / f"{name}.pem", _cert_pem(cert), private=False)
        _write(folder / f"{name}-key.pem", _key_pem(key), private=True)
        made.append(Made(folder / f"{name}.pem", f"{name}'s certificate (--tls-cert)"))
        made.append(
            Made(folder / f"{name}-key.pem", f"its key (--tls-key): only where {name} runs")
        )
    return made


def _ca(
    folder: Path, days: int, made: list[Made]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not a key taskgraph made")
        return cert, key
    if cert_path.exists() or key_path.exists():
        there = cert_path if cert_path.exists() else key_path
        raise ValueError(f"{there} exists without its pair: a CA needs both ca.pem and ca-key.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own, so that two clusters' CAs are never mistaken for each other.
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"taskgraph cluster CA {secrets.token_hex(4)}")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _EARLY)
        .not_valid_after(now + datetime.timedelta(days=max(days, CA_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, _cert_pem(cert), private=False)
    made.append(Made(cert_path, "the cluster's CA certificate (--tls-ca): on every host"))
    made.append(Made(key_path, "the CA's key: signs more certificates; keep it off the cluster"))
    return cert, key


def _node(
    name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    try:
        ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        authority = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id)
    except x509.ExtensionNotFound:  # (a CA not made here)
        authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _EARLY)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signs=False), critical=True)
        # Each process both serves and connects, so one certificate does both.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(authority, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _usage(*, signs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs,
        crl_sign=signs,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    # O_EXCL: never overwrite; the mode is set as the file is made, never looser first.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
