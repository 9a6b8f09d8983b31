"""What each benchmark measures, at what size, in which group, against whom.

Only descriptions live here; the workload code lives with each system
(``_raylike`` for taskgraph and Ray, ``_dask``, ``_limit``). Names and sizes
follow ``ray microbenchmark`` (``ray/_private/ray_perf.py``) where it has the
workload, so numbers can be read next to Ray's published ones.

A *group* is the unit of cluster life: one cluster per (group, system), started
before its first benchmark and stopped after its last, in a process of its own.
The ``startup`` group starts a fresh cluster for every sample instead, and the
``transfer`` group's taskgraph and Ray clusters have two nodes acting as two
hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["rate", "job", "sample"]

PEERS = ("ray", "dask")
SYSTEMS = ("taskgraph", *PEERS, "limit")


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Benchmark:
    """A workload, run on every system that has it.

    ``kind``: "rate" repeats a short iteration for a fixed time per repetition
    and reports work per second; "job" times one long run per repetition (after
    a warm-up at a smaller size); "sample" reports what each repetition
    measured (one value per row).
    """

    key: str
    group: str
    rows: tuple[Row, ...]
    full: int
    quick: int
    kind: Kind = "rate"
    peers: tuple[str, ...] = PEERS
    limit: bool = False  # the "limit" system has a physical-limit version
    why_no_peer: str = ""
    timeout: float | None = None  # seconds per system in a full run, if not the kind's default

    def size(self, quick: bool) -> int:
        return self.quick if quick else self.full


def _one(key: str, label: str, unit: str, higher_is_better: bool = True) -> tuple[Row, ...]:
    return (Row(key, label, unit, higher_is_better),)


_GRAPH_PEERS_NOTE = (
    "not run: Dask is the peer for graph workloads, and Ray at ~2k tasks/s would add "
    "minutes (pass --graph-vs-ray to include it)"
)
_BIG = 100 * 1024 * 1024  # int64 elements: 800 MiB, ray_perf's "gigabytes" array
_GIB = 128 * 1024 * 1024  # int64 elements: 1 GiB

BENCHMARKS: tuple[Benchmark, ...] = (
    # -- tasks ---------------------------------------------------------------
    Benchmark(
        "tasks_sync",
        "tasks",
        _one("tasks_sync", "single client tasks sync", "tasks/s"),
        full=1,
        quick=1,
        limit=True,
    ),
    Benchmark(
        "tasks_async",
        "tasks",
        _one("tasks_async", "single client tasks async", "tasks/s"),
        full=1000,
        quick=1000,
        limit=True,
    ),
    Benchmark(
        "tasks_and_get_batch",
        "tasks",
        _one("tasks_and_get_batch", "single client tasks and get batch", "batches/s"),
        full=1000,
        quick=1000,
        limit=True,
    ),
    Benchmark(
        # ray_perf's 4 client actors, each submitting n tasks and getting them; the
        # driver gets from all 4. ray_perf's n is 10,000: 40k tasks a run would take
        # Ray ~20 s and Dask over a minute per run here, so n is 1,000.
        "multi_tasks_async",
        "tasks",
        _one("multi_tasks_async", "multi client tasks async", "tasks/s"),
        full=1000,
        quick=250,
        timeout=180.0,  # Dask: ~10 s a run, at least 7 runs
    ),
    Benchmark(
        "wait_1k",
        "tasks",
        _one("wait_1k", "single client wait 1k refs", "rounds/s"),
        full=1000,
        quick=1000,
    ),
    # -- small objects ---------------------------------------------------------
    Benchmark(
        "get_small",
        "objects",
        _one("get_small", "single client get calls", "calls/s"),
        full=1,
        quick=1,
    ),
    Benchmark(
        "put_small",
        "objects",
        _one("put_small", "single client put calls", "calls/s"),
        full=1,
        quick=1,
    ),
    Benchmark(
        # ray_perf's 10 tasks, each making n puts of a small value; counted per put.
        "multi_put_small",
        "objects",
        _one("multi_put_small", "multi client put calls", "calls/s"),
        full=100,
        quick=100,
    ),
    Benchmark(
        "put_get_small",
        "objects",
        _one("put_get_small", "single client get(put(x)) round trips", "calls/s"),
        full=1,
        quick=1,
    ),
    Benchmark(
        "get_10k_refs",
        "objects",
        _one("get_10k_refs", "single client get object containing 10k refs", "calls/s"),
        full=10_000,
        quick=10_000,
        peers=("ray",),
        why_no_peer="not run: Dask has no object that holds futures the way a Ray object holds refs",
    ),
    # -- large objects -----------------------------------------------------------
    Benchmark(
        "put_gigabytes",
        "large",
        _one("put_gigabytes", "single client put gigabytes (800 MiB array)", "GB/s"),
        full=_BIG,
        quick=_BIG // 8,
        limit=True,
    ),
    Benchmark(
        # ray_perf's 10 tasks, each putting an 80 MiB int64 array 10 times: 8,000 MiB
        # a run. Each task makes its array once (pages touched), so only puts are timed.
        "multi_put_gigabytes",
        "large",
        _one("multi_put_gigabytes", "multi client put gigabytes", "GB/s"),
        full=_BIG // 10,
        quick=_BIG // 80,
    ),
    Benchmark(
        "get_large",
        "large",
        _one("get_large", "single client get 800 MiB array", "GB/s"),
        full=_BIG,
        quick=_BIG // 8,
    ),
    # -- between two hosts (two nodes on this machine that share no memory) -------------
    Benchmark(
        # An array made on one node, pulled by a task pinned to the other; the
        # pull is timed, not the making.
        "transfer_gigabytes",
        "transfer",
        _one("transfer_gigabytes", "transfer 800 MiB between two worker daemons", "GB/s"),
        full=_BIG,
        quick=_BIG // 8,
        kind="job",
        limit=True,
    ),
    Benchmark(
        # 8 map tasks (4 per node) each cut a block of 1/8 of the array into 8
        # partitions; 8 reduce tasks (4 per node) each join one partition from
        # every map task. Counted as the array's bytes over the whole shuffle's time.
        "shuffle_1gb",
        "transfer",
        _one("shuffle_1gb", "1 GiB array shuffle between two worker daemons", "GB/s"),
        full=_GIB,
        quick=_GIB // 8,
        kind="job",
    ),
    # -- cluster start -------------------------------------------------------------
    Benchmark(
        "startup",
        "startup",
        (
            Row("init", "init() to first result", "s", higher_is_better=False),
            Row("idle_memory", "idle cluster memory (sum of PSS)", "MiB", higher_is_better=False),
        ),
        full=1,
        quick=1,
        kind="sample",
    ),
    # -- actors: @remote(num_cpus=0) classes, as ray_perf's ----------------------------
    Benchmark(
        "actor_sync",
        "actors",
        _one("actor_sync", "1:1 actor calls sync", "calls/s"),
        full=1,
        quick=1,
    ),
    Benchmark(
        "actor_async",
        "actors",
        _one("actor_async", "1:1 actor calls async", "calls/s"),
        full=1000,
        quick=1000,
    ),
    Benchmark(
        "actor_concurrent",
        "actors",
        _one("actor_concurrent", "1:1 actor calls concurrent", "calls/s"),
        full=1000,
        quick=1000,
        peers=("ray",),
        why_no_peer=(
            "not run: a Dask actor runs its (non-async) methods one at a time, on its "
            "worker's single actor thread; it has no max_concurrency"
        ),
    ),
    Benchmark(
        # Not a ray_perf row: ray_perf passes arguments only to async actors (below).
        "actor_args_async",
        "actors",
        _one("actor_args_async", "1:1 actor calls with args async", "calls/s"),
        full=1000,
        quick=1000,
    ),
    Benchmark(
        # One client actor calls each of 2 server actors n times and gets the results.
        "actor_1_n",
        "actors",
        _one("actor_1_n", "1:n actor calls async", "calls/s"),
        full=5000,
        quick=500,
        timeout=150.0,  # 10,000 calls a run: up to ~9 s for Ray and Dask here
    ),
    Benchmark(
        "async_actor_sync",
        "actors",
        _one("async_actor_sync", "1:1 async-actor calls sync", "calls/s"),
        full=1,
        quick=1,
    ),
    Benchmark(
        "async_actor_async",
        "actors",
        _one("async_actor_async", "1:1 async-actor calls async", "calls/s"),
        full=1000,
        quick=1000,
    ),
    Benchmark(
        "async_actor_args",
        "actors",
        _one("async_actor_args", "1:1 async-actor calls with args async", "calls/s"),
        full=1000,
        quick=1000,
    ),
    Benchmark(
        "async_actor_1_n",
        "actors",
        _one("async_actor_1_n", "1:n async-actor calls async", "calls/s"),
        full=5000,
        quick=500,
        timeout=150.0,  # 10,000 calls a run: up to ~9 s for Ray and Dask here
    ),
    Benchmark(
        # ray_perf's Client pattern: 2 client actors each call each of 2 server actors
        # n times and get the results; the driver waits for both clients. Counted per call.
        "actor_n_n",
        "actors",
        _one("actor_n_n", "n:n actor calls async", "calls/s"),
        full=500,
        quick=250,
    ),
    Benchmark(
        # As ray_perf: 2 pairs of a client actor and its own server; each client
        # puts 0 and passes the ref in n calls. Dask passes the value (see _engine).
        "actor_n_n_arg",
        "actors",
        _one("actor_n_n_arg", "n:n actor calls with arg async", "calls/s"),
        full=1000,
        quick=250,
    ),
    Benchmark(
        # actor_n_n's shape with async-actor servers.
        "async_actor_n_n",
        "actors",
        _one("async_actor_n_n", "n:n async-actor calls async", "calls/s"),
        full=500,
        quick=250,
    ),
    # -- graphs: Dask's home ground ---------------------------------------------------
    Benchmark(
        "tree",
        "graph",
        _one("tree", "tree reduction, 2^17 leaves (131k tasks)", "tasks/s"),
        full=2**17,
        quick=2**12,
        kind="job",
        peers=("dask",),
        why_no_peer=_GRAPH_PEERS_NOTE,
        timeout=240.0,
    ),
    Benchmark(
        "map",
        "graph",
        _one("map", "map over 100k small items", "tasks/s"),
        full=100_000,
        quick=4_000,
        kind="job",
        peers=("dask",),
        limit=True,
        why_no_peer=_GRAPH_PEERS_NOTE,
        # Dask needs minutes for 100k tiny tasks here; a timeout still bounds its rate.
        timeout=90.0,
    ),
)

GROUP_ORDER = ("tasks", "objects", "large", "transfer", "startup", "actors", "graph")
PER_SAMPLE_CLUSTER = frozenset({"startup"})
TWO_HOST_GROUPS = frozenset({"transfer"})
BY_KEY = {b.key: b for b in BENCHMARKS}
ROWS = {row.key: row for b in BENCHMARKS for row in b.rows}


def select(names: str | None) -> list[Benchmark]:
    """Benchmarks named by ``--only`` (a benchmark key or one of its rows' keys)."""
    if not names:
        return list(BENCHMARKS)
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - set(BY_KEY) - set(ROWS)
    if unknown:
        valid = ", ".join(sorted(set(BY_KEY) | set(ROWS)))
        raise ValueError(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {valid}")
    return [b for b in BENCHMARKS if b.key in wanted or any(r.key in wanted for r in b.rows)]


ABSOLUTE = "absolute"


@dataclass(frozen=True)
class Target:
    """A goal from an issue: taskgraph is ``factor`` times better than ``against``.

    With ``against=ABSOLUTE``, taskgraph's median must reach ``factor`` in the
    row's own unit instead.
    """

    row: str
    against: str
    factor: float
    text: str


TARGETS: tuple[Target, ...] = (
    Target("tasks_async", "ray", 5.0, "tasks async >= 5x Ray"),
    Target("tasks_async", "dask", 20.0, "tasks async >= 20x Dask"),
    Target("tasks_sync", "ray", 4.0, "tasks sync >= 4x Ray"),
    Target("put_small", "ray", 3.0, "small put >= 3x Ray"),
    Target("get_small", "ray", 1.0, "small get >= Ray"),
    Target("tree", "dask", 10.0, "100k-task tree >= 10x Dask"),
    Target("init", "ray", 4.0, "init() to first result >= 4x faster than Ray"),
    Target("put_gigabytes", "limit", 0.9, "put GB/s >= 90% of memcpy"),
    Target("transfer_gigabytes", ABSOLUTE, 1.0, "transfer >= 1 GB/s on loopback (issue 3)"),
    Target("actor_sync", "ray", 3.0, "1:1 actor calls sync >= 3x Ray"),
    Target("actor_async", "ray", 3.0, "1:1 actor calls async >= 3x Ray"),
    Target("async_actor_async", "ray", 3.0, "1:1 async-actor calls async >= 3x Ray (issue 4)"),
    Target("actor_n_n", "ray", 3.0, "n:n actor calls async >= 3x Ray (issue 4)"),
)
