"""Adversarial tests for short tasks held in busy executors (prefetch), the
reports an executor holds back, borrowed argument refs and deep worker queues.

Each test first runs a function often enough that the cluster counts its
tasks as short (worker/state.py SHORT_TASK), so that a busy executor holds
several of them behind the one it runs. Executions are logged to a file (one
line per run, appended with O_APPEND) so a test can tell a task that ran
twice, or never, from one that ran once.
"""

from __future__ import annotations

import collections
import os
import sys
import time

import pytest

import taskgraph as tg
from conftest import wait_for, warm
from taskgraph.exceptions import TaskCancelledError, WorkerCrashedError


def _log(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def runs(path):
    """How many times each logged task ran."""
    if not os.path.exists(path):
        return collections.Counter()
    with open(path) as f:
        return collections.Counter(line.strip() for line in f if line.strip())


@tg.remote
def job(x, log=None):
    """Short, except for a few special arguments.

    "die": the executor process exits at once (a crash); ("sleep", s): sleeps s
    seconds (a short function's rare long task); anything else is returned.
    """
    if log is not None:
        _log(log, repr(x))
    if x == "die":
        os._exit(3)
    if isinstance(x, tuple) and x[0] == "sleep":
        time.sleep(x[1])
    return x


one_cpu = pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)


# -- crashes with completed tasks behind (their reports held back) ---------------


@one_cpu
@pytest.mark.parametrize("retries", [0, 2])
def test_a_crash_fails_only_the_task_that_crashed(fresh_cluster, tmp_path, retries):
    """An executor exits inside a short task while the reports of the tasks it
    ran just before are held back (Inbox.more_soon): those tasks finished and
    must neither fail nor run again, and the task that crashes is charged for
    each crash (it runs 1 + max_retries times)."""
    log = str(tmp_path / "runs")
    warm(job, 0)
    fn = job.options(max_retries=retries)
    first = fn.remote(("sleep", 0.3), log)  # what follows waits behind it
    args = list(range(30))
    args[20] = "die"
    refs = [fn.remote(a, log) for a in args]
    results = {}
    for a, ref in zip(args, refs, strict=True):
        try:
            results[a] = tg.get(ref, timeout=60)
        except WorkerCrashedError:
            results[a] = "crashed"
    tg.get(first, timeout=60)
    wrong = {a: r for a, r in results.items() if a != "die" and r != a}
    assert results["die"] == "crashed"
    assert not wrong, f"tasks that did not crash failed: {wrong}"
    ran = runs(log)
    twice = {k: n for k, n in ran.items() if n > 1 and k != "'die'"}
    assert not twice, f"finished tasks ran again: {twice}"
    assert ran["'die'"] == 1 + retries


# -- a short function's rare long task ----------------------------------------


@one_cpu
def test_results_of_finished_tasks_are_not_held_behind_a_long_one(fresh_cluster):
    """Tasks finish, then a task of the same (short) function runs for seconds:
    the finished tasks' results must not wait for it. (Held reports go out when
    the executor's flusher next wakes, up to 0.5 s later: a few rounds, so that
    a lucky wake-up does not hide it.)"""
    delays = []
    for _ in range(4):
        warm(job, 0)  # again: the long tasks of the last round made it look long
        # The executor is busy for a moment, so that what follows waits in it.
        first = job.remote(("sleep", 0.3))
        quick = [job.remote(i) for i in range(10)]
        slow = job.remote(("sleep", 5))
        assert tg.get(first, timeout=60) == ("sleep", 0.3)
        began = time.monotonic()
        try:
            assert tg.get(quick, timeout=60) == list(range(10))
            delays.append(time.monotonic() - began)
        finally:
            tg.cancel(slow)
            with pytest.raises(TaskCancelledError):
                tg.get(slow, timeout=30)
    assert max(delays) < 0.1, f"finished results waited {delays} s behind a running task"


@one_cpu
@pytest.mark.parametrize(
    "force",
    [
        False,
        True,
    ],
)
def test_cancelling_a_long_task_leaves_the_tasks_before_it_alone(fresh_cluster, tmp_path, force):
    """The long task runs (behind short tasks whose reports may still be held):
    cancelling it, even with force, must not fail or rerun the tasks that ran
    before it."""
    log = str(tmp_path / "runs")
    warm(job, 0)
    fn = job.options(max_retries=0)
    first = fn.remote(("sleep", 0.5), log)  # what follows waits behind it
    quick = [fn.remote(i, log) for i in range(10)]
    slow = fn.remote(("sleep", 30), log)
    assert tg.get(first, timeout=60) == ("sleep", 0.5)
    wait_for(lambda: runs(log)[repr(("sleep", 30))] == 1, what="the long task to start")
    tg.cancel(slow, force=force)
    with pytest.raises(TaskCancelledError):
        tg.get(slow, timeout=30)
    results = []
    for ref in quick:
        try:
            results.append(tg.get(ref, timeout=30))
        except WorkerCrashedError:
            results.append("crashed")
    assert results == list(range(10))
    twice = {k: n for k, n in runs(log).items() if n > 1}
    assert not twice, f"tasks ran again: {twice}"
    assert tg.get(fn.remote(1), timeout=30) == 1


# -- blocking ---------------------------------------------------------------


@tg.remote
def nap(seconds):
    """Never warmed: its tasks are not known to be short, so none waits behind it."""
    time.sleep(seconds)
    return seconds


@tg.remote
def fan(x=None, ready=None):
    """Short, unless x == "fan": then its main thread waits for a child that
    becomes ready only after a second, while another thread of the task does
    a quick get() of its own meanwhile (as a thread pool in a task would) of an
    object that exists already (``ready``: a one-element list)."""
    if x != "fan":
        return x
    import threading

    dep = nap.remote(1.0)
    child = job.remote(dep)  # placed once dep is done, a second from now
    side = []

    def quick_get():
        time.sleep(0.2)  # the main thread is blocked in get() by now
        side.append(tg.get(ready[0], timeout=30))

    t = threading.Thread(target=quick_get)
    t.start()
    try:
        return tg.get(child, timeout=8), side
    finally:
        t.join()


def test_a_task_blocked_in_two_threads_gets_nothing_queued_behind_it(fresh_cluster):
    """A task's main thread waits in get() while another of its threads does a
    get() that returns at once. The task is still blocked: a short task must
    not be handed to its executor to wait behind it (it may be what it waits for)."""
    warm(job, 0)
    warm(fan, 0)
    other = nap.remote(3)  # the other CPU, for a while
    ready = tg.put("side")
    assert tg.get(fan.remote("fan", [ready]), timeout=60) == (1.0, ["side"])
    assert tg.get(other, timeout=60) == 3


@tg.remote
class Gate:
    def __init__(self):
        import threading

        self.event = threading.Event()

    def wait(self):
        self.event.wait(60)
        return "open"

    def open(self):
        self.event.set()
        return "opened"


@tg.remote
def step(x=None, gate=None):
    """Short; with a gate: waits for it (x == "wait") or opens it (x == "open")."""
    if x == "wait":
        return tg.get(gate.wait.remote(), timeout=60)
    if x == "open":
        return tg.get(gate.open.remote(), timeout=60)
    return x


@one_cpu
def test_a_short_task_opens_what_the_ones_before_it_wait_for(fresh_cluster):
    """On one CPU, short tasks block on a gate that a short task submitted after
    them opens: the opener was handed to a blocked task's executor and must come
    back and run."""
    warm(step, 0)
    gate2 = Gate.options(num_cpus=0, max_concurrency=8).remote()
    refs = [step.remote("wait", gate2) for _ in range(4)]
    refs += [step.remote(i) for i in range(20)]
    refs.append(step.remote("open", gate2))
    refs += [step.remote(i) for i in range(20)]
    assert tg.get(refs, timeout=60) == ["open"] * 4 + list(range(20)) + ["opened"] + list(range(20))
    tg.kill(gate2)


@tg.remote
def tree(n):
    """Short leaves; inner nodes wait for two children they submit."""
    if n <= 0:
        return 1
    left, right = tree.remote(n - 1), tree.remote(n - 1)
    return tg.get(left, timeout=60) + tg.get(right, timeout=60)


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}, {"num_cpus": 2}], indirect=True)
def test_a_tree_of_nested_gets_among_many_short_tasks_finishes(fresh_cluster):
    warm(tree, 0, value=1)
    warm(job, 0)
    refs = []
    for _ in range(6):
        refs.append(tree.remote(3))
        refs.extend(job.remote(j) for j in range(20))
    out = tg.get(refs, timeout=60)
    assert out[::21] == [8] * 6
    assert [x for i, x in enumerate(out) if i % 21] == list(range(20)) * 6


# -- cancel -----------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_cancel_in_a_loop_of_short_tasks_ends_each_task_once(fresh_cluster, tmp_path, force):
    """Cancel every third of many short tasks as they wait in the daemon, wait
    in an executor, run, or have just finished. Each cancelled one is either
    cancelled or done; every other one returns its value (retries allowed, so
    a force-cancel that takes a neighbour down is survived, not hidden); no
    task ends twice or hangs."""
    log = str(tmp_path / "runs")
    warm(job, 0)
    for round_ in range(6):
        blocker = job.remote(("sleep", 0.05 * (round_ % 3)), log)
        refs = [job.remote((round_, i), log) for i in range(40)]
        for ref in refs[1::3]:
            tg.cancel(ref, force=force)
        for i, ref in enumerate(refs):
            try:
                value = tg.get(ref, timeout=60)
            except TaskCancelledError:
                assert i % 3 == 1, f"task {i} was not cancelled but says so"
                continue
            assert value == (round_, i)
        tg.get(blocker, timeout=60)
        warm(job, 0, n=30)  # the blocker may have made it look long
    ran = runs(log)
    for round_ in range(6):
        for i in range(40):
            if i % 3 != 1:
                assert ran[repr((round_, i))] >= 1, f"task {(round_, i)} never ran"


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_cancel_of_tasks_that_already_returned_keeps_their_values(fresh_cluster):
    """Cancel (not force) after a short task's value arrived, or while its report
    may still be held in its executor: the value stands."""
    warm(job, 0)
    for _ in range(5):
        refs = [job.remote(i) for i in range(30)]
        tg.wait(refs, num_returns=10, timeout=60)
        tg.cancel(refs[5])
        for ref in refs[5:]:
            try:
                tg.get(ref, timeout=60)
            except TaskCancelledError:
                assert ref is refs[5]
        assert tg.get(refs[:5], timeout=60) == list(range(5))


# -- refs borrowed from arguments ---------------------------------------------


def kept_here() -> list:
    """Refs tasks kept after they returned, one list per executor process (on
    ``sys``: each task function arrives with globals of its own)."""
    if not hasattr(sys, "taskgraph_adversarial_kept"):
        sys.taskgraph_adversarial_kept = []  # type: ignore[attr-defined]
    return sys.taskgraph_adversarial_kept  # type: ignore[attr-defined]


@tg.remote
def hold(what, refs=None):
    """Short: "keep" keeps the refs, "drop" lets them go, "read" reads what is
    kept, "forget" forgets it all, "pass" only looks at them."""
    kept = kept_here()
    if what == "keep":
        kept.extend(refs)
    elif what == "drop":
        del kept[:]
    elif what == "read":
        return [len(tg.get(r, timeout=30)) for r in kept]
    return len(kept)


BIG = 300_000  # bytes: above the inline limit, so each lives in the store


@one_cpu
def test_refs_kept_by_short_tasks_outlive_them_and_no_more(fresh_cluster):
    """Many short tasks (several waiting in the one executor at a time) get
    refs; some keep them past their end, some drop what others kept, the rest
    only look. What is kept must stay readable, the rest be freed, and all of
    it once no one holds it."""
    from conftest import stored

    warm(hold, "pass", value=0)
    objects = [tg.put(bytes([i]) * BIG) for i in range(6)]
    ids = [o.hex() for o in objects]
    refs = []
    for round_ in range(3):
        for i, o in enumerate(objects):
            refs.append(hold.remote("pass", [o]))
            if i % 2 == 0:
                refs.append(hold.remote("keep", [o]))
            refs.append(hold.remote("pass", [o]))
        if round_ < 2:
            refs.append(hold.remote("drop"))
    tg.get(refs, timeout=60)
    kept = {ids[i] for i in range(0, 6, 2)}
    del objects, refs, o
    wait_for(lambda: stored() == kept, what="only the kept objects to stay")
    assert tg.get(hold.remote("read"), timeout=60) == [BIG] * 3
    assert tg.get(hold.remote("drop"), timeout=60) == 0
    wait_for(lambda: not stored(), what="the kept objects to be freed once dropped")


@tg.remote
def keep_then_die(what, refs=None):
    kept_here().extend(refs or [])
    if what == "die":
        os._exit(4)
    return len(kept_here())


@one_cpu
def test_refs_kept_in_an_executor_that_crashes_are_freed(fresh_cluster):
    """Short tasks keep refs from their arguments past their end (so their
    executor acquires them), then a short task kills that executor: what it
    kept is let go with it."""
    from conftest import stored

    warm(keep_then_die, "pass", value=0)
    for _ in range(2):
        objects = [tg.put(bytes([i]) * BIG) for i in range(4)]
        assert tg.get([keep_then_die.remote("keep", [o]) for o in objects], timeout=60)
        with pytest.raises(WorkerCrashedError):
            tg.get(keep_then_die.options(max_retries=0).remote("die"), timeout=60)
        del objects
        wait_for(lambda: not stored(), what="what the dead executor kept to be freed")


# -- shapes, generators, more workers -----------------------------------------


@tg.remote
def gen(n):
    yield from range(n)


def test_short_tasks_of_every_cpu_shape_and_generators_all_finish(fresh_cluster):
    """Short tasks of 0.5, 1 and 2 CPUs and generator tasks, interleaved on two
    CPUs: a task waits only behind one of its own shape, and every one ends."""
    half, whole, double = (job.options(num_cpus=c) for c in (0.5, 1, 2))
    for fn in (half, whole, double):
        warm(fn, 0, n=30)
    refs, expected = [], []
    for i in range(60):
        fn = (half, whole, double)[i % 3]
        refs.append(fn.remote(i))
        expected.append(i)
    streams = [gen.remote(5) for _ in range(4)]
    refs.append(job.options(num_cpus=2).remote(("sleep", 0.2)))
    expected.append(("sleep", 0.2))
    refs += [half.remote(i) for i in range(20)]
    expected += list(range(20))
    assert tg.get(refs, timeout=60) == expected
    for stream in streams:
        assert [tg.get(item, timeout=60) for item in stream] == list(range(5))


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_worker_that_joins_while_another_holds_a_deep_queue_gets_work(fresh_cluster):
    """One worker holds many queued short tasks; a second one joins. Everything
    finishes, and tasks submitted later run on the newcomer too."""
    from conftest import start_worker, stop_process

    warm(job, 0)

    @tg.remote
    def where(x):
        time.sleep(0.02)
        return tg.get_runtime_context().get_node_id()

    first = tg.get(where.remote(0), timeout=30)
    deep = [job.remote(i) for i in range(2000)]
    proc = start_worker("--num-cpus", "2")
    try:
        wait_for(lambda: len(tg.nodes()) == 2, timeout=30, what="the second worker to join")
        assert tg.get(deep, timeout=60) == list(range(2000))
        nodes = set(tg.get([where.remote(i) for i in range(40)], timeout=60))
        assert len(nodes) == 2 and first in nodes
    finally:
        stop_process(proc)


@one_cpu
def test_zero_cpu_short_tasks_mixed_with_cpu_ones_finish(fresh_cluster):
    zero = job.options(num_cpus=0)
    warm(job, 0)
    warm(zero, 0, n=20)
    refs = [(zero if i % 4 == 0 else job).remote(i) for i in range(80)]
    assert tg.get(refs, timeout=60) == list(range(80))
