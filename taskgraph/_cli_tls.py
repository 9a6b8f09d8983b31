"""TLS on the command line: the ``--tls-cert/--tls-key/--tls-ca`` flags every
program takes (``taskgraph-scheduler``, ``taskgraph-worker``, ``taskgraph
start``), and ``taskgraph tls init``, which makes a cluster's CA and
certificates (``_tls_certs.py``) and says what goes where.

Imports nothing heavy: the scheduler and worker programs read their flags
through here before they start.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskgraph import _tls
from taskgraph._tls import TLS

if TYPE_CHECKING:  # (cryptography is imported only by the command that makes certificates)
    from taskgraph._tls_certs import Made


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "TLS",
        "all three, or none; with them, every connection to the scheduler and between "
        "hosts is TLS and plain TCP is refused ('taskgraph tls init' makes them; "
        "docs/security.md)",
    )
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=None,
        help="this process's certificate, signed by the cluster's CA (default: $TASKGRAPH_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        metavar="FILE",
        default=None,
        help="the certificate's private key (default: $TASKGRAPH_TLS_KEY)",
    )
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=None,
        help="the cluster's CA certificate (default: $TASKGRAPH_TLS_CA)",
    )


def tls_from_args(args: argparse.Namespace, address: str | None = None) -> TLS | None:
    """The flags, else ``TASKGRAPH_TLS_*``, else what this host's record of the
    scheduler at ``address`` keeps; ``ValueError`` for a file that will not do."""
    return _tls.resolve(args.tls_cert, args.tls_key, args.tls_ca, address=address)


def started_note(tls: TLS | None) -> str:
    """What ``taskgraph start --head`` adds to its text for a cluster on TLS."""
    if tls is None:
        return ""
    return (
        f"\n\nTLS only: every other process needs a certificate of the CA in {tls.ca}, its "
        "key and that CA\n(--tls-cert/--tls-key/--tls-ca, or tls_cert=/tls_key=/tls_ca= "
        "in tg.init; on this host the record has them)."
    )


# -- taskgraph tls init -----------------------------------------------------------


def add_commands(commands: Any) -> None:
    tls = commands.add_parser(
        "tls",
        help="make a cluster's TLS certificates",
        description="Make the certificates a cluster with TLS runs on (docs/security.md).",
    )
    sub = tls.add_subparsers(dest="tls_command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "init",
        help="make a cluster CA and node certificates in a folder",
        description=(
            "Make a certificate authority for one cluster (ca.pem, ca-key.pem) and a "
            "certificate with its key for each --name (NAME.pem, NAME-key.pem), in DIR "
            "(made readable by you only). If DIR holds a CA already, the new certificates "
            "are signed by it. No file is overwritten."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="the folder to write them in")
    p.add_argument(
        "--name",
        action="append",
        default=None,
        metavar="NAME",
        help="a certificate to make (repeat for several, e.g. one per host; default: node)",
    )
    p.add_argument(
        "--days",
        type=int,
        default=365,
        metavar="N",
        help="days the certificates are valid (default 365; the CA: 10 years)",
    )
    p.set_defaults(func=cmd_tls_init)


def cmd_tls_init(args: argparse.Namespace) -> None:
    from taskgraph import _tls_certs
    from taskgraph._cli_common import CliError

    folder = Path(args.dir).resolve()
    had_ca = (folder / "ca.pem").exists()
    names = args.name or ["node"]
    try:
        made = _tls_certs.init(folder, names, args.days)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    print(made_text(folder, made, names, had_ca))


def made_text(folder: Path, made: list[Made], names: list[str], had_ca: bool) -> str:
    width = max(len(m.path.name) for m in made) + 2
    lines = [f"In {folder} (the keys readable by you only):"]
    if had_ca:
        lines.append("  (signed by the CA already there, ca.pem)")
    lines += [f"  {m.path.name.ljust(width)}{m.meaning}" for m in made]

    def flags(name: str) -> str:
        cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
        return f"--tls-cert {cert} --tls-key {key} --tls-ca {folder / 'ca.pem'}"

    head, other, driver = names[0], names[min(1, len(names) - 1)], names[-1]
    lines += [
        "",
        "Give every process of the cluster a certificate, its key and ca.pem, e.g.:",
        f"  taskgraph start --head --host 0.0.0.0 {flags(head)}",
        f"  taskgraph start --address HEAD:8786 --token TOKEN {flags(other)}",
        f'  tg.init("tcp://HEAD:8786", token=TOKEN, tls_cert="{folder / driver}.pem",',
        f'          tls_key="{folder / driver}-key.pem", tls_ca="{folder / "ca.pem"}")',
        "  (or TASKGRAPH_TLS_CERT, TASKGRAPH_TLS_KEY and TASKGRAPH_TLS_CA, for any of them)",
        f"More certificates from the same CA: taskgraph tls init {folder} --name NAME",
    ]
    return "\n".join(lines)
