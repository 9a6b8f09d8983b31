"""Channels under attack (taskgraph/_channels.py, worker/channel.py, _deliveries.py).

A channel is a connection an executor opens to a client's listener: a lease,
or an actor's process serving one direct caller. These tests attack what the
other adversarial files do not: strangers at the listener, processes that stop
reading (SIGSTOP: a debugger, Ctrl-Z), kills at each step of a channel's
opening, actors that may restart or live on another host, executors and actors
as direct callers, and shutdown with channels open. Paths are read from public
counts (``tg.statistics()``, ``taskgraph.util.state``).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import psutil
import pytest

import taskgraph as tg
from conftest import (
    SWITCH_TO_DIRECT,
    another_driver,
    finish,
    switch_to_direct,
    wait_for,
    wait_settled,
)
from taskgraph import _wire as w
from taskgraph._transport import BlockingConnection, digest
from taskgraph.exceptions import ActorDiedError
from taskgraph.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On

# -- actors and tasks -----------------------------------------------------------------


class _Log:
    def __init__(self):
        self.seen = []

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def history(self):
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def blob(self, n):
        return b"x" * n

    def take(self, data):
        self.seen.append(len(data))
        return len(self.seen)

    def node(self):
        return tg.get_runtime_context().get_node_id()

    def actor_id(self):
        return tg.get_runtime_context().get_actor_id()

    def slow(self, x, delay):
        time.sleep(delay)
        self.seen.append(x)
        return len(self.seen)


Log = tg.remote(num_cpus=0)(_Log)


@tg.remote(num_cpus=0)
class Noted(_Log):
    """A Log whose process writes its pid to a file as it starts (each restart too)."""

    def __init__(self, path):
        super().__init__()
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


@tg.remote
def double(x):
    return 2 * x


@tg.remote
def actor_id_of(actor):
    return tg.get(actor.actor_id.remote(), timeout=30)


@tg.remote
def slowly(x, delay):
    time.sleep(delay)
    return x


def reach_directly(handle, timeout: float = 20.0) -> bool:
    """Call ``handle`` until this process's client calls it directly (in a driver,
    a task or an actor: each counts its own direct calls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tg.statistics().direct_actor_calls
        tg.get(handle.history.remote(), timeout=30)
        if tg.statistics().direct_actor_calls == before + 1:
            return True
    return False


def mixed_calls(callee, tag, n):
    """Switch to direct calls, then make ``n`` calls to ``callee``: plain ones, ones
    with a put's ref, and ones with a pending task's ref. Returns the values, and
    whether every one of the ``n`` went direct (in a driver, its other threads'
    direct calls meanwhile count too)."""
    assert reach_directly(callee), f"{tag} never called directly"
    before = tg.statistics().direct_actor_calls
    refs = []
    for i in range(n):
        if i % 7 == 3:
            refs.append(callee.add.remote(slowly.remote((tag, i), 0.02)))
        elif i % 5 == 1:
            refs.append(callee.add.remote(tg.put((tag, i))))
        else:
            refs.append(callee.add.remote((tag, i)))
    out = tg.get(refs, timeout=60)
    return out, tg.statistics().direct_actor_calls >= before + n


@tg.remote
def caller_task(callee, tag, n):
    return mixed_calls(callee, tag, n)


def call_after_death(callee):
    try:
        tg.get(callee.add.remote("after death"), timeout=30)
    except ActorDiedError:
        return "died"
    return "answered"


@tg.remote
def task_calls_after_death(callee):
    return call_after_death(callee)


@tg.remote(num_cpus=0)
class CallerActor:
    def run(self, callee, tag, n):
        return mixed_calls(callee, tag, n)

    def after_death(self, callee):
        return call_after_death(callee)

    def pid(self):
        return os.getpid()


@tg.remote(num_cpus=0, max_concurrency=4)
class SelfCaller:
    """A threaded actor that calls itself through its own handle."""

    def __init__(self):
        self.me = None
        self.seen = []

    def adopt(self, me):
        self.me = me

    def history(self):
        return list(self.seen)

    def add(self, x):
        self.seen.append(x)
        return len(self.seen)

    def loop(self, n):
        switched = reach_directly(self.me)
        before = tg.statistics().direct_actor_calls
        out = [tg.get(self.me.add.remote(i), timeout=30) for i in range(n)]
        return switched, tg.statistics().direct_actor_calls - before, out

    def pid(self):
        return os.getpid()


# -- helpers --------------------------------------------------------------------------


def pids(path) -> list[int]:
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def started(path, count: int = 1) -> int:
    """The pid of the ``count``-th process that the actor noting to ``path`` started."""
    wait_for(lambda: len(pids(path)) >= count, timeout=30, what="the actor's process to start")
    return pids(path)[count - 1]


def outcomes(refs) -> list[object]:
    """Each call's value, or "died" for one that failed with ActorDiedError."""
    out: list[object] = []
    for ref in refs:
        try:
            out.append(tg.get(ref, timeout=30))
        except ActorDiedError:
            out.append("died")
    return out


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listener_address() -> str:
    """This driver's listening socket (an abstract Unix name)."""
    return tg._api.client().deliveries.address.removeprefix("unix://")


def stranger(authenticate: bool = True) -> socket.socket:
    """A process on this host connecting to the driver's listener; with the token
    if ``authenticate`` (then welcomed), else it says nothing at all."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(listener_address())
    if authenticate:
        conn = BlockingConnection(sock)
        [challenge] = conn.recv()
        token = tg._api.client().token
        conn.send([w.Hello("executor", digest(token, challenge.nonce), b"s" * 8)])
        [welcome] = conn.recv()
        assert isinstance(welcome, w.Welcome), welcome
    return sock


def refused(sock: socket.socket, timeout: float = 10) -> bool:
    """Whether the listener closed ``sock`` on us (within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


# -- strangers at the listener ---------------------------------------------------------


def test_silent_strangers_at_the_listener_do_not_stall_its_channels_and_deliveries(
    fresh_cluster,
):
    # Anyone on the host may connect to an abstract Unix socket, token or not.
    # Three that say nothing must not hold up a new actor's channel (its process
    # opens it before running the offered call) nor a result handed over here.
    log = Log.remote()
    assert tg.get(double.remote(1), timeout=30) == 2
    silent = [stranger(authenticate=False) for _ in range(3)]
    try:
        # (Each would hold the listener for the handshake's 10 s deadline.)
        assert tg.get(log.add.remote("first"), timeout=8) == 1
        assert tg.get(double.remote(2), timeout=8) == 4
    finally:
        for sock in silent:
            sock.close()
        tg.kill(log)


def test_strangers_with_the_token_are_refused_and_disturb_nothing(fresh_cluster):
    log = Log.remote()
    switch_to_direct(log)
    log_id = bytes.fromhex(tg.get(log.actor_id.remote()))
    other = Log.remote()  # called by a task, never by this client: asked nothing of it
    other_id = bytes.fromhex(tg.get(actor_id_of.remote(other), timeout=30))
    calls_before = tg.statistics().direct_actor_calls
    spec = w.TaskSpec(task_id=b"t" * 16, function_id=b"", name="x", args=b"", deps=[])
    attempts = {
        # A channel for an actor this client calls through no offer of its own.
        "unasked actor": [w.encode([w.ChannelReady(other_id)])],
        # A second channel for the actor it already calls directly.
        "second channel": [w.encode([w.ChannelReady(log_id)])],
        "unknown id": [w.encode([w.ChannelReady(b"n" * 16)])],
        "a task to us": [w.encode([w.ChannelTask(spec)])],
        "an answer first": [w.encode([w.DirectResult(w.TaskResult(b"t" * 16))])],
        "a lease ending first": [w.encode([w.LeaseEnding()])],
        "garbage": [w.HEADER.pack(7) + b"\xc1" * 7],
        "over the frame limit": [w.HEADER.pack(w.MAX_FRAME + 1)],
        "ready then garbage": [w.encode([w.ChannelReady(b"n" * 16)]) + b"\0\0\0\2\xc1\xc1"],
    }
    for what, frames in attempts.items():
        sock = stranger()
        for frame in frames:
            sock.sendall(frame)
        assert refused(sock), f"{what}: not refused"
        # The client goes on: its channel, its results, its leases.
        assert tg.get(log.add.remote(what), timeout=30) > 0, what
        assert tg.get(double.remote(3), timeout=30) == 6, what
    assert tg.statistics().direct_actor_calls == calls_before + len(attempts)
    assert tg.statistics().direct_actors == 1
    assert tg.get(other.add.remote("through the scheduler"), timeout=30) == 1
    history = tg.get(log.history.remote(), timeout=30)
    assert [x for x in history if isinstance(x, str)] == list(attempts)
    tg.kill(log)
    tg.kill(other)


def test_a_stranger_claiming_a_huge_frame_then_leaving_disturbs_nothing(fresh_cluster):
    log = Log.remote()
    switch_to_direct(log)
    sock = stranger()
    sock.sendall(w.HEADER.pack(w.MAX_FRAME) + b"\0" * (1 << 20))  # 2 GiB said, 1 MiB sent
    assert tg.get(log.add.remote(1), timeout=30) == 1
    sock.close()
    assert tg.get([log.add.remote(i) for i in range(2, 50)], timeout=30) == list(range(2, 50))
    assert tg.get(double.remote(5), timeout=30) == 10
    tg.kill(log)


# -- processes that stop reading -----------------------------------------------------------


def test_a_stopped_actor_does_not_freeze_the_drivers_other_work(fresh_cluster):
    # An actor's process stops (SIGSTOP: a debugger, a GIL-holding C call) while
    # a thread sends it large calls directly: that thread waits, as it would for
    # any call on that actor; tasks and other actors must not.
    stuck, free = Log.remote(), Log.remote()
    switch_to_direct(stuck)
    switch_to_direct(free)
    pid = tg.get(stuck.pid.remote())
    sent: list[tg.ObjectRef] = []
    results: list[object] = []

    def flood():
        for _ in range(40):  # 3.6 MB: far over a socket's buffer
            sent.append(stuck.take.remote(b"y" * 90_000))

    def other_work():
        try:
            results.append(tg.get(double.remote(21), timeout=10))
            results.append(tg.get(free.add.remote("free"), timeout=10))
        except Exception as exc:  # reported below
            results.append(exc)

    flooding = threading.Thread(target=flood)
    working = threading.Thread(target=other_work)
    os.kill(pid, signal.SIGSTOP)
    try:
        flooding.start()
        wait_for(lambda: len(sent) >= 2, what="the flood to start")
        working.start()
        working.join(timeout=15)
        frozen = working.is_alive()
    finally:
        os.kill(pid, signal.SIGCONT)
        for thread in (flooding, working):
            if thread.ident is not None:
                thread.join(timeout=60)
    assert not frozen, "the driver froze behind a stopped actor"
    assert results == [42, 1]
    assert tg.get(sent, timeout=60) == list(range(1, 41))
    del sent[:]
    tg.kill(stuck)
    tg.kill(free)


STOPS_ITSELF = (
    SWITCH_TO_DIRECT
    + """
refs = [a.blob.remote(90_000) for _ in range(40)]  # 3.6 MB of answers
print("sent", flush=True)
os.kill(os.getpid(), 19)  # SIGSTOP: Ctrl-Z, a debugger
"""
)


def test_a_stopped_direct_caller_does_not_freeze_a_shared_actor(fresh_cluster):
    # A driver that stops reading (Ctrl-Z) after a burst of calls with large
    # answers: the actor's answers to it pile up; other callers must still be served.
    log = Log.options(name="shared", namespace="stop").remote()
    switch_to_direct(log)
    driver = another_driver(STOPS_ITSELF.format(name="shared", namespace="stop"))
    try:
        wait_for(
            lambda: psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED,
            timeout=60,
            what="the other driver to stop",
        )
        assert tg.get(log.add.remote("mine"), timeout=10) == 1
        assert tg.get(log.history.remote(), timeout=10) == ["mine"]
    finally:
        driver.kill()
        finish(driver)
    assert tg.get(log.add.remote("after"), timeout=30) == 2
    tg.kill(log)


# -- the actor's process killed while its channel opens --------------------------------------


@pytest.mark.parametrize("point", ["offer sent", "offer and a burst", "open, not switched"])
def test_an_actor_killed_as_its_channel_opens(fresh_cluster, tmp_path, point):
    log = Noted.remote(tmp_path / "pids")
    pid = started(tmp_path / "pids")
    refs = []
    if point == "offer sent":
        refs.append(log.add.remote(0))  # carries the offer: the process opens its channel
    elif point == "offer and a burst":
        refs += [log.add.remote(i) for i in range(30)]
    else:
        tg.get(log.history.remote(), timeout=30)  # the offered call ran: the channel is open
        tg.cluster_resources()  # (a round trip: its answer was taken in)
    os.kill(pid, signal.SIGKILL)
    refs += [log.add.remote(i) for i in range(len(refs), len(refs) + 30)]
    out = outcomes(refs)
    assert "died" in out, out
    first = out.index("died")
    # Calls run in order: those before the kill answered 1, 2, ...; none after a failure.
    assert out[:first] == list(range(1, first + 1)), out
    assert set(out[first:]) == {"died"}, out
    with pytest.raises(ActorDiedError):
        tg.get(log.add.remote("later"), timeout=30)
    assert tg.statistics().direct_actors == 0
    wait_for(lambda: not alive(pid), what="the actor's process to be gone")
    del refs
    wait_settled()


def test_kill_right_after_the_offered_call_then_keep_calling(fresh_cluster):
    # tg.kill forgets the way to the actor while its process may be opening the
    # channel the first call offered; the calls after it must not take that
    # channel, and must fail, never hang.
    for _ in range(4):
        log = Log.remote()
        first = log.add.remote("offered")
        tg.kill(log)
        later = [log.add.remote(i) for i in range(20)]
        out = outcomes([first, *later])
        assert set(out[1:]) == {"died"}, out
        assert out[0] in (1, "died"), out
    assert tg.statistics().direct_actors == 0
    wait_settled()


# -- actors that must never get a channel ------------------------------------------------------


def test_a_restartable_actor_never_gets_a_channel_and_keeps_its_order(fresh_cluster, tmp_path):
    from taskgraph.util.state import cluster_statistics

    path = tmp_path / "pids"
    log = Noted.options(max_restarts=1).remote(path)
    first_pid = started(path)
    direct_before = cluster_statistics()["tasks_finished_by_path"]["actor_direct"]
    # Calls awaited one by one for well over the time a switch takes (offers go
    # out every 0.1 s; the scheduler drops them: the actor may restart).
    deadline = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < deadline or n < 10:
        assert tg.get(log.add.remote(n), timeout=30) == n + 1
        n += 1
    burst = [log.slow.remote(i, 0.02) for i in range(n, n + 100)]  # 2 s of calls
    tg.wait(burst, num_returns=3, timeout=30)
    os.kill(first_pid, signal.SIGKILL)
    second_pid = started(path, 2)
    assert second_pid != first_pid
    after = [log.add.remote(i) for i in range(n + 100, n + 130)]
    out = outcomes(burst)
    # The first process ran a prefix of the burst; the calls it had been handed
    # failed; those still with the scheduler ran on the restarted process, in
    # order, and then the later calls.
    first = out.index("died")
    assert out[:first] == list(range(n + 1, n + 1 + first)), out
    last = max(i for i, o in enumerate(out) if o == "died")
    assert set(out[first : last + 1]) == {"died"}, out
    again = out[last + 1 :]
    assert again == list(range(1, len(again) + 1)), out
    after_values = tg.get(after, timeout=30)
    assert after_values == list(range(len(again) + 1, len(again) + 31)), after_values
    history = tg.get(log.history.remote(), timeout=30)
    assert history == list(range(n + last + 1, n + 130)), (history, out)
    stats = tg.statistics()
    assert stats.direct_actor_calls == 0 and stats.direct_actors == 0, stats
    assert cluster_statistics()["tasks_finished_by_path"]["actor_direct"] == direct_before
    tg.kill(log)
    wait_for(lambda: not alive(second_pid), what="the restarted process to be gone")


@tg.remote(num_cpus=0)
def call_from(actor, tag, n):
    """Call ``actor`` for 1.5 s (offers go out every 0.1 s), then ``n`` times more."""
    switched = reach_directly(actor, timeout=1.5)
    out = [tg.get(actor.add.remote((tag, i)), timeout=30) for i in range(n)]
    return switched, out, tg.statistics().direct_actor_calls, tg.get_runtime_context().get_node_id()


def test_no_channel_crosses_hosts(fresh_cluster):
    from conftest import start_worker, stop_process

    worker = start_worker(
        "--num-cpus", "1", "--resources", '{"far": 2}', env={"TASKGRAPH_HOST_ID": "elsewhere"}
    )
    try:
        wait_for(lambda: len(tg.nodes()) == 2, timeout=60, what="the second worker")
        far_node = next(n["node_id"] for n in tg.nodes() if n["resources"].get("far"))
        near_node = next(n["node_id"] for n in tg.nodes() if n["node_id"] != far_node)
        far = Log.options(resources={"far": 1}).remote()
        near = Log.options(scheduling_strategy=On(near_node)).remote()
        assert tg.get(far.node.remote(), timeout=60) == far_node
        assert tg.get(near.node.remote(), timeout=60) == near_node
        # The driver calls the far actor for well over the time a switch takes.
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:
            assert tg.get(far.add.remote(n), timeout=30) == n + 1
            n += 1
        assert tg.statistics().direct_actor_calls == 0
        # A task on the far host calls an actor on this host: through the scheduler
        # too; one on this host switches (the control).
        on_far = call_from.options(resources={"far": 1})
        switched, out, direct, node = tg.get(on_far.remote(near, "far", 40), timeout=60)
        assert node == far_node
        assert not switched and out == list(range(1, 41)) and direct == 0
        on_near = call_from.options(scheduling_strategy=On(near_node))
        switched, out, direct, node = tg.get(on_near.remote(near, "near", 40), timeout=60)
        assert switched and out == list(range(41, 81)) and direct > 40
        assert tg.statistics().direct_actor_calls == 0
        tg.kill(far)
        tg.kill(near)
    finally:
        stop_process(worker)
    wait_for(lambda: len(tg.nodes()) == 1, timeout=30, what="the second worker to leave")


# -- executors and actors as direct callers ---------------------------------------------------


def in_order_per_caller(history, tags, n) -> None:
    for tag in tags:
        mine = [i for (t, i) in (x for x in history if isinstance(x, tuple)) if t == tag]
        assert mine == list(range(n)), (tag, mine)


def test_tasks_an_actor_and_threads_call_one_actor_directly_at_once(fresh_cluster):
    callee = Log.remote()
    calling = CallerActor.remote()
    caller_pid = tg.get(calling.pid.remote())
    n = 60
    from_tasks = [caller_task.remote(callee, f"task{k}", n) for k in range(2)]
    from_actor = calling.run.remote(callee, "actor", n)
    from_threads: dict[str, object] = {}

    def thread(tag):
        try:
            from_threads[tag] = mixed_calls(callee, tag, n)
        except Exception as exc:  # reported below
            from_threads[tag] = exc

    threads = [threading.Thread(target=thread, args=(f"thread{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    results = [*tg.get(from_tasks, timeout=120), tg.get(from_actor, timeout=120)]
    results += [from_threads[f"thread{k}"] for k in range(2)]
    for result in results:
        assert isinstance(result, tuple), result
        out, all_direct = result
        assert all_direct and len(out) == n and out == sorted(out), result
    history = tg.get(callee.history.remote(), timeout=30)
    tags = ["task0", "task1", "actor", "thread0", "thread1"]
    in_order_per_caller(history, tags, n)
    # The callee dies: each kind of caller's next call fails, none hangs.
    tg.kill(callee)
    assert tg.get(task_calls_after_death.remote(callee), timeout=60) == "died"
    assert tg.get(calling.after_death.remote(callee), timeout=60) == "died"
    assert call_after_death(callee) == "died"
    tg.kill(calling)
    wait_for(lambda: not alive(caller_pid), what="the calling actor's process to exit")
    wait_settled()


def test_an_actor_calls_itself_directly(fresh_cluster):
    me = SelfCaller.remote()
    tg.get(me.adopt.remote(me), timeout=30)
    pid = tg.get(me.pid.remote())
    switched, direct, out = tg.get(me.loop.remote(50), timeout=60)
    assert switched and direct == 50, (switched, direct)
    assert out == sorted(out) and len(out) == 50
    tg.kill(me)
    wait_for(lambda: not alive(pid), what="the actor's process to exit")
    wait_settled()


# -- shutdown with channels open -----------------------------------------------------------------

SHUTS_DOWN_WITH_CHANNELS_OPEN = (
    SWITCH_TO_DIRECT
    + """
import threading

@tg.remote
def sleepy(x, delay):
    time.sleep(delay)
    return x

def taskgraph_threads():
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("taskgraph-"))

def leased():
    while tg.statistics().tasks_leased == 0:
        assert time.monotonic() < deadline, "never leased"
        tg.get(sleepy.remote(0, 0))

deadline = time.monotonic() + 30
leased()
assert tg.statistics().open_leases == 1 and tg.statistics().direct_actors == 1
# In flight as it shuts down: a leased task and direct calls (the actor's 3 s).
running = sleepy.remote("leased", 3)
calls = [a.slow.remote(i, 0.1) for i in range(30)]
assert tg.statistics().tasks_leased == 2, tg.statistics()
began = time.monotonic()
tg.shutdown()
while taskgraph_threads() and time.monotonic() - began < 2:
    time.sleep(0.01)
print("LEFT", time.monotonic() - began, taskgraph_threads(), flush=True)
# Again, on the same cluster: the actor, a lease, and nothing left at the end.
tg.init(os.environ["TASKGRAPH_ADDRESS"])
a = tg.get_actor({name!r}, namespace={namespace!r})
deadline = time.monotonic() + 30
while tg.statistics().direct_actor_calls == 0:
    assert time.monotonic() < deadline, "never went direct again"
    tg.get(a.history.remote())
leased()
assert tg.get(a.add.remote("again")) > 30
tg.shutdown()
began = time.monotonic()
while taskgraph_threads() and time.monotonic() - began < 2:
    time.sleep(0.01)
print("LEFT AGAIN", taskgraph_threads(), flush=True)
"""
)


def test_a_connected_driver_shuts_down_with_channels_busy_then_connects_again(
    monkeypatch, fresh_cluster
):
    log = Log.options(name="busy", namespace="shut").remote()
    switch_to_direct(log)
    monkeypatch.setenv("TASKGRAPH_LEASE_IDLE", "60")  # (read by executors as they start)
    driver = another_driver(SHUTS_DOWN_WITH_CHANNELS_OPEN.format(name="busy", namespace="shut"))
    code, out, err = finish(driver, timeout=90)
    assert code == 0, err
    left = next(line for line in out.splitlines() if line.startswith("LEFT "))
    assert left.endswith("[]"), f"threads still running after tg.shutdown(): {left}"
    assert "LEFT AGAIN []" in out, out
    history = tg.get(log.history.remote(), timeout=30)
    assert "again" in history
    tg.kill(log)
    wait_settled()


LEASES_THEN_STOPS = """
import os, time
import taskgraph as tg

@tg.remote
def same(x):
    return x

deadline = time.monotonic() + 30
while tg.statistics().tasks_leased == 0:
    assert time.monotonic() < deadline, "never leased"
    tg.get(same.remote(1))
print("leased", flush=True)
os.kill(os.getpid(), 19)  # SIGSTOP: Ctrl-Z
"""


@pytest.mark.parametrize("fresh_cluster", [{"num_cpus": 1}], indirect=True)
def test_a_stopped_driver_does_not_keep_its_leased_cpu(fresh_cluster):
    # Its lease ends (idle, or revoked for the task below), but the driver cannot
    # close its side: the CPU must not stay with it.
    driver = another_driver(LEASES_THEN_STOPS)
    try:
        wait_for(
            lambda: psutil.Process(driver.pid).status() == psutil.STATUS_STOPPED,
            timeout=60,
            what="the other driver to lease, then stop",
        )
        assert tg.get(double.remote(4), timeout=10) == 8
    finally:
        driver.kill()
        finish(driver)


DIES_AS_ITS_CHANNEL_OPENS = """
import os, signal
import taskgraph as tg
a = tg.get_actor({name!r}, namespace={namespace!r})
if {answered}:
    tg.get(a.history.remote())  # the offered call: its channel is open, or opening
refs = [a.add.remote(("gone{k}", i)) for i in range(30)]
tg.cluster_resources()  # (a round trip: the calls left before it)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("answered", [False, True], ids=["offer-in-flight", "channel-open"])
def test_a_driver_killed_as_its_channel_opens(fresh_cluster, answered):
    log = Log.options(name="opening", namespace="die").remote()
    switch_to_direct(log)
    for k in range(3):
        script = DIES_AS_ITS_CHANNEL_OPENS.format(
            name="opening", namespace="die", answered=answered, k=k
        )
        code, _, err = finish(another_driver(script))
        assert code == -signal.SIGKILL, err
        # The actor goes on serving this driver, directly (the dead one's calls
        # that it got may still run, between these).
        before = tg.statistics().direct_actor_calls
        out = tg.get([log.add.remote((f"mine{k}", i)) for i in range(20)], timeout=30)
        assert out == sorted(set(out)), out
        assert tg.statistics().direct_actor_calls == before + 20
    history = [x for x in tg.get(log.history.remote(), timeout=30) if isinstance(x, tuple)]
    for k in range(3):
        assert [i for (who, i) in history if who == f"mine{k}"] == list(range(20)), history
        # The dead driver's calls that ran, ran in its order: a prefix of its 30.
        gone = [i for (who, i) in history if who == f"gone{k}"]
        assert gone == list(range(len(gone))), history
    wait_settled()
    tg.kill(log)
