"""The core API's contract on a real two-CPU local cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import threading
import time

import numpy as np
import pytest

import taskgraph as tg
from conftest import wait_for
from taskgraph.exceptions import (
    GetTimeoutError,
    SerializationError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote
def add(a, b=0):
    return a + b


@tg.remote
def echo(x):
    return x


@tg.remote
def sleep_for(seconds):
    time.sleep(seconds)
    return os.getpid()


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


@tg.remote
def fail(kind):
    if kind == "value":
        raise ValueError("bad value")
    raise CustomError(7, "custom")


# -- calling -------------------------------------------------------------------


def test_direct_call_raises_type_error():
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)


def test_wrong_argument_count_fails_in_the_caller():
    with pytest.raises(TypeError, match="wrong arguments for task 'add'"):
        add.remote(1, 2, 3)
    with pytest.raises(TypeError):
        add.remote(c=1)


def test_bad_options_fail_in_the_caller():
    with pytest.raises(ValueError, match="unknown option"):
        add.options(num_cpu=1)
    with pytest.raises(ValueError, match="num_cpus"):
        tg.remote(num_cpus=-1)(lambda: 1)
    with pytest.raises(ValueError, match="num_cpus"):
        add.options(resources={"CPU": 1})
    with pytest.raises(TypeError):
        tg.remote(1, 2)
    with pytest.raises(ValueError, match="num_returns"):
        add.options(num_returns=-1)


def test_kwargs_and_options():
    assert tg.get(add.remote(1, b=2)) == 3
    assert tg.get(add.options(num_cpus=0.5, name="renamed").remote(2, 3)) == 5


def test_num_returns():
    @tg.remote(num_returns=3)
    def three():
        return 1, 2, 3

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert tg.get(refs) == [1, 2, 3]
    a, b = echo.options(num_returns=2).remote((4, 5))
    assert tg.get([a, b]) == [4, 5]


def test_num_returns_mismatch_is_a_task_error():
    bad = echo.options(num_returns=2).remote(5)
    with pytest.raises(TaskError, match="num_returns=2"):
        tg.get(bad[0])


# -- values and refs -----------------------------------------------------------


def test_top_level_refs_arrive_as_values_nested_as_refs():
    @tg.remote
    def inspect_args(top, nested):
        return type(top).__name__, type(nested[0]).__name__, tg.get(nested[0])

    r = tg.put(41)
    assert tg.get(inspect_args.remote(r, [r])) == ("int", "ObjectRef", 41)


def test_refs_returned_from_tasks_and_passed_on():
    @tg.remote
    def make():
        return echo.remote(9)

    inner = tg.get(make.remote())
    assert isinstance(inner, tg.ObjectRef)
    assert tg.get(echo.remote(inner)) == 9
    assert tg.get(inner) == 9


def test_object_ref_protocol():
    ref = add.remote(20, 22)
    assert ref.hex() in repr(ref)
    assert hash(ref) == hash(ref)
    assert {ref: 1}[ref] == 1
    assert ref.result(timeout=30) == 42
    assert ref.done()
    assert ref.future().result(timeout=30) == 42

    async def awaiting():
        return await add.remote(1, 1)

    assert asyncio.run(awaiting()) == 2


def test_pickled_ref_is_the_same_ref():
    ref = tg.put("payload")
    clone = pickle.loads(pickle.dumps(ref))
    assert clone == ref
    assert tg.get(clone) == "payload"


def test_get_keeps_order_and_duplicates():
    refs = [add.remote(i) for i in range(20)]
    assert tg.get(refs + refs[:3]) == [*list(range(20)), 0, 1, 2]


def test_get_argument_checks():
    ref = tg.put(1)
    with pytest.raises(ValueError):
        tg.get((ref,))
    with pytest.raises(ValueError):
        tg.get(5)
    with pytest.raises(TypeError):
        tg.get([ref, 5])


def test_get_timeout():
    ref = sleep_for.remote(1.0)
    with pytest.raises(GetTimeoutError) as info:
        tg.get(ref, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(tg.get(ref, timeout=30), int)


def test_get_timeout_counts_only_the_objects_not_ready():
    ready = [tg.put(i) for i in range(3)]
    slow = sleep_for.remote(1.0)
    with pytest.raises(GetTimeoutError, match="with 1 object") as info:
        tg.get([*ready, slow], timeout=0.05)
    assert info.value.pending == 1
    tg.get(slow, timeout=30)


def test_put_semantics():
    ref = tg.put({"a": [1, 2]})
    assert tg.get(ref) == {"a": [1, 2]}
    with pytest.raises(TypeError, match="put"):
        tg.put(ref)


def test_large_array_round_trip_is_read_only_shared_memory():
    array = np.random.default_rng(0).random(500_000)  # 4 MB: above the inline limit
    ref = tg.put(array)
    back = tg.get(ref)
    assert np.array_equal(back, array)
    assert not back.flags.writeable

    @tg.remote
    def double(a):
        return a * 2

    doubled = tg.get(double.remote(ref))
    assert np.array_equal(doubled, array * 2)


def test_unpicklable_argument_fails_in_the_caller():
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="arguments of task 'echo'") as info:
        echo.remote(lock)
    assert isinstance(info.value, TypeError)


def test_unpicklable_return_value_is_a_task_error():
    @tg.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(TaskError, match="return value of task"):
        tg.get(make_lock.remote())


# -- errors --------------------------------------------------------------------


def test_task_error_is_also_the_original_class():
    with pytest.raises(ValueError, match="bad value") as info:
        tg.get(fail.remote("value"))
    err = info.value
    assert isinstance(err, TaskError)
    text = str(err)
    assert "fail" in text and "Traceback" in text


def test_custom_exception_defined_in_the_test_module():
    with pytest.raises(TaskError) as info:
        tg.get(fail.remote("custom"))
    assert "code 7: custom" in str(info.value)
    assert type(info.value).__name__.endswith("(CustomError)")


def test_errors_propagate_through_dependents():
    first = fail.remote("value")
    second = add.remote(first, 1)
    third = add.remote(second, 1)
    with pytest.raises(ValueError, match="bad value"):
        tg.get(third)


# -- wait / as_completed ------------------------------------------------------


def test_wait_argument_checks():
    r = tg.put(1)
    with pytest.raises(TypeError):
        tg.wait(r)
    with pytest.raises(ValueError, match="unique"):
        tg.wait([r, r])
    with pytest.raises(ValueError, match="greater"):
        tg.wait([r], num_returns=2)
    with pytest.raises(ValueError):
        tg.wait([r], num_returns=0)
    with pytest.raises(ValueError):
        tg.wait([r], timeout=-1)


def test_wait_keeps_input_order_and_honours_timeout():
    slow = sleep_for.remote(1.0)
    fast = [add.remote(i) for i in range(3)]
    refs = [fast[0], slow, fast[1], fast[2]]
    ready, not_ready = tg.wait(refs, num_returns=3, timeout=30)
    assert ready == [fast[0], fast[1], fast[2]]
    assert not_ready == [slow]
    ready, not_ready = tg.wait([slow], timeout=0.01)
    assert (ready, not_ready) == ([], [slow])
    ready, not_ready = tg.wait(refs, num_returns=4)
    assert ready == refs and not_ready == []


def test_as_completed_yields_in_finishing_order():
    refs = [sleep_then_value.remote(d, i) for i, d in enumerate([0.5, 0.0, 0.25])]
    assert [tg.get(r) for r in tg.as_completed(refs)] == [1, 2, 0]


@tg.remote
def sleep_then_value(seconds, value):
    time.sleep(seconds)
    return value


# -- cancel ---------------------------------------------------------------------


def test_cancel_queued_task():
    blockers = [sleep_for.remote(0.5) for _ in range(2)]
    queued = add.remote(1)
    tg.cancel(queued)
    with pytest.raises(TaskCancelledError):
        tg.get(queued)
    tg.get(blockers)


def test_cancel_running_task_interrupts_it():
    ref = sleep_for.remote(30)
    wait_until_running()
    tg.cancel(ref)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=10)
    assert tg.get(add.remote(1, 1), timeout=30) == 2


def test_force_cancel_kills_the_executor():
    @tg.remote
    def stubborn():
        while True:
            try:
                time.sleep(0.05)
            except BaseException:
                pass

    ref = stubborn.remote()
    wait_until_running()
    tg.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        tg.get(ref, timeout=10)
    assert tg.get(add.remote(2, 2), timeout=30) == 4


def wait_until_running():
    deadline = time.monotonic() + 15
    while tg.available_resources().get("CPU", 0) >= 2:
        assert time.monotonic() < deadline, "task never started"
        time.sleep(0.01)


# -- parallelism, retries --------------------------------------------------------


def test_two_sleeping_tasks_run_in_parallel_in_other_processes():
    start = time.perf_counter()
    pids = tg.get([sleep_for.remote(1.0), sleep_for.remote(1.0)])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.8, f"two 1 s tasks took {elapsed:.2f} s on 2 CPUs"
    assert len(set(pids)) == 2
    assert os.getpid() not in pids


def test_crashed_task_is_retried(tmp_path):
    marker = tmp_path / "crashed-once"

    @tg.remote(max_retries=1)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(3)
        return "second try"

    assert tg.get(crash_once.remote(str(marker)), timeout=60) == "second try"


def test_crash_without_retries_raises_worker_crashed():
    @tg.remote(max_retries=0)
    def crash():
        os._exit(5)

    with pytest.raises(WorkerCrashedError, match="exit code 5"):
        tg.get(crash.remote(), timeout=60)


def test_retry_exceptions(tmp_path):
    marker = tmp_path / "failed-once"

    @tg.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first attempt fails")
        return "ok"

    assert tg.get(flaky.remote(str(marker)), timeout=60) == "ok"


# -- futures, DAGs, context --------------------------------------------------------


def test_executor_runs_concurrent_futures_code():
    with tg.Executor() as pool:
        futures = [pool.submit(pow, 2, i) for i in range(10)]
        assert [f.result(timeout=30) for f in futures] == [2**i for i in range(10)]
        assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
        done, _ = concurrent.futures.wait(futures)
        assert len(done) == 10
    with pytest.raises(RuntimeError):
        pool.submit(abs, 1)


def test_bind_builds_a_dag_and_execute_submits_it():
    a = add.bind(1, 2)
    b = add.bind(a, 10)
    c = add.bind(a, b)
    assert tg.get(c.execute()) == 3 + 13


def test_runtime_context_and_cluster_info():
    @tg.remote(num_cpus=0.5)
    def context():
        ctx = tg.get_runtime_context()
        return (
            ctx.get_task_id(),
            ctx.get_node_id(),
            ctx.get_worker_id(),
            ctx.get_assigned_resources(),
        )

    task_id, node_id, worker_id, resources = tg.get(context.remote())
    assert task_id and worker_id.startswith(node_id)
    assert resources == {"CPU": 0.5}
    nodes = tg.nodes()
    assert [n["node_id"] for n in nodes] == [node_id]
    assert tg.cluster_resources()["CPU"] == 2
    # The result may reach us (from the executor) a moment before the
    # scheduler hears the task ended and counts its CPU free again.
    wait_for(lambda: tg.available_resources()["CPU"] == 2, what="the task's CPU to be free")
    assert tg.get_runtime_context().get_task_id() is None
    assert tg.get_gpu_ids() == []


def test_a_future_callback_that_would_wait_for_a_value_gets_a_clear_error():
    @tg.remote
    def inc(x, delay=0.0):
        time.sleep(delay)  # still running when the callback is added
        return x + 1

    seen = []
    done = threading.Event()

    def callback(fut):
        try:
            seen.append(tg.get(inc.remote(fut.result())))  # would wait on its own thread
        except RuntimeError as exc:
            seen.append(str(exc))
        try:
            seen.append(tg.get(ref))  # already here: no wait, fine
        finally:
            done.set()

    ref = inc.remote(1, 0.5)
    ref.future().add_done_callback(callback)
    assert done.wait(30)
    assert "callback" in seen[0] and seen[1] == 2


def test_a_batch_of_puts_larger_than_a_read_buffer_arrives():
    # Queued while the client's lock is held, the puts leave in one frame of
    # ~117 MB: more than a Tornado stream reads at once (100 MB by default).
    client = tg._api.client()
    value = b"x" * 90_000
    with client._lock:
        refs = [tg.put(value) for _ in range(1300)]
    assert tg.get(refs[-1], timeout=60) == value
    assert tg.get(refs[0], timeout=60) == value
    del refs
