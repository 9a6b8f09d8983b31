"""Direct actor calls, the caller's side (see ``worker/direct.py`` for the actor's).

A client routes each actor's calls one way at a time, so one caller's calls
still run in the order it made them:

- through the scheduler, until the client learns where the actor's process
  listens (it asks the scheduler, at most every ``_routing.ASK_EVERY`` seconds while
  it makes calls) and none of its calls through the scheduler is still
  unanswered, as far as it knows (it hears of a call's end when it gets the
  call's result);
- then straight to the actor's process, for good: calls with ref arguments
  too (the actor fetches them, in order; this client holds them meanwhile).
  If the actor's process goes away, the calls in flight fail with
  ``ActorDiedError`` and later ones go through the scheduler again.

Only an actor on this client's host, that cannot restart, is called
directly. Each direct call is recorded with the scheduler in this client's
ordinary batches (``Client.record_channel_task``) and reported by the actor's
process like any call, so the scheduler knows its returns, holds its
arguments, and fails it if the actor dies; the answer on this connection only
brings the values sooner.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from taskgraph import _routing as routing
from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection, connect_blocking
from taskgraph.exceptions import TaskgraphError

if TYPE_CHECKING:
    from taskgraph._client import Client

ENABLED = os.environ.get("TASKGRAPH_DIRECT_ACTOR_CALLS", "1") != "0"


@dataclass(eq=False)
class ActorRoute(routing.ActorRoute):
    """How this client reaches one actor (the decisions: ``_routing.py``), with the
    channel once it calls it directly, and the lock held while one call is routed
    and queued."""

    channel: DirectChannel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class DirectChannel:
    """A connection to one actor's process, and the calls in flight on it."""

    def __init__(self, client: Client, actor_id: bytes, address: str, class_name: str) -> None:
        self.client = client
        self.actor_id = actor_id
        self.class_name = class_name
        hello = w.Hello("client", b"", client.client_id, pid=os.getpid())
        self.conn: BlockingConnection
        self.conn, _ = connect_blocking(address, client.token, hello)
        self.broken: str | None = None
        self.pending: dict[bytes, list[bytes]] = {}  # task id -> return ids, until answered
        self._outbox: list[w.Msg] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # batches leave in the order they were taken
        self._held = 0  # pings awaited before the outbox may leave (see hold)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"taskgraph-direct-{actor_id.hex()[:8]}", daemon=True
        )
        self._reader.start()

    def call(self, spec: w.TaskSpec) -> list[bytes]:
        """Queue a call; the client's flush sends it. Returns its return ids."""
        spec = msgspec.structs.replace(spec, channel=self.actor_id)
        with self._lock:
            if self.broken is not None:
                raise ConnectionError(self.broken)
            # Recorded before it can be sent (another thread may flush us): an
            # answer must never find its ids unexpected.
            oids = self.client.record_channel_task(spec)
            self.pending[spec.task_id] = oids
            self._outbox.append(w.DirectCall(spec))
        return oids

    def hold(self) -> None:
        """Keep what is queued from here on until ``release`` (a scheduler round trip)."""
        with self._lock:
            self._held += 1

    def release(self) -> None:
        with self._lock:
            self._held -= 1
        self.flush(wait=False)

    def flush(self, wait: bool = True) -> None:
        """Send what is queued; ``wait=False`` skips it if another thread is sending."""
        failure = None
        if not self._send_lock.acquire(blocking=wait):
            return
        try:
            with self._lock:
                if self._held:
                    return
                batch, self._outbox = self._outbox, []
            if batch:
                try:
                    self.conn.send(batch)
                except OSError as exc:
                    failure = exc
        finally:
            self._send_lock.release()
        if failure is not None:  # outside the send lock: failing runs callbacks
            self._fail_all(f"its process is gone ({failure})")

    def _read_loop(self) -> None:
        while True:
            try:
                msgs = self.conn.recv()
            except (OSError, ConnectionError, TaskgraphError) as exc:
                self._fail_all(f"its process is gone ({exc})")
                self.conn.close()
                self.client.forget_route(self.actor_id)
                return
            for msg in msgs:
                if isinstance(msg, w.DirectResult):
                    with self._lock:
                        oids = self.pending.pop(msg.result.task_id, None)
                    if oids is not None:
                        self.client.channel_answered(oids, msg)

    def _fail_all(self, reason: str) -> None:
        """No answers will come: the scheduler has each call's report or fails it."""
        with self._lock:
            if self.broken is None:
                self.broken = reason
            pending, self.pending = self.pending, {}
            self._outbox = []
        for oids in pending.values():
            self.client.channel_lost(oids)

    def close(self) -> None:
        """Stop; calls still in flight fail with ActorDiedError."""
        self.conn.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
