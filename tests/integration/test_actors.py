"""Actors with Ray's semantics, on a real two-CPU local cluster."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.exceptions import ActorDiedError, ActorError, TaskError
from taskgraph.util import ActorPool
from taskgraph.util.state import list_tasks

pytestmark = pytest.mark.usefixtures("cluster")


# -- the seed's actors ------------------------------------------------------------


@tg.remote
class AnActor:
    def f(self, x):
        return x * x


@tg.remote
class Example:
    def __init__(self, x):
        self.x = x

    def set(self, x):
        self.x = x

    def get(self):
        return self.x


@tg.remote
class LoggingActor:
    def __init__(self):
        self.logs = defaultdict(list)

    def log(self, index, message):
        self.logs[index].append(message)

    def get_logs(self):
        return dict(self.logs)


@tg.remote
def log_from_task(logger, i):
    tg.get(logger.log.remote(i, f"message from task {i}"))
    return i


def test_seed_an_actor():
    actor = AnActor.remote()
    assert tg.get(actor.f.remote(4)) == 16


def test_seed_example_keeps_state_between_calls():
    e = Example.remote(1)
    assert tg.get(e.get.remote()) == 1
    assert tg.get(e.set.remote(2)) is None
    assert tg.get(e.get.remote()) == 2


def test_seed_logging_actor_collects_logs_from_tasks():
    logger = LoggingActor.remote()
    logger.log.remote(1, "logging something from another process.")
    assert sorted(tg.get([log_from_task.remote(logger, i) for i in range(2, 5)])) == [2, 3, 4]
    logs = tg.get(logger.get_logs.remote())
    assert logs[1] == ["logging something from another process."]
    assert logs[3] == ["message from task 3"]


# -- calling ----------------------------------------------------------------------------


@tg.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def record(self, value):
        self.seen.append(value)
        return len(self.seen)

    def seen_values(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def actor_id(self):
        return tg.get_runtime_context().get_actor_id()

    def fail(self):
        raise ValueError("method failed")

    @tg.method(num_returns=2)
    def pair(self):
        return "a", "b"

    def crash(self):
        os._exit(1)


@tg.remote
def slow_value(value, seconds):
    time.sleep(seconds)
    return value


def test_calls_run_in_submission_order_even_with_pending_ref_arguments():
    r = Recorder.remote()
    r.record.remote(slow_value.remote("first", 0.5))
    r.record.remote("second")
    r.record.remote(slow_value.remote("third", 0.2))
    r.record.remote("fourth")
    assert tg.get(r.seen_values.remote()) == ["first", "second", "third", "fourth"]


def test_misuse_fails_in_the_caller():
    with pytest.raises(TypeError, match=r"Recorder\.remote"):
        Recorder()
    r = Recorder.remote()
    with pytest.raises(TypeError, match=r"\.record\.remote"):
        r.record(1)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        r.nope.remote()
    with pytest.raises(TypeError, match="wrong arguments"):
        r.record.remote(1, 2)
    with pytest.raises(TypeError, match="wrong arguments for actor"):
        Example.remote()
    with pytest.raises(TypeError, match="cannot subclass"):

        class Sub(Recorder):  # type: ignore[misc, valid-type]
            pass

    with pytest.raises(ValueError, match="unknown actor option"):
        Recorder.options(bogus=1)


def test_method_error_is_a_task_error_and_the_actor_keeps_its_state():
    r = Recorder.remote()
    r.record.remote("kept")
    with pytest.raises(ValueError, match="method failed") as info:
        tg.get(r.fail.remote())
    assert isinstance(info.value, TaskError)
    assert tg.get(r.seen_values.remote()) == ["kept"]


def test_method_num_returns():
    r = Recorder.remote()
    a, b = r.pair.remote()
    assert tg.get([a, b]) == ["a", "b"]
    r.record.remote(1)
    (only,) = [r.seen_values.options(num_returns=1).remote()]
    assert tg.get(only) == [1]


def test_actor_runs_in_its_own_process_and_knows_its_id():
    r = Recorder.remote()
    assert tg.get(r.pid.remote()) != os.getpid()
    assert tg.get(r.actor_id.remote()) == r._actor_id.hex()


@tg.remote
def call_through(handle, depth):
    if depth == 0:
        return tg.get(handle.record.remote("deep"))
    return tg.get(call_through.remote(handle, depth - 1))


def test_handles_pass_through_three_levels_and_through_put():
    r = Recorder.remote()
    assert tg.get(call_through.remote(r, 2)) == 1
    again = tg.get(tg.put([r]))[0]
    assert tg.get(again.seen_values.remote()) == ["deep"]


@tg.remote
class Broken:
    def __init__(self):
        raise RuntimeError("constructor exploded")

    def ping(self):
        return "pong"


def test_constructor_error_fails_every_call_with_actor_error():
    b = Broken.remote()
    for _ in range(2):
        with pytest.raises(ActorError, match="constructor exploded"):
            tg.get(b.ping.remote(), timeout=30)


# -- concurrency ------------------------------------------------------------------------


@tg.remote(max_concurrency=3)
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def work(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(0.1)
        with self.lock:
            self.now -= 1
        return threading.get_ident()

    def peak_seen(self):
        return self.peak


def test_max_concurrency_never_exceeds_n_threads():
    t = Threaded.remote()
    threads = set(tg.get([t.work.remote() for _ in range(12)], timeout=60))
    assert len(threads) <= 3
    assert tg.get(t.peak_seen.remote()) == 3


@tg.remote
class AsyncActor:
    def __init__(self):
        self.event = asyncio.Event()
        self.order = []

    async def wait_for_signal(self):
        self.order.append("waiting")
        await self.event.wait()
        self.order.append("released")
        return "done"

    async def signal(self):
        self.order.append("signal")
        self.event.set()

    def sync_order(self):
        return list(self.order)

    async def await_ref(self, ref_list):
        return await ref_list[0]


def test_async_actor_calls_interleave_at_await():
    a = AsyncActor.remote()
    waiting = a.wait_for_signal.remote()
    a.signal.remote()
    assert tg.get(waiting, timeout=30) == "done"
    assert tg.get(a.sync_order.remote()) == ["waiting", "signal", "released"]


def test_await_ref_inside_an_async_actor():
    a = AsyncActor.remote()
    assert tg.get(a.await_ref.remote([slow_value.remote(7, 0.1)]), timeout=30) == 7


# -- names, lifetime, kill, restart ----------------------------------------------------------


def test_named_actor_get_or_create_returns_the_same_process():
    first = Recorder.options(name="registry").remote()
    again = Recorder.options(name="registry", get_if_exists=True).remote()
    found = tg.get_actor("registry")
    pids = tg.get([first.pid.remote(), again.pid.remote(), found.pid.remote()])
    assert len(set(pids)) == 1
    with pytest.raises(ValueError, match="already exists"):
        Recorder.options(name="registry").remote()
    with pytest.raises(ValueError, match="no actor named"):
        tg.get_actor("registry", namespace="elsewhere")
    other = Recorder.options(name="registry", namespace="elsewhere").remote()
    assert tg.get(other.pid.remote()) not in pids
    tg.kill(first)
    tg.kill(other)
    wait_for(lambda: _no_actor("registry"), what="the name to be freed")


def _no_actor(name: str, namespace: str | None = None) -> bool:
    try:
        tg.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_unknown_actor_name_raises_value_error():
    with pytest.raises(ValueError):
        tg.get_actor("never-created")


@tg.remote(num_cpus=1)
class HoldsACpu:
    def ping(self):
        return "pong"


def test_kill_frees_the_name_and_the_resources():
    holder = HoldsACpu.options(name="holder").remote()
    assert tg.get(holder.ping.remote()) == "pong"
    assert tg.available_resources()["CPU"] == 1
    tg.kill(holder)
    with pytest.raises(ActorDiedError):
        tg.get(holder.ping.remote(), timeout=30)
    wait_for(lambda: tg.available_resources()["CPU"] == 2, what="the CPU to come back")
    assert _no_actor("holder")


def test_default_actor_holds_no_cpu_while_alive():
    r = Recorder.remote()
    tg.get(r.pid.remote())
    assert tg.available_resources()["CPU"] == 2


def test_dropping_the_last_handle_stops_the_actor():
    r = Recorder.remote()
    pid = tg.get(r.pid.remote())
    del r
    wait_for(lambda: not _alive(pid), what="the actor's process to exit")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@tg.remote(max_restarts=1)
class Restartable:
    def __init__(self):
        self.calls = 0

    def count(self):
        self.calls += 1
        return self.calls

    def pid(self):
        return os.getpid()

    def crash(self):
        os._exit(1)


def test_restart_after_the_process_dies_resets_state():
    r = Restartable.remote()
    assert tg.get([r.count.remote(), r.count.remote()]) == [1, 2]
    first_pid = tg.get(r.pid.remote())
    with pytest.raises(ActorDiedError):
        tg.get(r.crash.remote(), timeout=30)
    assert tg.get(r.count.remote(), timeout=60) == 1
    assert tg.get(r.pid.remote()) != first_pid
    with pytest.raises(ActorDiedError):
        tg.get(r.crash.remote(), timeout=30)
    with pytest.raises(ActorDiedError):
        tg.get(r.count.remote(), timeout=30)


def test_died_actor_error_travels_to_dependent_tasks():
    r = Recorder.remote()
    crashed = r.crash.remote()

    @tg.remote
    def use(x):
        return x

    with pytest.raises(ActorDiedError):
        tg.get(use.remote(crashed), timeout=30)


def test_max_task_retries_reruns_calls_in_flight_after_a_restart(tmp_path):
    marker = tmp_path / "crashed"

    @tg.remote(max_restarts=1, max_task_retries=1)
    class CrashOnce:
        def work(self, path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "retried"

    c = CrashOnce.remote()
    assert tg.get(c.work.remote(str(marker)), timeout=60) == "retried"


@tg.remote
class WithAtexit:
    def __init__(self, path):
        import atexit

        atexit.register(lambda: Path(path).write_text("atexit ran"))

    def leave(self):
        tg.actor.exit_actor()

    def ping(self):
        return "pong"


def test_exit_actor_and_terminate_run_atexit_but_kill_does_not(tmp_path):
    left = tmp_path / "left"
    a = WithAtexit.remote(str(left))
    tg.get(a.leave.remote(), timeout=30)
    wait_for(left.exists, what="atexit after exit_actor()")
    with pytest.raises(ActorDiedError):
        tg.get(a.ping.remote(), timeout=30)

    terminated = tmp_path / "terminated"
    b = WithAtexit.remote(str(terminated))
    tg.get(b.ping.remote())
    b.__taskgraph_terminate__.remote()
    wait_for(terminated.exists, what="atexit after __taskgraph_terminate__")

    killed = tmp_path / "killed"
    c = WithAtexit.remote(str(killed))
    pid_check = tg.get(c.ping.remote())
    assert pid_check == "pong"
    tg.kill(c)
    with pytest.raises(ActorDiedError):
        tg.get(c.ping.remote(), timeout=30)
    assert not killed.exists()


def test_detached_actor_outlives_its_handles():
    d = Recorder.options(name="detached-one", lifetime="detached").remote()
    pid = tg.get(d.pid.remote())
    del d
    again = tg.get_actor("detached-one")
    assert tg.get(again.pid.remote()) == pid
    tg.kill(again)
    wait_for(lambda: not _alive(pid))


def test_actor_pool():
    pool = ActorPool([AnActor.remote(), AnActor.remote()])
    assert list(pool.map(lambda a, v: a.f.remote(v), range(6))) == [0, 1, 4, 9, 16, 25]
    assert sorted(pool.map_unordered(lambda a, v: a.f.remote(v), range(4))) == [0, 1, 4, 9]
    pool.submit(lambda a, v: a.f.remote(v), 3)
    assert pool.has_next()
    assert pool.get_next() == 9
    assert not pool.has_next()
    idle = pool.pop_idle()
    assert idle is not None
    assert pool.has_free()
    pool.push(idle)
    with pytest.raises(ValueError):
        pool.push(idle)
    for v in range(5):
        pool.submit(lambda a, v: a.f.remote(v), v)
    assert sorted(pool.get_next_unordered() for _ in range(5)) == [0, 1, 4, 9, 16]


def test_actors_are_listed_with_their_state():
    r = Recorder.options(name="listed").remote()
    tg.get(r.pid.remote())
    listed = [a for a in tg._api.client().query("actors") if a["name"] == "listed"]
    assert listed and listed[0]["state"] == "ALIVE" and listed[0]["class_name"] == "Recorder"
    assert listed[0]["pid"] > 0


@tg.remote
def lookup_pid(name):
    return tg.get(tg.get_actor(name).pid.remote())


def test_tasks_see_the_driver_s_named_actors():
    r = Recorder.options(name="shared-by-name").remote()
    assert tg.get(lookup_pid.remote("shared-by-name")) == tg.get(r.pid.remote())
    tg.kill(r)


@tg.remote
def boom():
    raise RuntimeError("the argument failed")


def test_an_actor_whose_argument_failed_fails_its_calls():
    e = Example.remote(boom.remote())
    with pytest.raises(RuntimeError, match="the argument failed"):
        tg.get(e.get.remote(), timeout=30)


@tg.remote(num_cpus=1)
class Pinned:
    def ping(self):
        return "pong"


@tg.remote
def hold_cpu(seconds):
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def test_a_worker_counts_the_cpus_its_actors_hold():
    p = Pinned.remote()
    assert tg.get(p.ping.remote()) == "pong"
    spans = sorted(tg.get([hold_cpu.remote(0.3) for _ in range(3)], timeout=60))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.05, "two tasks ran beside an actor holding one of two CPUs"
    tg.kill(p)


# -- cancelling calls -------------------------------------------------------------


@tg.remote
class Gate:
    """A sequential actor whose first call waits for a file, so calls queue behind it."""

    def wait_for(self, path):
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "opened"

    def value(self, x):
        return x


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-scheduler"])
def test_a_queued_actor_call_is_cancelled_and_the_running_one_goes_on(direct, tmp_path):
    gate = Gate.options(max_restarts=0 if direct else 1).remote()
    calls = tg.statistics().direct_actor_calls
    for i in range(30):  # enough for a caller to go direct when it may
        assert tg.get(gate.value.remote(i)) == i
    went_direct = tg.statistics().direct_actor_calls > calls
    assert went_direct == direct
    path = tmp_path / "open"
    running = gate.wait_for.remote(str(path))
    queued = gate.value.remote("never")
    tg.cancel(queued)
    # Answered as soon as the cancel reaches the actor's process, while the call
    # before it still runs (not when the actor comes to it).
    with pytest.raises(tg.exceptions.TaskCancelledError):
        tg.get(queued, timeout=30)
    assert not path.exists()
    path.touch()
    assert tg.get(running, timeout=30) == "opened"
    assert tg.get(gate.value.remote("after")) == "after", "the actor goes on"
    task_id = queued.id.hex()[:24] + "00000000"
    wait_for(
        lambda: any(
            t["task_id"] == task_id and t["state"] == "FAILED" for t in list_tasks(limit=0)
        ),
        what="the scheduler to record the call as failed",
    )
    tg.kill(gate)
