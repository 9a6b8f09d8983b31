"""The routing decisions (taskgraph/_routing.py), event by event and fuzzed: when
a client asks for a lease, uses it, lets it go; when an actor's calls switch to
its process. No sockets, threads or clock: the tests pass the time."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskgraph._routing import (
    ASK_AGAIN,
    GRANT_WAIT,
    MAX_OFFERS,
    MAX_UNANSWERED,
    OFFER_EVERY,
    QUIET_AFTER_REVOKE,
    SYNC_STREAK,
    ActorRoute,
    LeaseRoute,
)


def awaited_one_by_one(route: LeaseRoute, n: int, now: float = 0.0) -> bool:
    """``n`` tasks, each awaited before the next comes (none asks but the last,
    maybe); whether the last asks."""
    for i in range(n):
        if route.arrive(now):
            assert i == n - 1, f"task {i} of {n} asked"
            return True
        assert route.take(idle=False) == "usual"
        route.sent_usual(bytes([i]))
        route.got([bytes([i])])
    return False


# -- leases -----------------------------------------------------------------------


def test_a_lease_is_asked_for_after_a_streak_of_awaited_tasks() -> None:
    route = LeaseRoute()
    assert not awaited_one_by_one(route, SYNC_STREAK), "not before the streak"
    assert route.arrive(0.0), "the task after the streak asks"
    assert route.asking(b"lease-1", 0.0) == b""
    assert route.grant_wait(0.001) == GRANT_WAIT - 0.001
    assert route.granted(b"lease-1")
    assert route.take(idle=True) == "lease"


def test_tasks_not_awaited_one_by_one_never_ask() -> None:
    route = LeaseRoute()
    for i in range(50):  # submitted in a burst: none was awaited before the next
        assert not route.arrive(float(i))
        assert route.take(idle=False) == "usual"
        route.sent_usual(bytes([i]))
    assert route.streak == 0


def test_a_task_that_comes_while_the_leased_one_runs_ends_the_lease() -> None:
    route = LeaseRoute()
    awaited_one_by_one(route, SYNC_STREAK + 1)
    route.asking(b"lease-1", 0.0)
    assert route.granted(b"lease-1")
    assert route.take(idle=False) == "end"
    assert not route.leased and route.streak == 0
    assert not route.arrive(0.0), "the next lease waits for a new streak"


def test_a_lease_is_not_asked_for_again_while_one_is_on_its_way() -> None:
    route = LeaseRoute()
    assert awaited_one_by_one(route, SYNC_STREAK + 1)
    route.asking(b"lease-1", 0.0)
    route.sent_usual(b"x")  # it waited, no grant: the usual way
    route.got([b"x"])
    assert not route.arrive(1.0), "asked 1 s ago"
    route.sent_usual(b"y")
    route.got([b"y"])
    assert route.arrive(ASK_AGAIN + 0.1), "asked again once ASK_AGAIN passed"
    assert route.asking(b"lease-2", ASK_AGAIN + 0.1) == b"lease-1", "it replaces the first"
    assert not route.granted(b"lease-1"), "a lease no longer wanted is refused"
    assert route.granted(b"lease-2")


def test_a_revoked_lease_keeps_the_route_quiet_for_a_while() -> None:
    route = LeaseRoute()
    awaited_one_by_one(route, SYNC_STREAK + 1)
    route.asking(b"lease-1", 0.0)
    route.granted(b"lease-1")
    route.ended(revoked=True, now=5.0)
    assert not awaited_one_by_one(route, SYNC_STREAK + 3, now=5.5), "a streak, but quiet"
    assert route.arrive(5.0 + QUIET_AFTER_REVOKE), "the next one asks"


class LeaseRouteMachine(RuleBasedStateMachine):
    """Random tasks, gets, grants, ends and losses at random times; the route
    keeps its promises."""

    def __init__(self) -> None:
        super().__init__()
        self.route = LeaseRoute()
        self.now = 0.0
        self.ids = 0
        self.asks: list[float] = []  # when it asked
        self.revoked_at = -1e9
        self.awaited_run = 0  # tasks in a row, each awaited before the next came
        self.last_awaited = False
        self.wanted: set[bytes] = set()

    def new_id(self) -> bytes:
        self.ids += 1
        return self.ids.to_bytes(4, "big")

    @rule(dt=st.floats(0, 3))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(idle=st.booleans(), awaited=st.booleans())
    def a_task_comes(self, idle: bool, awaited: bool) -> None:
        route = self.route
        leased = route.leased
        if not leased:
            self.awaited_run = self.awaited_run + 1 if self.last_awaited else 0
        asks = route.arrive(self.now)
        if not leased:
            assert route.streak == self.awaited_run, "the tasks awaited one by one, in a row"
        if asks:
            assert not leased
            assert route.streak >= SYNC_STREAK
            assert self.now - self.revoked_at >= QUIET_AFTER_REVOKE
            if self.wanted:
                assert self.now - self.asks[-1] >= ASK_AGAIN, "one on its way"
            lease_id = self.new_id()
            route.asking(lease_id, self.now)
            self.wanted = {lease_id}
            self.asks.append(self.now)
        wait = route.grant_wait(self.now)
        assert 0 <= wait <= GRANT_WAIT
        where = route.take(idle)
        if leased:
            assert where == ("lease" if idle else "end")
        else:
            assert where == "usual"
        if where == "end":
            self.awaited_run = 0
        if where != "lease":
            first = self.new_id()
            route.sent_usual(first)
            if awaited:
                route.got([first])
        self.last_awaited = awaited and where != "lease"

    @rule()
    def the_lease_comes(self) -> None:
        for lease_id in list(self.wanted):
            was_leased = self.route.leased
            assert self.route.granted(lease_id) == (not was_leased)
            self.wanted.clear()

    @rule(stale=st.binary(min_size=4, max_size=4))
    def a_lease_nobody_wants_comes(self, stale: bytes) -> None:
        if stale not in self.wanted:
            assert not self.route.granted(stale)

    @precondition(lambda self: self.route.leased)
    @rule(revoked=st.booleans())
    def the_lease_ends(self, revoked: bool) -> None:
        self.route.ended(revoked, self.now)
        self.awaited_run = 0
        if revoked:
            self.revoked_at = self.now
        assert not self.route.leased

    @precondition(lambda self: self.route.leased)
    @rule()
    def the_lease_is_lost(self) -> None:
        self.route.lost()

    @invariant()
    def asks_are_spaced_while_none_comes(self) -> None:
        for before, after in zip(self.asks, self.asks[1:], strict=False):
            assert after >= before  # (one per arrival at most)
        assert not (self.route.leased and self.route.asked), "leased: nothing asked for"


TestLeaseRoute = LeaseRouteMachine.TestCase
TestLeaseRoute.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- actor routes -------------------------------------------------------------------


def test_an_actor_route_offers_now_and_then_and_switches_once_nothing_is_unanswered() -> None:
    route = ActorRoute(b"actor")
    first = route.call_slow(b"r1")
    assert route.should_offer(first, 0.0)
    second = route.call_slow(b"r2")
    assert not route.should_offer(second, 1.0), "one offer at a time"
    assert first is not None and second is not None
    assert route.channel_came()
    assert not route.go_direct(), "two calls through the scheduler unanswered"
    assert route.call_ended(second, ok=True) == [b"r1", b"r2"], "the first ran before it"
    assert route.go_direct()
    assert route.go_direct(), "for good"
    assert not route.should_offer(route.call_slow(b"r3"), 10.0), "a channel came already"


def test_offers_whose_calls_ran_without_a_channel_fail_and_a_few_end_them() -> None:
    route = ActorRoute(b"actor")
    now = 0.0
    for _ in range(MAX_OFFERS):
        number = route.call_slow(b"r")
        assert route.should_offer(number, now)
        assert number is not None
        route.call_ended(number, ok=True)
        now += OFFER_EVERY
    assert route.never
    assert route.call_slow(b"r") is None
    assert not route.channel_came(), "one that comes now is not wanted"
    assert not route.go_direct()


def test_a_call_that_failed_settles_its_offer_without_counting_it() -> None:
    route = ActorRoute(b"actor")
    number = route.call_slow(b"r")
    assert route.should_offer(number, 0.0) and number is not None
    route.call_ended(number, ok=False)  # (a failed argument: it may never have run)
    assert route.failed_offers == 0 and not route.never
    later = route.call_slow(b"r2")
    assert not route.should_offer(later, OFFER_EVERY / 2), "not again at once"
    assert route.should_offer(later, OFFER_EVERY)


def test_a_channel_heard_of_after_its_call_ended_is_still_taken() -> None:
    """The channel and the call's result come on different threads: the result
    may be heard of first."""
    route = ActorRoute(b"actor")
    number = route.call_slow(b"r")
    assert route.should_offer(number, 0.0) and number is not None
    route.call_ended(number, ok=True)
    assert route.failed_offers == 1
    assert route.channel_came()
    assert route.go_direct()


def test_a_failed_call_ends_only_itself() -> None:
    route = ActorRoute(b"actor")
    first, second = route.call_slow(b"r1"), route.call_slow(b"r2")
    assert first is not None and second is not None
    assert route.call_ended(second, ok=False) == [b"r2"]
    assert list(route.unanswered) == [first]
    route.forgotten(first)  # nobody will ask for it
    assert route.call_ended(first, ok=True) == []


def test_a_caller_that_never_reads_results_stops_being_tracked() -> None:
    route = ActorRoute(b"actor")
    for i in range(MAX_UNANSWERED):
        assert route.call_slow(i.to_bytes(4, "big")) is not None
    assert route.call_slow(b"one more") is None
    assert route.never and not route.unanswered


class ActorRouteMachine(RuleBasedStateMachine):
    """Calls made, offers taken or not, channels coming, calls ending in order,
    with the time moving on. The model: what a client may rely on."""

    def __init__(self) -> None:
        super().__init__()
        self.route = ActorRoute(b"actor")
        self.now = 0.0
        self.slow: list[int] = []  # calls through the scheduler, not ended
        self.offers: list[float] = []  # when each offer was made
        self.offered: int | None = None  # the call that carries an open offer
        self.accepting = True  # the actor's process would open a channel
        self.channel_pending = False  # it opened one, not heard of yet
        self.failed = 0
        self.went_direct = False

    @rule(dt=st.floats(min_value=0.0, max_value=0.3))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def actor_refuses_channels(self) -> None:
        self.accepting = False  # (another host, or it may restart)

    @rule()
    def call(self) -> None:
        route = self.route
        if route.go_direct():
            self.went_direct = True
            return
        assert not self.went_direct, "once direct, for good"
        number = route.call_slow(b"r%d" % len(self.offers))
        if number is None:
            assert route.never
            return
        self.slow.append(number)
        if route.should_offer(number, self.now):
            assert self.offered is None, "one offer at a time"
            assert not self.offers or self.now - self.offers[-1] >= OFFER_EVERY
            self.offers.append(self.now)
            self.offered = number

    @precondition(lambda self: self.slow)
    @rule(ok=st.booleans())
    def oldest_call_ends(self, ok: bool) -> None:
        number = self.slow.pop(0)
        if number == self.offered and self.accepting:
            self.channel_pending = True  # opened before the call ran
        if number == self.offered:
            self.offered = None
            if ok and not self.route.ready and not self.channel_pending:
                self.failed += 1
        self.route.call_ended(number, ok)

    @precondition(lambda self: self.channel_pending)
    @rule()
    def channel_heard_of(self) -> None:
        self.channel_pending = False
        wanted = not self.route.never and not self.route.ready
        assert self.route.channel_came() == wanted
        if wanted:
            assert self.route.ready and not self.route.offer

    @invariant()
    def direct_only_with_a_channel_and_nothing_unanswered_before(self) -> None:
        route = self.route
        if route.direct:
            assert route.ready, "direct only down a channel that came"
        if not route.direct and route.ready and not route.never:
            assert route.go_direct() == (not route.unanswered)
            if route.direct:
                self.went_direct = True

    @invariant()
    def failed_offers_end_the_asking(self) -> None:
        route = self.route
        assert route.failed_offers <= MAX_OFFERS
        if route.failed_offers >= MAX_OFFERS:
            assert route.never

    @invariant()
    def memory_is_bounded(self) -> None:
        assert len(self.route.unanswered) <= MAX_UNANSWERED


TestActorRoute = ActorRouteMachine.TestCase
TestActorRoute.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
