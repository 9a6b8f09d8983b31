"""What every batch of scheduler instructions must look like, for the fuzz harnesses."""

from __future__ import annotations

from typing import Any

from taskgraph import _wire as w
from taskgraph.scheduler.state import SchedulerState, Send


def check_sends(state: SchedulerState, sends: list[Send]) -> None:
    """Invariants hold; one send per peer; only to peers that are still there."""
    state.validate()
    dests = [(s.to, s.id) for s in sends]
    assert len(dests) == len(set(dests)), f"more than one send to a peer: {dests}"
    for send in sends:
        if send.to == "client":
            client = state.clients.get(send.id)
            assert client is not None and client.via_worker is None
        elif not all(isinstance(m, w.Shutdown) for m in send.messages):
            # (a worker dropped as silent is told to stop, in case it still listens)
            assert send.id in state.workers, f"send to departed worker {send.id}"


def query_message(request_id: int, what: Any, arg: Any = None) -> w.Query:
    """The typed query a client sends for ``what`` (see ``_wire.query_for``)."""
    return w.query_for(what, arg, request_id)
