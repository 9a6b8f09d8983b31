"""The routing decisions (taskgraph/_routing.py), event by event and fuzzed: when
a client asks for a lease, uses it, lets it go; when an actor's calls switch to
its process. No sockets, threads or clock: the tests pass the time."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskgraph._routing import (
    ASK_AGAIN,
    ASK_EVERY,
    GRANT_WAIT,
    MAX_UNANSWERED,
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


def test_an_actor_route_asks_now_and_then_and_switches_once_nothing_is_unanswered() -> None:
    route = ActorRoute(b"actor")
    assert route.should_ask(0.0)
    assert not route.should_ask(1.0), "one ask at a time"
    route.learned(None, "here")  # no answer
    assert not route.should_ask(ASK_EVERY / 2), "not again at once"
    assert route.should_ask(ASK_EVERY)
    first = route.call_slow(b"r1")
    second = route.call_slow(b"r2")
    route.learned({"address": "unix://actor", "host": "here"}, "here")
    assert not route.may_switch(), "two calls through the scheduler unanswered"
    assert first is not None and second is not None
    assert route.call_ended(second, ok=True) == [b"r1", b"r2"], "the first ran before it"
    assert route.may_switch()
    assert not route.should_ask(10.0), "the address is known"


def test_a_failed_call_ends_only_itself() -> None:
    route = ActorRoute(b"actor")
    first, second = route.call_slow(b"r1"), route.call_slow(b"r2")
    assert first is not None and second is not None
    assert route.call_ended(second, ok=False) == [b"r2"]
    assert list(route.unanswered) == [first]
    route.forgotten(first)  # nobody will ask for it
    assert route.call_ended(first, ok=True) == []


def test_an_actor_on_another_host_is_never_called_directly() -> None:
    route = ActorRoute(b"actor")
    route.should_ask(0.0)
    route.learned({"address": "tcp://far", "host": "far"}, "here")
    assert route.never and not route.may_switch()
    assert route.call_slow(b"r") is None
    assert not route.should_ask(100.0)


def test_a_caller_that_never_reads_results_stops_being_tracked() -> None:
    route = ActorRoute(b"actor")
    for i in range(MAX_UNANSWERED):
        assert route.call_slow(i.to_bytes(4, "big")) is not None
    assert route.call_slow(b"one more") is None
    assert route.never and not route.unanswered
