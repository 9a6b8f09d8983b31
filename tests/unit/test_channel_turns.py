"""Who reads a channel (``taskgraph/_channels.py``): its own thread, or a thread
waiting in get() for its answers (``Channel.wait_for``), driven here over a
socket pair with a stand-in client and executor, no cluster.

The executor's side is the other end of the pair: a test writes answers
there when it wants them to arrive.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskgraph import _wire as w
from taskgraph._channels import Channel
from taskgraph._waiting import Waiter
from taskgraph.testing import wait_for


class Side:
    """The client a channel tells what came: wakes the waiter of each value."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiters: dict[bytes, Waiter] = {}
        self.values: dict[bytes, bytes | None] = {}
        self.lost: list[bytes] = []
        self.by_waiter = 0

    def channel_answered(self, oids: list[bytes], msg: w.DirectResult, by_waiter: bool) -> None:
        with self.lock:
            self.by_waiter += by_waiter
            for r in msg.result.returns:
                self.values[r.object_id] = r.data
                waiter = self.waiters.pop(r.object_id, None)
                if waiter is not None:
                    waiter.wake()

    def channel_lost(self, oids: list[bytes]) -> None:
        with self.lock:
            self.lost.extend(oids)

    def channel_gone(self, channel: Channel) -> None:
        pass


class Owner:
    def channel_ending(self, channel: Channel, revoked: bool) -> None:
        pass

    def channel_lost(self, channel: Channel) -> None:
        pass


class Pair:
    """A started channel, and the executor's end of its socket."""

    def __init__(self) -> None:
        ours, self.executor = socket.socketpair()
        self.side = Side()
        self.channel = Channel(self.side, b"c", ours, Owner())  # type: ignore[arg-type]
        self.channel.start(bytearray())
        self.n = 0

    def call(self) -> tuple[bytes, Waiter]:
        """A task in flight, and a waiter for its one value."""
        self.n += 1
        task, oid = b"t%d" % self.n, b"o%d" % self.n
        waiter = Waiter(1)
        with self.channel._lock:
            self.channel.in_flight[task] = [oid]
        with self.side.lock:
            self.side.waiters[oid] = waiter
        return task, waiter

    def answer(self, task: bytes, data: bytes = b"v") -> None:
        oid = b"o" + task[1:]
        result = w.TaskResult(task, returns=[w.ReturnValue(oid, data)])
        self.executor.sendall(w.encode([w.DirectResult(result)]))

    def close(self) -> None:
        self.executor.close()
        wait_for(lambda: self.channel._lost, timeout=10, what="the channel to end")


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_an_answer_is_read_by_the_thread_that_waits(pair: Pair):
    task, waiter = pair.call()
    threading.Timer(0.05, pair.answer, args=(task,)).start()
    assert pair.channel.wait_for(waiter, 10)
    assert pair.side.by_waiter == 1


def test_an_answer_already_here_is_taken_by_a_zero_timeout(pair: Pair):
    """get(timeout=0) in a loop: each call takes the socket from the channel's
    thread, which then leaves it alone for STICKY, so the calls must read what
    came themselves (else the answer waits until the loop pauses 5 ms)."""
    task, waiter = pair.call()
    assert not pair.channel.wait_for(waiter, 0.05)  # (the channel's thread parks from here)
    pair.answer(task)
    assert pair.channel.wait_for(waiter, 0)


def test_a_loop_of_zero_timeouts_sees_the_answer_at_once(pair: Pair):
    task, waiter = pair.call()
    pair.channel.wait_for(waiter, 0)
    pair.answer(task)
    started = time.monotonic()
    while not pair.channel.wait_for(waiter, 0) and time.monotonic() < started + 5:
        pass
    assert waiter.woken and time.monotonic() - started < 0.05


def test_an_answer_already_here_is_taken_by_a_tiny_timeout(pair: Pair):
    task, waiter = pair.call()
    pair.channel.wait_for(waiter, 0.05)
    pair.answer(task)
    assert pair.channel.wait_for(waiter, 1e-6)


def test_zero_timeouts_leave_no_file_descriptors(pair: Pair):
    task, waiter = pair.call()
    before = open_fds()
    for _ in range(2000):
        pair.channel.wait_for(waiter, 0)
    assert open_fds() == before
    pair.answer(task)
    assert pair.channel.wait_for(waiter, 10)


@pytest.mark.parametrize("at", range(8))
def test_a_waiter_woken_as_its_reader_lets_go_does_not_fail(at: int):
    """``wake`` runs on whatever thread delivers the value (under the client's
    lock) while the thread that read for the waiter may clear ``on_wake`` at any
    moment: modelled here by clearing it before the ``at``-th line of ``wake``."""
    waiter = Waiter(1)
    waiter.on_wake = lambda: None
    lines = [0]

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return clear_at if frame.f_code is Waiter.wake.__code__ else None

    def clear_at(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            lines[0] += 1
            if lines[0] == at:
                waiter.on_wake = None  # (the reader left: wait_for's finally)
        return clear_at

    sys.settrace(tracer)
    try:
        waiter.wake()
    finally:
        sys.settrace(None)
    assert waiter.woken and waiter.wait(0)


def in_method(channel: Channel, name: str) -> bool:
    """Some thread is inside ``channel``'s method ``name`` now."""
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None:
            if f.f_code.co_name == name and f.f_locals.get("self") is channel:
                return True
            f = f.f_back
    return False


def test_a_thread_that_comes_to_read_as_the_channel_ends_is_told_so():
    """The channel's thread heard the end and is settling it (``lost``) when a
    thread comes to wait: it waits for the socket, gets it once the channel is
    closed, and must then wait for the scheduler's answer, not raise."""
    p = Pair()
    task, waiter = p.call()
    errors: list[BaseException] = []

    def get() -> None:
        try:
            p.channel.wait_for(waiter, 5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with p.channel._lock:  # (lost() waits for it, holding the socket)
        p.executor.close()
        wait_for(lambda: in_method(p.channel, "lost"), timeout=10, what="the end heard")
        getter = threading.Thread(target=get)
        getter.start()
        wait_for(lambda: p.channel._getter, timeout=10, what="the getter to come")
    wait_for(lambda: p.side.lost == [b"o1"], timeout=10, what="the task settled elsewhere")
    p.side.channel_answered(
        [b"o1"], w.DirectResult(w.TaskResult(task, [w.ReturnValue(b"o1")])), False
    )
    getter.join(timeout=10)
    assert not getter.is_alive() and not errors and waiter.woken


def test_a_get_with_a_timeout_returns_in_time_while_the_channels_thread_is_busy(pair: Pair):
    """The channel's thread holds the socket while it hands an answer over (a
    future's callbacks run there): a get() with a timeout waits that long at most."""
    busy, done = threading.Event(), threading.Event()
    answered = pair.side.channel_answered

    def slow_callbacks(oids: list[bytes], msg: w.DirectResult, by_waiter: bool) -> None:
        busy.set()
        done.wait(30)
        answered(oids, msg, by_waiter)

    pair.side.channel_answered = slow_callbacks  # type: ignore[method-assign]
    first, _ = pair.call()
    pair.answer(first)  # (nobody waits: the channel's thread reads it)
    assert busy.wait(10)
    _, waiter = pair.call()
    started = time.monotonic()
    try:
        assert not pair.channel.wait_for(waiter, 0.2)
        assert time.monotonic() - started < 2
    finally:
        done.set()


def test_ctrl_c_while_an_answer_is_handed_over_asks_the_scheduler(pair: Pair):
    """Ctrl-C on the thread in get() as the answer it read is handed over (futures'
    callbacks run there too): the channel goes, and the answer half handed over
    is asked of the scheduler with the rest, not lost."""
    answered = pair.side.channel_answered

    def interrupted(oids: list[bytes], msg: w.DirectResult, by_waiter: bool) -> None:
        pair.side.channel_answered = answered  # type: ignore[method-assign]
        raise KeyboardInterrupt

    pair.side.channel_answered = interrupted  # type: ignore[method-assign]
    task, waiter = pair.call()
    pair.call()  # (a second in flight, asked of the scheduler too)
    # (once this thread reads: Ctrl-C comes to the main thread only)
    threading.Timer(0.2, pair.answer, args=(task,)).start()
    with pytest.raises(KeyboardInterrupt):
        pair.channel.wait_for(waiter, 10)
    wait_for(lambda: sorted(pair.side.lost) == [b"o1", b"o2"], timeout=10, what="both asked")


def test_every_callback_runs_when_one_is_interrupted():
    """A thread in get() runs futures' callbacks for what it read: Ctrl-C in one
    must not lose the others (their futures would never complete)."""
    from taskgraph._waiting import Results

    ran: list[int] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    results = Results(None, threading.RLock(), lambda *a, **k: None)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        results.fire([lambda: ran.append(1), interrupted, lambda: ran.append(3)])
    assert ran == [1, 3]


# Ctrl-C comes to the main thread where CPython (3.11) checks for it: as a
# function starts, after each call returns, at a loop's jump back.
CHECKED_AFTER = {"CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD"}


def interrupt_at(k: int, codes: set[Any]) -> tuple[Any, Any]:
    """A tracer raising KeyboardInterrupt at the ``k``-th such place in ``codes``."""
    import dis

    ops = {c: {i.offset: i.opname for i in dis.get_instructions(c)} for c in codes}
    seen = [0]
    fired: list[str] = []
    last: dict[int, int] = {}

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode" and not fired:
            prev = last.get(id(frame))
            last[id(frame)] = frame.f_lasti
            if prev is None or ops[frame.f_code].get(prev) in CHECKED_AFTER:
                seen[0] += 1
                if seen[0] == k:
                    fired.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
                    raise KeyboardInterrupt
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code in codes:
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return local
        return None

    return tracer, fired


def settles(condition: Any) -> bool:
    try:
        wait_for(condition, timeout=5, what="it to settle")
    except Exception:
        return False
    return True


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="where 3.11 checks for signals")
def test_ctrl_c_anywhere_in_a_get_leaves_the_channel_working():
    """Ctrl-C at each place a thread in get() can take it, in turn: after it the
    first answer is here or asked of the scheduler, a later get() is answered
    (or the channel was let go), and the channel still hears its end."""
    codes = {
        f.__code__
        for f in (
            Channel.wait_for,
            Channel._take_socket,
            Channel._read_until,
            Channel.received,
            Channel._receive,
            Channel._take_frames,
            Channel._poke,
            threading.Condition.notify,
        )
    }
    stuck = []
    for k in range(1, 200):
        p = Pair()
        task, waiter = p.call()
        p.answer(task)
        tracer, fired = interrupt_at(k, codes)
        sys.settrace(tracer)
        try:
            p.channel.wait_for(waiter, 2)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        if not fired:
            p.close()
            break
        later, w2 = p.call()
        if p.channel.broken is None:
            p.answer(later)
            answered = p.channel.wait_for(w2, 5)
        else:
            answered = True  # (let go: the scheduler answers)
        first = settles(lambda w=waiter, p=p: w.woken or b"o1" in p.side.lost)
        p.executor.close()
        ended = settles(lambda p=p: p.channel._lost)
        if not (first and answered and ended):
            stuck.append((fired[0], first, answered, ended))
    assert k > 10 and stuck == []
