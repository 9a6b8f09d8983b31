"""What every ``taskgraph`` command that talks to a running cluster shares: finding
it (``--address``/``--token``, or the one started on this host), connecting,
asking one question, and the error a user can act on (``CliError``).

``cli.py`` (start, stop, status, ...) and ``_cli_state.py`` (list, summary,
timeline) both import from here; neither imports the other's commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from taskgraph import _api, config
from taskgraph import _wire as w
from taskgraph._cli_tls import add_tls_arguments, tls_from_args
from taskgraph._client import Client
from taskgraph._transport import parse_address
from taskgraph.exceptions import AuthenticationError
from taskgraph.settings import settings

if TYPE_CHECKING:
    from taskgraph._tls import TLS


class CliError(Exception):
    """A failure the user can act on: printed as one message, exit code 1."""


def _ask(args: argparse.Namespace, what: w.QueryName, arg: Any = None) -> tuple[str, Any]:
    """Ask the running cluster (``--address``/``--token`` or this host's) one question."""
    with _connected_to(args) as (address, client):
        return address, client.query(what, arg)


@contextmanager
def _connected_to(args: argparse.Namespace) -> Iterator[tuple[str, Client]]:
    """The cluster ``--address``/``--token`` name (or this host's), connected."""
    address = _status_address(args.address)
    token = args.token or config.token_for(address)
    if token is None:
        raise CliError(
            f"no token for the cluster at {address}: pass --token or set {config.TOKEN_ENV}"
        )
    try:
        tls = tls_from_args(args, address)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    with _connected(address, token, tls) as client:
        yield address, client


def _status_address(given: str | None) -> str:
    if given:
        return _normalize_address(given)
    from_env = settings().address
    if from_env and from_env not in ("auto", "local"):
        return _normalize_address(from_env)
    running = config.recorded("scheduler")
    if not running:
        raise CliError(
            "no taskgraph cluster is running on this host; start one with "
            "'taskgraph start --head', or pass --address HOST:PORT to look at another"
        )
    return str(running[0]["address"])


@contextmanager
def _connected(address: str, token: str, tls: TLS | None = None) -> Iterator[Client]:
    """A client of the cluster at ``address`` (``tls``: with these certificates, else
    those of the environment or this host's record); failures become CliErrors."""
    try:
        files = (tls.cert, tls.key, tls.ca) if tls else (None, None, None)
        _api.init(address, token=token, tls_cert=files[0], tls_key=files[1], tls_ca=files[2])
    except AuthenticationError:
        raise CliError(
            f"authentication with the cluster at {address} failed: the token is wrong (or the "
            "scheduler runs another taskgraph version). Pass the token that 'taskgraph start "
            f"--head' printed with --token, or set {config.TOKEN_ENV}"
        ) from None
    except ConnectionError as exc:
        raise CliError(f"cannot connect to the cluster at {address}: {exc}") from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        yield _api.client()
    finally:
        _api.shutdown()


def _normalize_address(text: str) -> str:
    try:
        return str(parse_address(text))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        metavar="HOST:PORT",
        default=None,
        help=f"the scheduler (default: {config.ADDRESS_ENV}, or the cluster started here)",
    )
    p.add_argument(
        "--token", default=None, help=f"cluster token (default: {config.TOKEN_ENV} or recorded)"
    )
    add_tls_arguments(p)
