"""The report pipe, CallerLeft, StoreClientGone and ReadReports, under attack.

docs/architecture.md, "One road for every task": a small plain channel report
goes into its executor's report pipe before the caller is answered (so a crash
in the next task cannot undo it), the daemon reads the pipe lazily and puts each
report back in its place among the executor's stream frames; a direct caller
that leaves makes the actor's process say which of its calls it got
(CallerLeft), and the scheduler cancels the rest; a killed driver's unannounced
puts are freed (StoreClientGone); something waiting on a channel task's return
makes the scheduler ask for its report at once (ReadReports).

These tests attack those with real processes: values right at the pipe's
atomic-write limit from many threads, a pipe filled faster than it is read,
SIGKILL right after answers, actors that exit while their reports sit in the
pipe, drivers killed mid-burst with held calls and cancels in flight, puts of a
killed driver that an actor still holds. They check what a user can see: values
or exception types (a value its caller got must be the value every reader gets),
the scheduler's public task list, the object store and the processes.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

import taskgraph as tg
from conftest import (
    another_driver,
    finish,
    leased,
    on_lease,
    stored,
    switch_to_direct,
    wait_for,
    wait_settled,
)
from taskgraph.exceptions import ActorDiedError, TaskError, WorkerCrashedError
from taskgraph.util.state import cluster_statistics, list_tasks

BIG = 200_000  # int64 elements: 1.6 MB, in the shared-memory store
# A plain bytes return of this many bytes makes a report frame of about PIPE_BUF
# (4096) bytes: the sizes below straddle the limit, whatever the exact overhead.
AROUND_PIPE_BUF = range(3880, 4030)
assert select.PIPE_BUF == 4096


@pytest.fixture
def lasting(monkeypatch):
    """Leases last (read by executors as they start: set before the cluster)."""
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")


# -- tasks and actors ----------------------------------------------------------------


@tg.remote
def pid():
    return os.getpid()


@tg.remote
def double(x):
    return 2 * x


@tg.remote
def shape(blob):
    """What a reader that asks the scheduler sees of a blob: (length, first byte)."""
    return len(blob), blob[0]


@tg.remote
def shapes(box):
    return [(len(b), b[0]) for b in tg.get(box[0], timeout=30)]


@tg.remote
def blob_task(n, tag, path):
    with open(path, "a") as f:
        f.write(f"{tag}\n")
    return bytes([tag % 251]) * n


@tg.remote
def exit_now(code):
    os._exit(code)


@tg.remote
def sum_of(box):
    return sum(tg.get(box[0], timeout=30))


@tg.remote(num_cpus=0)
class Sequential:
    """One call at a time; records the task id of each call that ran."""

    def __init__(self):
        self.ran = []
        self.kept = []

    def history(self):
        return None

    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x

    def blob(self, n, tag):
        return bytes([tag % 251]) * n

    def shape(self, blob):
        return len(blob), blob[0]

    def add(self, i):
        self.ran.append(tg.get_runtime_context().get_task_id())
        return i

    def add_total(self, x):
        self.ran.append(tg.get_runtime_context().get_task_id())
        return int(np.asarray(x).sum())

    def ran_ids(self):
        return list(self.ran)

    def keep(self, box):
        self.kept.extend(box)
        return len(self.kept)

    def kept_totals(self):
        return [int(np.asarray(tg.get(r, timeout=30)).sum()) for r in self.kept]

    def drop_kept(self):
        self.kept.clear()
        return None

    def die(self):
        os._exit(1)


@tg.remote(num_cpus=0, max_concurrency=8)
class Threaded:
    """Up to 8 calls at once, each on its own thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0

    def history(self):
        return None

    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x

    def blob(self, n, tag):
        with self.lock:
            self.count += 1
        return bytes([tag % 251]) * n

    def slow(self, x, delay):
        time.sleep(delay)
        return x

    def leave(self):
        tg.actor.exit_actor()

    @tg.method(num_returns=2)
    def big_then_unpicklable(self, n):
        return np.full(n, 1), threading.Lock()

    def big(self, n, fill):
        return np.full(n, fill)


@tg.remote(num_cpus=0, max_concurrency=8)
class Async:
    """Calls as coroutines on one event-loop thread, up to 8 at once."""

    def history(self):
        return None

    def pid(self):
        return os.getpid()

    async def blob(self, n, tag):
        await asyncio.sleep(0.001 * (tag % 3))
        return bytes([tag % 251]) * n


# -- helpers -------------------------------------------------------------------------


def store_empties(before: frozenset[str] | set[str] = frozenset(), timeout: float = 10) -> None:
    gc.collect()
    wait_for(lambda: stored() <= before, timeout=timeout, what="the store to be emptied")


def namespace() -> str:
    runtime = tg._api._runtime
    assert runtime is not None
    return runtime.namespace


def pending_tasks() -> list[dict]:
    """Tasks on record that wait for their arguments or a place to run."""
    return [t for t in list_tasks(limit=0) if t["state"].startswith("PENDING")]


def tasks_named(name: str) -> dict[str, str]:
    """task id (hex) -> state, of the tasks on record with this name."""
    return {t["task_id"]: t["state"] for t in list_tasks(limit=0) if t["name"] == name}


def alive(pid_: int) -> bool:
    try:
        os.kill(pid_, 0)
    except ProcessLookupError:
        return False
    return True


SWITCH = """
import os, signal, sys, time
import numpy as np
import taskgraph as tg
a = tg.get_actor({name!r}, namespace={namespace!r})
deadline = time.monotonic() + 15
while True:
    before = tg.statistics().direct_actor_calls
    tg.get(a.history.remote())
    if tg.statistics().direct_actor_calls == before + 1:
        break
    if time.monotonic() > deadline:
        sys.exit("never went direct")
"""


# -- the pipe's atomic limit, from many threads --------------------------------------------


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_values_around_pipe_buf_from_many_threads_survive_a_sigkill(fresh_cluster, kind):
    """Four driver threads call an actor that runs 8 calls at once (on threads, or
    as coroutines) directly, each call returning a plain value whose report frame
    is a little under, at, or a little over PIPE_BUF: under it goes through the
    pipe (several writers at once: only writes up to PIPE_BUF are whole), over it
    on the stream. The actor is SIGKILLed right after the last answer, with
    reports still gathering in the pipe. Every value a caller got must be what a
    task that reads the ref through the scheduler gets (the report reached it)."""
    actor = (Threaded if kind == "threaded" else Async).remote()
    switch_to_direct(actor)
    victim = tg.get(actor.pid.remote(), timeout=30)
    sizes = list(AROUND_PIPE_BUF)
    got: dict[int, tuple[object, bytes]] = {}
    errors: list[BaseException] = []

    def calling(k: int) -> None:
        try:
            for j, n in enumerate(sizes[k::4]):
                tag = 4 * j + k
                ref = actor.blob.remote(n, tag)
                got[n] = (ref, tg.get(ref, timeout=30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=calling, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    os.kill(victim, signal.SIGKILL)
    assert not errors, errors[:3]
    assert sorted(got) == sizes
    assert tg.statistics().direct_actor_calls >= len(sizes)
    for n, (_, value) in got.items():
        assert len(value) == n
    # Through the scheduler: every report arrived, none was torn or lost.
    readers = {n: shape.remote(ref) for n, (ref, _) in got.items()}
    for n, reader in readers.items():
        assert tg.get(reader, timeout=30) == (n, got[n][1][0])
    got.clear()
    del readers
    wait_settled()
    store_empties()


def test_a_threaded_actor_killed_while_its_threads_block_on_a_full_pipe(fresh_cluster):
    """400 calls of ~4 KB plain values fired at a threaded actor at once: its 8
    threads fill the report pipe (16 such reports) far faster than the daemon
    reads it, and block in their writes. The actor is SIGKILLed once 100 answers
    came. For every call, the caller's outcome and a reader task's agree: both
    the same value, or both ActorDiedError."""
    actor = Threaded.remote()
    switch_to_direct(actor)
    victim = tg.get(actor.pid.remote(), timeout=30)
    n = AROUND_PIPE_BUF[len(AROUND_PIPE_BUF) // 2]
    refs = [actor.blob.remote(n - (i % 60), i) for i in range(400)]
    ready, _ = tg.wait(refs, num_returns=100, timeout=30)
    assert len(ready) == 100
    os.kill(victim, signal.SIGKILL)
    outcomes = Counter()
    readers = [(i, ref, shape.remote(ref)) for i, ref in enumerate(refs)]
    for i, ref, reader in readers:
        try:
            value = tg.get(ref, timeout=30)
        except ActorDiedError:
            with pytest.raises(ActorDiedError):
                tg.get(reader, timeout=30)
            outcomes["died"] += 1
        else:
            assert value == bytes([i % 251]) * (n - (i % 60))
            assert tg.get(reader, timeout=30) == (len(value), i % 251)
            outcomes["answered"] += 1
    assert outcomes["answered"] >= 100, outcomes
    del refs, readers, ready
    wait_settled()
    store_empties()


def test_tg_kill_right_after_a_burst_of_answers(fresh_cluster):
    """tg.kill() closes this driver's connection to the actor (the actor may tell
    CallerLeft while this driver lives on) and SIGKILLs it, right after a burst of
    answers whose reports are still in the pipe, with slow calls unanswered. The
    answered calls keep their values for readers through the scheduler; the rest
    fail with ActorDiedError; a later driver exit cancels nothing that ran."""
    for _ in range(2):
        actor = Sequential.remote()
        switch_to_direct(actor)
        refs = [actor.echo.remote(i) for i in range(300)]
        assert tg.get(refs, timeout=30) == list(range(300))
        unanswered = [actor.add.remote(i) for i in range(20)]
        tg.kill(actor)
        assert tg.get(sum_of.remote([refs]), timeout=30) == sum(range(300))
        for ref in unanswered:
            try:
                assert tg.get(ref, timeout=30) in range(20)
            except ActorDiedError:
                pass
    del refs, unanswered, ref, actor
    wait_settled()


def test_a_report_pipe_filled_faster_than_it_is_read(fresh_cluster):
    """3000 small direct calls sent without waiting: their reports fill the pipe
    (64 KiB) many times over while the daemon reads it lazily; the actor blocks in
    its writes and must not stall for good. All answers come, the actor is
    SIGKILLed at once, and a task summing the returns through the scheduler gets
    every one of them."""
    actor = Sequential.remote()
    switch_to_direct(actor)
    victim = tg.get(actor.pid.remote(), timeout=30)
    before = tg.statistics().direct_actor_calls
    refs = [actor.echo.remote(i) for i in range(3000)]
    assert tg.get(refs, timeout=60) == list(range(3000))
    os.kill(victim, signal.SIGKILL)
    assert tg.statistics().direct_actor_calls - before == 3000
    assert tg.get(sum_of.remote([refs]), timeout=60) == sum(range(3000))
    del refs
    wait_settled()


# -- an actor that exits while its reports sit in the pipe -----------------------------------


def test_a_threaded_actor_that_calls_exit_actor_lets_its_running_calls_finish(fresh_cluster):
    """exit_actor() in one call of a threaded actor while seven slow calls run on its
    other threads, and this driver goes on calling it: "the runtime lets a threaded
    actor's other running calls finish (its thread pool drains), runs atexit
    handlers and exits with code 0" (docs/architecture.md, Actors). A call made
    after the exiting one may run (it reached the pool before it shut) or fail
    with ActorDiedError; the calls that were running must give their values, and
    the calls answered before keep theirs (their reports were in the pipe)."""
    for _ in range(2):
        actor = Threaded.remote()
        switch_to_direct(actor)
        done = [actor.blob.remote(100, i) for i in range(20)]
        assert [len(v) for v in tg.get(done, timeout=30)] == [100] * 20
        running = [actor.slow.remote(("slow", i), 0.5) for i in range(7)]
        assert tg.get(actor.leave.remote(), timeout=30) is None
        for i in range(2000):  # until the actor is gone
            try:
                assert tg.get(actor.echo.remote(("later", i)), timeout=30) == ("later", i)
            except ActorDiedError:
                break
        outcomes = []
        for ref in running:
            try:
                outcomes.append(tg.get(ref, timeout=30))
            except ActorDiedError:
                outcomes.append("ActorDiedError")
        assert outcomes == [("slow", i) for i in range(7)], outcomes
        assert [tg.get(shape.remote(r), timeout=30) for r in done] == [(100, i) for i in range(20)]
    del done, running, actor
    wait_settled()


def test_terminate_on_a_threaded_actor_with_calls_running_answers_itself(fresh_cluster):
    """__taskgraph_terminate__ on a threaded actor while eight slow calls run on its
    threads: it waits for them ("once the calls handed over before it are done"),
    then it returns None to its caller and the actor exits with code 0. The
    running calls give their values, and so must the terminate call itself (its
    report must leave before the process does). Twelve actors in a row: the
    terminate call races the ends of the running calls, and one actor in a few
    loses that race."""
    outcomes = Counter()
    for _ in range(12):
        actor = Threaded.remote()
        switch_to_direct(actor)
        running = [actor.slow.remote(("slow", i), 0.2) for i in range(8)]
        leaving = actor.__taskgraph_terminate__.remote()
        assert tg.get(running, timeout=30) == [("slow", i) for i in range(8)]
        try:
            assert tg.get(leaving, timeout=30) is None
            outcomes["answered"] += 1
        except ActorDiedError:
            outcomes["ActorDiedError"] += 1
        with pytest.raises(ActorDiedError):
            tg.get(actor.echo.remote("after"), timeout=30)
    assert outcomes == {"answered": 12}, (
        f"the terminate call failed with ActorDiedError {outcomes['ActorDiedError']} times in 12"
    )
    del running, leaving, actor
    wait_settled()


def test_reports_in_the_pipe_when_an_actor_exits_gracefully(fresh_cluster):
    """A burst of direct calls is answered (reports in the pipe, not read yet) and
    the next call makes the actor exit with code 0 (exit_actor on a sequential
    actor: at once). The exit is reported after the pipe's reports: every call
    answered keeps its value for readers through the scheduler."""

    @tg.remote(num_cpus=0)
    class Leaving:
        def history(self):
            return None

        def echo(self, x):
            return x

        def leave(self):
            tg.actor.exit_actor()

    for _ in range(3):
        actor = Leaving.remote()
        switch_to_direct(actor)
        refs = [actor.echo.remote(i) for i in range(200)]
        assert tg.get(refs, timeout=30) == list(range(200))
        assert tg.get(actor.leave.remote(), timeout=30) is None
        with pytest.raises(ActorDiedError):
            tg.get(actor.echo.remote("after"), timeout=30)
        assert tg.get(sum_of.remote([refs]), timeout=30) == sum(range(200))
    del refs, actor
    wait_settled()


# -- orphan returns on a threaded actor ------------------------------------------------------


def test_failed_calls_on_a_threaded_actor_free_only_their_own_stored_returns(fresh_cluster):
    """Calls on a threaded actor run side by side: some store a large return and
    then fail on the next (it does not pickle), others store large returns and
    succeed. The daemon frees what the failed calls stored; the returns of the
    calls that succeeded, stored at the same moments, stay readable everywhere."""
    actor = Threaded.remote()
    switch_to_direct(actor)
    errors: list[BaseException] = []
    kept: list[tuple[int, object]] = []

    def calling(k: int) -> None:
        try:
            for i in range(12):
                if (i + k) % 2:
                    a, b = actor.big_then_unpicklable.remote(BIG)
                    for r in (a, b):
                        with pytest.raises(TaskError):
                            tg.get(r, timeout=30)
                else:
                    fill = 10 * k + i
                    ref = actor.big.remote(BIG, fill)
                    assert int(tg.get(ref, timeout=30).sum()) == fill * BIG
                    kept.append((fill, ref))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=calling, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(kept) == 24
    # The successful returns are all still there, for a task to read.
    for fill, ref in kept:
        assert tg.get(shape_sum.remote(ref), timeout=30) == fill * BIG
    kept.clear()
    del ref
    wait_settled()
    store_empties()


@tg.remote
def shape_sum(x):
    return int(np.asarray(x).sum())


# -- a driver that leaves mid-burst: CallerLeft --------------------------------------------

BURST_THEN_DIE = """
@tg.remote
def twice(x):
    return 2 * x

x = tg.put(np.full(200_000, 1))
refs = []
for i in range({calls}):
    if i % 3 == 0:
        r = a.add_total.remote(x)  # held in the channel for a ping
    else:
        r = a.add.remote(i)
    if i % 4 == 1:
        tg.cancel(r)
    if i % 5 == 2:
        refs.append(twice.remote(r))  # waits on the call: ReadReports
    refs.append(r)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("calls", [5, 40, 150])
def test_a_driver_killed_mid_burst_only_its_never_sent_calls_are_cancelled(fresh_cluster, calls):
    """Another driver makes a burst of direct calls (plain ones, and ones with a ref
    argument that wait in its channel for a ping), cancels some, and SIGKILLs
    itself. The actor says which calls it got (CallerLeft); the scheduler cancels
    the ones it recorded and the actor never got. Meanwhile this driver calls the
    same actor directly. Then, on the scheduler's task list: a call the actor ran
    is never FAILED (cancelled), a FINISHED call ran, and nothing stays RUNNING;
    this driver's calls all gave their values; what the dead driver stored is
    freed."""
    name = f"caller-left-{calls}"
    actor = Sequential.options(name=name).remote()
    tg.get(actor.history.remote(), timeout=30)
    switch_to_direct(actor)
    mine_errors: list[BaseException] = []
    stop = threading.Event()
    mine: list[tuple[int, object]] = []

    def calling() -> None:
        try:
            y = tg.put(np.full(BIG, 2))
            i = 0
            while not stop.is_set():
                ref = actor.add.remote(1000 + i) if i % 2 else actor.add_total.remote(y)
                mine.append((i, ref))
                want = 1000 + i if i % 2 else 2 * BIG
                assert tg.get(ref, timeout=30) == want
                i += 1
        except BaseException as exc:  # reported below
            mine_errors.append(exc)

    thread = threading.Thread(target=calling)
    thread.start()
    try:
        script = SWITCH.format(name=name, namespace=namespace()) + BURST_THEN_DIE.format(
            calls=calls
        )
        for _ in range(2):
            code, _, err = finish(another_driver(script))
            assert code == -signal.SIGKILL, err
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "this driver's calls hang"
    assert not mine_errors, mine_errors[:3]
    assert mine, "this driver called the actor meanwhile"
    wait_settled()
    wait_for(lambda: not pending_tasks(), what="no task to wait on a call for good")
    ran = set(tg.get(actor.ran_ids.remote(), timeout=30))
    on_record = {**tasks_named("Sequential.add"), **tasks_named("Sequential.add_total")}
    cancelled_but_ran = [t for t, s in on_record.items() if s == "FAILED" and t in ran]
    finished_not_run = [t for t, s in on_record.items() if s == "FINISHED" and t not in ran]
    assert not cancelled_but_ran, f"{len(cancelled_but_ran)} calls ran but are on record as failed"
    assert not finished_not_run, f"{len(finished_not_run)} calls finished on record but never ran"
    mine.clear()
    store_empties()
    tg.kill(actor)


CHAINED_THEN_DIE = """
b = tg.get_actor({second!r}, namespace={namespace!r})
deadline = time.monotonic() + 15
while True:
    before = tg.statistics().direct_actor_calls
    tg.get(b.history.remote())
    if tg.statistics().direct_actor_calls == before + 1:
        break
    if time.monotonic() > deadline:
        sys.exit("never went direct")
refs = []
for i in range({calls}):
    p = a.echo.remote(i)  # straight to the first actor
    refs.append(b.add.remote(p))  # waits for a ping, then the second actor fetches p
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("calls", [2, 30])
def test_a_driver_killed_mid_burst_of_calls_on_other_calls_returns(fresh_cluster, calls):
    """Another driver calls actor A directly and passes each call's pending return
    to a direct call on actor B (held for a ping; B fetches the argument), then is
    SIGKILLed mid-burst. Both actors say what they got (CallerLeft). Every call B
    ran had its argument; none is on record as failed after it ran, none as
    finished without running; nothing stays RUNNING (B's thread for that caller
    waits on no argument for good); both actors live on."""
    first, second = f"chain-a-{calls}", f"chain-b-{calls}"
    a = Sequential.options(name=first).remote()
    b = Sequential.options(name=second).remote()
    tg.get([a.history.remote(), b.history.remote()], timeout=30)
    script = SWITCH.format(name=first, namespace=namespace()) + CHAINED_THEN_DIE.format(
        second=second, namespace=namespace(), calls=calls
    )
    for _ in range(2):
        code, _, err = finish(another_driver(script))
        assert code == -signal.SIGKILL, err
    wait_settled()
    ran = set(tg.get(b.ran_ids.remote(), timeout=30))
    on_record = tasks_named("Sequential.add")
    cancelled_but_ran = [t for t, s in on_record.items() if s == "FAILED" and t in ran]
    finished_not_run = [t for t, s in on_record.items() if s == "FINISHED" and t not in ran]
    assert not cancelled_but_ran, f"{len(cancelled_but_ran)} calls ran but are on record as failed"
    assert not finished_not_run, f"{len(finished_not_run)} calls finished on record but never ran"
    assert tg.get([a.echo.remote("a"), b.echo.remote("b")], timeout=30) == ["a", "b"]
    store_empties()
    tg.kill(a)
    tg.kill(b)


# -- a killed driver's puts that others hold ---------------------------------------------------

PUT_KEEP_LEAVE = """
kept = [tg.put(np.full(200_000, {k})) for _ in range(3)]
assert tg.get(a.keep.remote(kept)) == 3 * ({k} + 1)
lost = [tg.put(np.full(200_000, 9)) for _ in range(3)]  # nobody else hears of these
{leave}
"""


@pytest.mark.parametrize("how", ["sigkill", "shutdown"])
def test_puts_of_a_departed_driver_that_an_actor_keeps_are_not_freed(fresh_cluster, how):
    """A driver puts large values, hands them to an actor that keeps the refs, puts
    more that nobody else hears of (SIGKILL: perhaps not even the scheduler), and
    leaves. Its store connection closes (StoreClientGone): what it sealed and the
    scheduler never heard of (or freed) is freed, but the values the actor holds
    must stay readable."""
    name = f"keeps-puts-{how}"
    actor = Sequential.options(name=name).remote()
    tg.get(actor.history.remote(), timeout=30)
    leave = "os.kill(os.getpid(), signal.SIGKILL)" if how == "sigkill" else "tg.shutdown()"
    for k in range(2):
        script = SWITCH.format(name=name, namespace=namespace()) + PUT_KEEP_LEAVE.format(
            k=k, leave=leave
        )
        code, _, err = finish(another_driver(script))
        assert code == (-signal.SIGKILL if how == "sigkill" else 0), err
    wait_settled()
    # Only the kept values remain (6 of them), and each reads back whole.
    wait_for(lambda: len(stored()) == 6, what="the unheard-of puts to be freed")
    assert tg.get(actor.kept_totals.remote(), timeout=30) == [0] * 3 + [BIG] * 3
    assert len(stored()) == 6
    assert tg.get(actor.drop_kept.remote(), timeout=30) is None
    store_empties()
    tg.kill(actor)


BIG_ARGS_THEN_DIE = """
for i in range({calls}):
    a.add_total.remote(np.full(200_000, 1))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("calls", [1, 10])
def test_a_driver_killed_mid_burst_of_direct_calls_with_large_arguments(fresh_cluster, calls):
    """Large arguments go into the store from the driver; the calls wait for a ping
    in its channel. SIGKILLed mid-burst: every argument is freed (the ones the
    scheduler heard of with their calls, the others by StoreClientGone), every call
    the actor got ran with the whole value, and the actor lives on."""
    name = f"big-args-{calls}"
    actor = Sequential.options(name=name).remote()
    tg.get(actor.history.remote(), timeout=30)
    script = SWITCH.format(name=name, namespace=namespace()) + BIG_ARGS_THEN_DIE.format(calls=calls)
    for _ in range(2):
        code, _, err = finish(another_driver(script))
        assert code == -signal.SIGKILL, err
    wait_settled()
    store_empties()
    assert tg.get(actor.echo.remote("alive"), timeout=30) == "alive"
    tg.kill(actor)


# -- chains on direct calls' returns: ReadReports -------------------------------------------


def test_tasks_on_direct_call_returns_while_the_actor_is_killed(fresh_cluster):
    """Tasks take direct calls' returns as arguments (the scheduler asks the actor's
    worker for those reports at once: ReadReports); the actor is SIGKILLed midway,
    once the first call's value is back (so that at least one ran), with later
    calls still on their way. For every pair, the call's value and the task's
    result agree: both a value, or both ActorDiedError. None hangs."""
    actor = Sequential.remote()
    switch_to_direct(actor)
    victim = tg.get(actor.pid.remote(), timeout=30)
    pairs = []
    for i in range(120):
        r = actor.echo.remote(i)
        pairs.append((i, r, double.remote(r)))
        if i == 80:
            first = pairs[0][1]
            assert tg.wait([first], timeout=30) == ([first], []), "the first call never ran"
            os.kill(victim, signal.SIGKILL)
    outcomes = Counter()
    for i, r, d in pairs:
        try:
            value = tg.get(r, timeout=30)
        except ActorDiedError:
            with pytest.raises(ActorDiedError):
                tg.get(d, timeout=30)
            outcomes["died"] += 1
        else:
            assert value == i
            assert tg.get(d, timeout=30) == 2 * i
            outcomes["ran"] += 1
    assert outcomes["ran"] >= 1 and outcomes["died"] >= 1, outcomes
    del pairs, r, d, first
    wait_settled()


def test_a_task_on_a_direct_calls_return_does_not_wait_out_the_pipes_delay(fresh_cluster):
    """ReadReports: a task whose argument is a direct call's plain return makes the
    scheduler ask for that report at once, instead of waiting for the daemon's
    lazy read (READ_DELAY, 10 ms). The scheduler counts what it asked for (the
    latency is benchmarks' business: 1.0 ms per chain, not 2.2)."""
    actor = Sequential.remote()
    switch_to_direct(actor)
    assert tg.get(double.remote(actor.echo.remote(1)), timeout=30) == 2  # warm
    asked = cluster_statistics()["reports_asked_for"]
    for i in range(50):
        assert tg.get(double.remote(actor.echo.remote(i)), timeout=30) == 2 * i
    # (Not every chain: a report that came before the task needs no asking.)
    assert cluster_statistics()["reports_asked_for"] > asked
    del actor
    wait_settled()


# -- leases: revoked mid-burst, then the executor dies --------------------------------------


@pytest.mark.parametrize("revoke", [False, True])
def test_a_lease_killed_after_a_burst_of_answers_keeps_them_all(
    lasting, fresh_cluster, tmp_path, revoke
):
    """Quick tasks awaited one by one on a lease (plain values around PIPE_BUF:
    reports in the pipe, gathering, or on the stream); then (``revoke``) tasks that
    need every CPU are submitted, so the scheduler revokes the lease; and the
    leased executor is SIGKILLed at once. Each leased task whose value the driver
    got keeps that value for every reader through the scheduler and never runs
    again (it may be retried: it must not need to be)."""
    path = tmp_path / "runs"
    reader_actor = Sequential.remote()
    switch_to_direct(reader_actor)
    for round_ in range(2):
        leased(pid)
        answered = []
        sizes = AROUND_PIPE_BUF[round_::5]
        for k, n in enumerate(sizes):
            tag = 1000 * round_ + k
            ref, went = on_lease(
                lambda n=n, tag=tag: blob_task.options(max_retries=1).remote(n, tag, str(path))
            )
            assert went
            assert tg.get(ref, timeout=30) == bytes([tag % 251]) * n
            answered.append((tag, n, ref))
        victim = tg.get(pid.remote(), timeout=30)  # on the lease, idle again
        burst = [double.remote(j) for j in range(8)] if revoke else []
        os.kill(victim, signal.SIGKILL)
        assert tg.get(burst, timeout=30) == [2 * j for j in range(8)][: len(burst)]
        readers = [(tag, n, shape.remote(ref)) for tag, n, ref in answered]
        readers += [(tag, n, reader_actor.shape.remote(ref)) for tag, n, ref in answered]
        for tag, n, reader in readers:
            assert tg.get(reader, timeout=30) == (n, tag % 251)
        runs = Counter(path.read_text().split())
        assert [t for t, c in runs.items() if c > 1] == [], "an answered leased task ran again"
    del answered, readers, ref, reader_actor
    wait_settled()
    store_empties()


# -- a task that calls an actor directly and dies mid-burst -----------------------------------


@tg.remote(max_retries=0)
def calls_then_exits(name, ns, calls):
    """Call a named actor directly (plain calls, and calls with a ref argument held
    for a ping), never waiting for them, then end the process at once."""
    a = tg.get_actor(name, namespace=ns)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        before = tg.statistics().direct_actor_calls
        tg.get(a.history.remote(), timeout=30)
        if tg.statistics().direct_actor_calls == before + 1:
            break
    x = tg.put(np.full(BIG, 1))
    refs = [a.add_total.remote(x) if i % 3 == 0 else a.add.remote(i) for i in range(calls)]
    os._exit(1)
    return len(refs)


@pytest.mark.parametrize("calls", [3, 60])
def test_a_task_that_dies_mid_burst_of_direct_calls(fresh_cluster, calls):
    """The caller is a task (an executor's client) that dies (os._exit) right after a
    burst of direct calls: some records left with its last flush, some calls left,
    some held for a ping. CallerLeft and the executor's exit race to the
    scheduler. No call the actor ran is on record as FAILED, no FINISHED call
    failed to run, nothing stays RUNNING, and what the task stored is freed."""
    name = f"called-by-a-dying-task-{calls}"
    actor = Sequential.options(name=name).remote()
    tg.get(actor.history.remote(), timeout=30)
    for _ in range(3):
        with pytest.raises(WorkerCrashedError):
            tg.get(calls_then_exits.remote(name, namespace(), calls), timeout=30)
    wait_settled()
    ran = set(tg.get(actor.ran_ids.remote(), timeout=30))
    on_record = {**tasks_named("Sequential.add"), **tasks_named("Sequential.add_total")}
    assert on_record, "the dying task's calls were recorded"
    cancelled_but_ran = [t for t, s in on_record.items() if s == "FAILED" and t in ran]
    finished_not_run = [t for t, s in on_record.items() if s == "FINISHED" and t not in ran]
    assert not cancelled_but_ran, f"{len(cancelled_but_ran)} calls ran but are on record as failed"
    assert not finished_not_run, f"{len(finished_not_run)} calls finished on record but never ran"
    store_empties()
    assert tg.get(actor.echo.remote("alive"), timeout=30) == "alive"
    tg.kill(actor)
