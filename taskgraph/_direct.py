"""Direct actor calls, the caller's side (see ``worker/channel.py`` for the actor's).

A client routes each actor's calls one way at a time, so one caller's calls
still run in the order it made them:

- through the scheduler, until the actor's process has opened a channel to
  this client (``_channels.py``; asked for by an offer on one of the calls,
  at most every ``_routing.OFFER_EVERY`` seconds while the client makes
  calls) and none of its calls through the scheduler is still unanswered, as
  far as it knows (it hears of a call's end when it gets the call's result);
- then down the channel, for good: calls with ref arguments too (the actor
  fetches them, in order; this client holds them meanwhile). If the actor's
  process goes away, the calls in flight fail with ``ActorDiedError`` and
  later ones go through the scheduler again.

Only an actor on this client's host, that cannot restart, opens a channel.
Each direct call is recorded with the scheduler in this client's ordinary
batches (``Client.record_channel_task``) and reported by the actor's process
like any call, so the scheduler knows its returns, holds its arguments, and
fails it if the actor dies; the answer on the channel only brings the values
sooner.

``ActorCalls`` is the client's table of routes, one per actor it calls; its
lock is the client's, since the client's reader ends calls that went through
the scheduler (``slow_call_ended``) as their results come.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from taskgraph import _routing as routing
from taskgraph import _wire as w
from taskgraph._channels import Channel
from taskgraph._ids import return_ids
from taskgraph._object_ref import ObjectRef
from taskgraph.settings import settings

if TYPE_CHECKING:
    from taskgraph._client import Client

MAX_ROUTES = 1000  # actors whose way a client remembers, beyond those it calls directly


@dataclass(eq=False)
class ActorRoute(routing.ActorRoute):
    """How this client reaches one actor (the decisions: ``_routing.py``), with the
    channel its process opened, and the lock held while one call is routed and
    queued. The channel's owner: when it closes, the route is forgotten."""

    owner: ActorCalls | None = None
    channel: Channel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def channel_ending(self, channel: Channel, revoked: bool) -> None:
        """(An actor's channel does not end while its process lives.)"""

    def channel_lost(self, channel: Channel) -> None:
        if self.owner is not None:
            self.owner.forget_route(self.actor_id, channel)


class ActorCalls:
    """One client's actor calls: a route per actor, the open channels, and the
    calls through the scheduler not yet answered (first return id -> (its route,
    its number there)). Guarded by the client's lock."""

    def __init__(self, client: Client, lock: threading.RLock) -> None:
        self.client = client
        self._lock = lock
        self.routes: dict[bytes, ActorRoute] = {}
        self.channels: dict[bytes, Channel] = {}  # actors' open ones, by actor
        self.slow_calls: dict[bytes, tuple[ActorRoute, int]] = {}

    def call(self, spec: w.TaskSpec) -> list[ObjectRef]:
        """Send an actor method call the way its route says; return its refs."""
        self.client.usable()
        actor_id = spec.actor_id
        with self._lock:
            route = self.routes.get(actor_id)
            if route is None:
                if len(self.routes) >= MAX_ROUTES:
                    # Forget the ways to actors not called directly (many may be
                    # gone); one called again just offers again.
                    self.routes = {a: r for a, r in self.routes.items() if r.channel}
                route = self.routes[actor_id] = ActorRoute(actor_id, owner=self)
                route.never = not settings().direct_actor_calls
        # One call at a time per actor from this client: the way it goes, and its
        # place in line, are decided together (threads may call at once).
        with route.lock:
            return self._call(route, spec)

    def _call(self, route: ActorRoute, spec: w.TaskSpec) -> list[ObjectRef]:
        client = self.client
        refs = [ObjectRef(oid, client) for oid in return_ids(spec.task_id, spec.num_returns)]
        channel = route.channel
        if channel is not None and channel.broken is None and route.go_direct():
            # (A generator's items reach the scheduler from the actor's side: it
            # must have the call's record first, or it would drop them.)
            barrier = bool(spec.deps) or len(spec.nested) > 1 or spec.generator
            if barrier:
                # The actor will ask the scheduler for these: it must have heard of
                # every object we made first. The call (and those after it) waits
                # in the channel until the scheduler answers a ping sent now.
                channel.hold()
            try:
                channel.send(spec)
            except ConnectionError:
                if barrier:
                    channel.release()
            else:
                if barrier:
                    client.ask(w.Query(0, "ping"), lambda _: channel.release())
                client.flush_urgent()  # what the call may name (a put) goes first
                channel.flush()  # now, from this thread: no hand-off to the flusher
                return refs
        if channel is not None and (channel.broken is not None or route.direct):
            # It broke: the scheduler says why from now on.
            route.never, route.channel = True, None
            with self._lock:
                self.channels.pop(route.actor_id, None)
            channel.close()
        address = "" if route.never else (client.deliveries or client.listener()).address
        with self._lock:
            number = route.call_slow(refs[0].id if refs else b"")
            if number is not None and refs:
                self.slow_calls[refs[0].id] = (route, number)
            if address and route.should_offer(number, time.monotonic()):
                # Its process opens a channel to us before it runs this call.
                spec = msgspec.structs.replace(spec, channel_to=address)
            client.submit_later(spec)
        return refs

    def channel_came(self, actor_id: bytes, sock: socket.socket) -> Channel | None:
        """An actor's process opened the channel we offered; None: not wanted now."""
        with self._lock:
            route = self.routes.get(actor_id)
        if route is None:
            return None
        with route.lock:
            if self.client.closed or not route.channel_came():
                return None
            channel = route.channel = Channel(self.client, actor_id, sock, route)
        with self._lock:
            self.channels[actor_id] = channel
        return channel

    def forget_route(self, actor_id: bytes, channel: Channel | None = None) -> None:
        """The actor's process is gone, or going (kill): later calls go through the
        scheduler, which knows; direct calls still in flight fail. With
        ``channel``: only if the route still has that one."""
        with self._lock:
            route = self.routes.get(actor_id)
            if route is None or (channel is not None and route.channel is not channel):
                return
            del self.routes[actor_id]
            self.channels.pop(actor_id, None)
        route.never = True
        channel, route.channel = route.channel, None
        if channel is not None:
            channel.close()

    def slow_call_ended(self, oid: bytes, ok: bool) -> None:
        """A call through the scheduler ended (lock held): maybe calls may go direct now."""
        route, number = self.slow_calls.pop(oid)
        for earlier in route.call_ended(number, ok):
            self.slow_calls.pop(earlier, None)

    def slow_call_forgotten(self, oid: bytes) -> None:
        """Nobody will ask for a slow call's result (lock held), so we would never
        see the call end; a later call's end still tells us (slow_call_ended)."""
        route, number = self.slow_calls.pop(oid)
        route.forgotten(number)

    def direct(self) -> int:
        """How many actors this client calls directly now."""
        return sum(1 for r in list(self.routes.values()) if r.direct and r.channel is not None)
