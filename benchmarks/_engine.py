"""What every system's adapter provides, and helpers they share.

An engine starts and stops one system's cluster and turns a benchmark key and
size into a ``Workload``: one iteration to time and how much work it does. It
raises ``Unsupported`` (with a reason for the table's notes) for a workload
the system does not have.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import psutil

NUM_CPUS = 2
MIB = 1024 * 1024
# "n:n actor calls async": N_CLIENTS client actors each call each of N_SERVERS server actors.
# "1:n actor calls async": one client actor calls each of N_SERVERS server actors.
# "n:n actor calls with arg async": N_SERVERS pairs of one client and its own server.
# (ray_perf uses cpu_count // 2 servers: one on this 2-core machine, which would make
# 1:n a 1:1 row; two keep it 1:n on any machine.)
N_CLIENTS = 2
N_SERVERS = 2
# "multi client tasks async": this many client actors each submit a batch of tasks
# and get them (ray_perf's 4).
N_TASK_CLIENTS = 4
# "multi client put calls" / "gigabytes": this many tasks each put small values, or
# LARGE_PUTS times one array (ray_perf's 10 tasks of 10 puts).
N_PUT_TASKS = 10
LARGE_PUTS = 10
# The transfer group's clusters have two nodes acting as two hosts; the second
# one offers this custom resource, and tasks are pinned to one or the other.
FAR = "far"
# "1 GiB shuffle": SHUFFLE_TASKS map tasks each cut their block into
# SHUFFLE_TASKS partitions, and SHUFFLE_TASKS reduce tasks each join one
# partition from every map task. Half of each kind runs on each node.
SHUFFLE_TASKS = 8


class Unsupported(Exception):
    """This system has no version of the workload; the message says why."""


@dataclass
class Workload:
    run: Callable[[], object]
    ops: float  # units of the row's measure done by one run (tasks, calls, GB)
    # "job" benchmarks only: untimed work before each run, such as making the
    # object that the timed run then moves.
    prepare: Callable[[], object] | None = None


class Engine(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def workload(self, key: str, n: int) -> Workload: ...

    def cold_start(self, settle: float) -> dict[str, float]: ...


# -- the functions tasks run: module-level, pickled by value ----------------------


def small_value() -> bytes:
    return b"ok"


def inc(x: int) -> int:
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def objects_containing_refs(api_module: str, n: int) -> list[Any]:
    import importlib

    api = importlib.import_module(api_module)
    return [api.put(1) for _ in range(n)]


def node_id(api_module: str) -> str:
    """The node this task runs on (taskgraph or Ray)."""
    import importlib

    api = importlib.import_module(api_module)
    return str(api.get_runtime_context().get_node_id())


def nbytes_of(array: np.ndarray) -> int:
    return int(array.nbytes)


def shuffle_map(n: int, parts: int) -> list[np.ndarray]:
    """A block of ``n`` int64s (pages touched), cut into ``parts`` partitions."""
    return np.array_split(big_array(n), parts)


def shuffle_reduce(*parts: np.ndarray) -> int:
    """Join one partition from every map task; the size of the result."""
    return int(np.concatenate(parts).nbytes)


def _put_function(api_module: str) -> Callable[[Any], Any]:
    """``put`` as seen from inside a task or an actor: Dask's is ``scatter``."""
    import importlib

    if api_module == "dask":
        from distributed import get_client

        client = get_client()
        return lambda value: client.scatter(value, hash=False)
    return importlib.import_module(api_module).put


def put_small_batch(api_module: str, n: int) -> int:
    """One client of "multi client put calls": ``n`` puts of a small value."""
    put = _put_function(api_module)
    for _ in range(n):
        put(0)
    return n


def put_large_batch(api_module: str, n: int, count: int) -> int:
    """One client of "multi client put gigabytes": ``count`` puts of an array of ``n`` int64s.

    The array is made once (pages touched) so only the puts are timed, as in
    "single client put gigabytes".
    """
    array = big_array(n)
    put = _put_function(api_module)
    for _ in range(count):
        put(array)
    return count * int(array.nbytes)


class Actor:
    def small_value(self) -> bytes:
        return b"ok"

    def small_value_arg(self, x: Any) -> bytes:
        return b"ok"


class AsyncActor:
    """ray_perf's ``AsyncActor``: an ``async def`` method makes it an async actor."""

    async def small_value(self) -> bytes:
        return b"ok"

    async def small_value_with_arg(self, x: Any) -> bytes:
        return b"ok"


class TaskClient:
    """One client of "multi client tasks async": an actor that submits tasks and gets them."""

    def __init__(self, api_module: str) -> None:
        self.api_module = api_module
        self.remote_small_value: Any = None

    def small_value_batch(self, n: int) -> int:
        if self.api_module == "dask":
            from distributed import get_client

            client = get_client()
            client.gather([client.submit(small_value, pure=False) for _ in range(n)])
            return n
        import importlib

        api = importlib.import_module(self.api_module)
        if self.remote_small_value is None:
            self.remote_small_value = api.remote(small_value)
        f = self.remote_small_value
        return len(api.get([f.remote() for _ in range(n)]))


class ActorClient:
    """ray_perf's ``Client``: an actor that calls its server actors and waits for them.

    ``api_module`` is "taskgraph" or "ray" (``get`` on the list of refs) or
    "dask" (``result()`` on each ActorFuture, as a Dask user waits for them).
    """

    def __init__(self, api_module: str, servers: list[Any]) -> None:
        self.api_module = api_module
        self.servers = servers

    def small_value_batch(self, n: int) -> int:
        if self.api_module == "dask":
            calls = [s.small_value() for s in self.servers for _ in range(n)]
            for call in calls:
                call.result()
        else:
            import importlib

            api = importlib.import_module(self.api_module)
            refs = [s.small_value.remote() for s in self.servers for _ in range(n)]
            api.get(refs)
            return len(refs)
        return len(calls)

    def small_value_batch_arg(self, n: int) -> int:
        """``n`` calls to each server, each passing an argument.

        taskgraph and Ray pass a ref to ``put(0)``, which the server receives
        resolved. Dask passes the value 0: a Dask actor's method receives
        futures as futures, unresolved.
        """
        if self.api_module == "dask":
            calls = [s.small_value_arg(0) for s in self.servers for _ in range(n)]
            for call in calls:
                call.result()
            return len(calls)
        import importlib

        api = importlib.import_module(self.api_module)
        x = api.put(0)
        refs = [s.small_value_arg.remote(x) for s in self.servers for _ in range(n)]
        api.get(refs)
        return len(refs)


# -- shared helpers ------------------------------------------------------------------


def big_array(n: int) -> np.ndarray:
    """``n`` int64s with every page touched (np.zeros would map the zero page)."""
    return np.ones(n, dtype=np.int64)


def check_bytes(got: int, expected: int) -> None:
    if got != expected:
        raise AssertionError(f"the tasks saw {got} bytes, not {expected}")


def tree_layers(n: int, add_node: Callable[[Any, Any], Any]) -> Any:
    """Sum ``range(n)`` pairwise (n a power of two): n - 1 calls of ``add_node``."""
    layer: list[Any] = list(range(n))
    while len(layer) > 1:
        layer = [add_node(layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
    return layer[0]


def check_tree(total: int, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise AssertionError(f"tree reduction of range({n}) gave {total}, not {n * (n - 1) // 2}")


def cluster_memory_mib() -> float:
    """Sum of PSS (RSS where PSS is unreadable) of this process's descendants."""
    total = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            try:
                total += proc.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return total / MIB


def wait_for_descendants_to_exit(timeout: float = 20.0) -> list[str]:
    """After a cluster's shutdown: wait for its processes; kill and name stragglers."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in psutil.Process().children(recursive=True) if _cluster_process(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    named = []
    for proc in alive:
        try:
            named.append(f"pid {proc.pid} ({' '.join(proc.cmdline()[:4])})")
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return named


def _cluster_process(proc: psutil.Process) -> bool:
    # multiprocessing's resource tracker (Dask's spawned workers start one) lives
    # as long as this process, by design; it is not part of any cluster.
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not any("resource_tracker" in part for part in proc.cmdline())
    except psutil.Error:
        return False
