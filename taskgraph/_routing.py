"""Which way a client sends a task or an actor call: the decisions alone.

A client may send tasks down a lease (``_leases.py``) and call actors on its
host directly (``_direct.py``), both channels (``_channels.py``). When to ask
for a lease, when to use it, when to let it go, when to offer an actor a
channel and when its calls may switch to it, are
decided here, by two small state machines that own no socket, thread, lock or
clock: the caller passes the time (``now``, monotonic seconds) and does what
the answer says. So they are tested event by event, and fuzzed
(tests/unit/test_routing.py), without processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SYNC_STREAK = 2  # tasks of a shape awaited one by one before a lease is asked for
ASK_AGAIN = 10.0  # seconds: a lease asked for and not come by then is asked for again
GRANT_WAIT = 0.005  # seconds a task waits for the lease just asked for, before going the usual way
QUIET_AFTER_REVOKE = 1.0  # seconds without asking, once the scheduler took a lease back
OFFER_EVERY = 0.1  # seconds between offers of a channel to an actor, while its calls go slow
MAX_OFFERS = 3  # offers an actor's calls ran without taking, before no more are made
MAX_UNANSWERED = 10_000  # calls through the scheduler tracked per actor, at most


@dataclass
class LeaseRoute:
    """Tasks of one shape (their resources): whether a lease serves them, or how
    close they are to asking for one.

    A task comes (``arrive``); without a lease it counts toward a streak of tasks
    each awaited (``got``) before the next came, and at ``SYNC_STREAK`` the
    route wants a lease. The task then waits a moment for the grant, and goes
    down the lease if it is idle (``take``); a task that comes while the leased
    one still runs ends the lease (its caller no longer waits on each task).
    """

    streak: int = 0
    answered: bool = False  # the last task sent the usual way was awaited
    last: bytes = b""  # the first return of that task
    asked: bytes = b""  # the lease asked for and not come yet
    asked_at: float = 0.0
    quiet_until: float = 0.0  # no asking before this
    leased: bool = False  # a lease serves this shape

    def arrive(self, now: float) -> bool:
        """A task of this shape comes. Returns whether to ask for a lease now (the
        caller may still not, e.g. when no worker here could hold the shape)."""
        if self.leased:
            return False
        self.streak = self.streak + 1 if self.answered else 0
        self.answered = False
        return (
            self.streak >= SYNC_STREAK
            and now >= self.quiet_until
            and not (self.asked and now - self.asked_at < ASK_AGAIN)
        )

    def asking(self, lease_id: bytes, now: float) -> bytes:
        """The caller asked for lease ``lease_id``; returns the one it replaces."""
        earlier, self.asked, self.asked_at = self.asked, lease_id, now
        return earlier

    def grant_wait(self, now: float) -> float:
        """How long the task may wait for the lease asked for (0: go on)."""
        if self.leased or not self.asked:
            return 0.0
        return max(0.0, GRANT_WAIT - (now - self.asked_at))

    def granted(self, lease_id: bytes) -> bool:
        """A lease came; False: not the one wanted (the caller refuses it)."""
        if self.asked != lease_id or self.leased:
            return False
        self.asked, self.leased = b"", True
        return True

    def take(self, idle: bool) -> str:
        """Where the task goes: ``"lease"``, ``"end"`` (end the busy lease, then the
        usual way) or ``"usual"``. ``idle``: the lease runs nothing now."""
        if not self.leased:
            return "usual"
        if idle:
            self.answered = False  # (counts toward no streak)
            return "lease"
        self.leased, self.streak, self.answered = False, 0, False
        return "end"

    def sent_usual(self, first_return: bytes) -> None:
        self.last = first_return

    def got(self, object_ids: Any) -> None:
        """A get() returned these: was the last task among them?"""
        if self.last and self.last in object_ids:
            self.answered = True

    def ended(self, revoked: bool, now: float) -> None:
        """The lease serving this shape ends (its executor's word): the next one
        waits for a new streak, and after a revoke for ``QUIET_AFTER_REVOKE``."""
        self.leased, self.streak = False, 0
        if revoked:
            self.quiet_until = now + QUIET_AFTER_REVOKE

    def lost(self) -> None:
        """The lease's connection closed."""
        self.leased = False


@dataclass
class ActorRoute:
    """How one client reaches one actor: through the scheduler, until the actor's
    process has opened a channel to this client and none of the client's calls
    through the scheduler is unanswered as far as it knows; then down the
    channel, for good.

    The channel is asked for by an *offer*: a call through the scheduler that
    carries the client's address (``TaskSpec.channel_to``). The actor's process
    opens the channel before it runs that call, if it may (on the client's
    host, and unable to restart: the scheduler clears the offer otherwise). An
    offered call that ran with no channel come is a failed offer; after
    ``MAX_OFFERS`` of them the route stays with the scheduler.
    """

    actor_id: bytes
    ready: bool = False  # the actor's process opened a channel to us
    direct: bool = False  # calls go down the channel (for good)
    never: bool = False  # the actor cannot be called directly (or not any more)
    offer: int = 0  # the call that carries the offer not settled yet
    offered_at: float = -OFFER_EVERY
    failed_offers: int = 0
    calls: int = 0
    # Calls through the scheduler whose end we have not seen: number -> first
    # return id (b"" when there is none, or nobody will ask for it).
    unanswered: dict[int, bytes] = field(default_factory=dict)

    def go_direct(self) -> bool:
        """Whether the next call goes down the channel."""
        if not self.direct and self.ready and not self.unanswered and not self.never:
            self.direct = True
        return self.direct

    def should_offer(self, number: int | None, now: float) -> bool:
        """Whether call ``number`` (going through the scheduler) carries an offer
        (then none for ``OFFER_EVERY``, and not while it is unsettled)."""
        if (
            number is None
            or self.never
            or self.ready
            or self.offer
            or now - self.offered_at < OFFER_EVERY
        ):
            return False
        self.offer, self.offered_at = number, now
        return True

    def channel_came(self) -> bool:
        """The actor's process opened a channel; False: not wanted (close it)."""
        if self.never or self.ready:
            return False
        self.ready, self.offer = True, 0
        return True

    def call_slow(self, first_return: bytes) -> int | None:
        """A call goes through the scheduler; returns its number (None: not tracked)."""
        if self.never:
            return None
        if len(self.unanswered) >= MAX_UNANSWERED:
            # A caller that never looks at results: stay as is.
            self.never = True
            self.unanswered.clear()
            return None
        self.calls += 1
        self.unanswered[self.calls] = first_return
        return self.calls

    def call_ended(self, number: int, ok: bool) -> list[bytes]:
        """Call ``number`` ended (``ok``: it ran). Calls start in order, so one that
        ran means the earlier ones ran too; one that failed may have failed before
        its turn (a failed argument). Returns the first returns no longer tracked."""
        ended = [n for n in self.unanswered if n <= number] if ok else [number]
        if self.offer and self.offer in ended:
            # It ran, and no channel came before its end (the process opens one
            # first): the offer failed. (A call that failed may not have run.)
            self.offer = 0
            if ok and not self.ready:
                self.failed_offers += 1
                self.never = self.failed_offers >= MAX_OFFERS
        return [r for n in ended if (r := self.unanswered.pop(n, b""))]

    def forgotten(self, number: int) -> None:
        """Nobody will ask for call ``number``'s value: a later call's end tells."""
        if number in self.unanswered:
            self.unanswered[number] = b""
