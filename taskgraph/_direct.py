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
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskgraph import _routing as routing
from taskgraph._channels import Channel

if TYPE_CHECKING:
    from taskgraph._client import Client


@dataclass(eq=False)
class ActorRoute(routing.ActorRoute):
    """How this client reaches one actor (the decisions: ``_routing.py``), with the
    channel its process opened, and the lock held while one call is routed and
    queued. The channel's owner: when it closes, the route is forgotten."""

    client: Client | None = None
    channel: Channel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def channel_ending(self, channel: Channel, revoked: bool) -> None:
        """(An actor's channel does not end while its process lives.)"""

    def channel_lost(self, channel: Channel) -> None:
        if self.client is not None:
            self.client.forget_route(self.actor_id, channel)
