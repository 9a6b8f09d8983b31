"""taskgraph and Ray: one adapter, since they share an API.

The only differences are the module imported, how functions reach the
workers (both pickle the benchmark's functions by value, so the workers need
not import this package) and, for the transfer group, how a cluster of two
hosts is made on one machine:

- taskgraph: ``init(num_cpus=1)`` plus a second worker daemon with
  ``TASKGRAPH_HOST_ID`` set, so it cannot share /dev/shm with the first and
  objects move between them over TCP, as between real hosts.
- Ray: ``ray.cluster_utils.Cluster``, a head node and a second node, each
  with its own raylet and object store; objects move between them over TCP.

Either way each node has one CPU (two in all, as in the other groups) and the
second offers the custom resource ``_engine.FAR``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import _engine
from benchmarks._engine import NUM_CPUS, Unsupported, Workload


class RayLikeEngine:
    def __init__(self, name: str, two_hosts: bool = False) -> None:
        self.name = name
        self.two_hosts = two_hosts
        self.module_name = "taskgraph" if name == "taskgraph" else "ray"
        self.api: Any = importlib.import_module(self.module_name)
        strategies = importlib.import_module(f"{self.module_name}.util.scheduling_strategies")
        self.node_affinity: Any = strategies.NodeAffinitySchedulingStrategy
        self.ray_cluster: Any = None  # two hosts on Ray: a ray.cluster_utils.Cluster
        self.far_daemon: subprocess.Popen[bytes] | None = None  # two hosts on taskgraph
        self.hosts: tuple[str, str] | None = None  # (near, far) node ids
        self._pickle_by_value()
        api = self.api
        self.small_value = api.remote(_engine.small_value)
        self.inc = api.remote(_engine.inc)
        self.add = api.remote(_engine.add)
        self.objects_containing_refs = api.remote(_engine.objects_containing_refs)

    def _pickle_by_value(self) -> None:
        import cloudpickle

        cloudpickle.register_pickle_by_value(_engine)
        if self.module_name == "ray":
            # Ray pickles functions with its own vendored copy of cloudpickle.
            from ray import cloudpickle as ray_cloudpickle

            ray_cloudpickle.register_pickle_by_value(_engine)

    def _init(self) -> None:
        if self.module_name == "ray":
            self.api.init(num_cpus=NUM_CPUS, logging_level="warning")
        else:
            self.api.init(num_cpus=NUM_CPUS)

    def start(self) -> None:
        if not self.two_hosts:
            self._init()
            return
        try:
            self._start_two_hosts()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        with contextlib.ExitStack() as stack:
            # Run last in, first out, each even if another raised: the far
            # daemon, then the cluster init() joined or started, then Ray's nodes.
            if self.ray_cluster is not None:
                stack.callback(self.ray_cluster.shutdown)
            stack.callback(self.api.shutdown)
            if self.far_daemon is not None:
                stack.callback(_stop_process, self.far_daemon)
            self.ray_cluster = self.far_daemon = self.hosts = None

    def _start_two_hosts(self) -> None:
        far_resources = {_engine.FAR: 1}
        if self.module_name == "ray":
            from ray.cluster_utils import Cluster

            self.ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            self.ray_cluster.add_node(num_cpus=1, resources=far_resources)
            self.api.init(address=self.ray_cluster.address, logging_level="warning")
            self.ray_cluster.wait_for_nodes()
        else:
            self.api.init(num_cpus=1)
            # What tests/conftest.py's start_worker does: join the cluster init()
            # started, with a host id of its own. --parent-pid stops it if we die.
            runtime = self.api._api._runtime
            self.far_daemon = subprocess.Popen(
                [
                    sys.executable, "-m", "taskgraph.worker.cli", runtime.address,
                    "--num-cpus", "1", "--resources", json.dumps(far_resources),
                    "--parent-pid", str(os.getpid()),
                ],
                env=dict(os.environ, TASKGRAPH_TOKEN=runtime.cluster.token, TASKGRAPH_HOST_ID="far"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while len(self.api.nodes()) < 2:
                if self.far_daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the second worker daemon did not join the cluster")
                time.sleep(0.05)
        near = self.api.get_runtime_context().get_node_id()
        where = self.api.remote(_engine.node_id).options(resources=far_resources)
        far = self.api.get(where.remote(self.module_name))
        if near is None or near == far:
            raise RuntimeError(f"expected two nodes, found near={near} far={far}")
        self.hosts = (near, far)

    def _pinned(self, fn: Any, node: str, **options: Any) -> Any:
        """``fn`` as a remote function that runs only on ``node``."""
        strategy = self.node_affinity(node, soft=False)
        return self.api.remote(fn).options(scheduling_strategy=strategy, **options)

    def cold_start(self, settle: float) -> dict[str, float]:
        started = time.perf_counter()
        self._init()
        self.api.get(self.small_value.remote())
        elapsed = time.perf_counter() - started
        time.sleep(settle)
        memory = _engine.cluster_memory_mib()
        self.api.shutdown()
        left = _engine.wait_for_descendants_to_exit()
        if left:
            raise RuntimeError(f"{self.name}.shutdown() left processes running: {left}")
        return {"init": elapsed, "idle_memory": memory}

    def workload(self, key: str, n: int) -> Workload:
        api = self.api
        f = self.small_value
        if key == "tasks_sync":
            return Workload(lambda: api.get(f.remote()), 1)
        if key in ("tasks_async", "tasks_and_get_batch"):
            return Workload(
                lambda: api.get([f.remote() for _ in range(n)]), n if key == "tasks_async" else 1
            )
        if key == "multi_tasks_async":
            clients = [
                self._actor(_engine.TaskClient, self.module_name)
                for _ in range(_engine.N_TASK_CLIENTS)
            ]
            api.get([c.small_value_batch.remote(n) for c in clients])  # the clients' first calls
            return Workload(
                lambda: api.get([c.small_value_batch.remote(n) for c in clients]),
                n * _engine.N_TASK_CLIENTS,
            )
        if key == "wait_1k":

            def wait_one_at_a_time() -> None:
                not_ready = [f.remote() for _ in range(n)]
                fetch_local = True  # as ray_perf: ask for the values once, not per call
                for _ in range(n):
                    _ready, not_ready = api.wait(not_ready, fetch_local=fetch_local)
                    fetch_local = False

            return Workload(wait_one_at_a_time, 1)
        if key == "get_small":
            ref = api.put(0)
            return Workload(lambda: api.get(ref), 1)
        if key == "put_small":
            return Workload(lambda: api.put(0), 1)
        if key == "multi_put_small":
            puts = api.remote(_engine.put_small_batch)
            return Workload(
                lambda: api.get(
                    [puts.remote(self.module_name, n) for _ in range(_engine.N_PUT_TASKS)]
                ),
                n * _engine.N_PUT_TASKS,
            )
        if key == "put_get_small":
            return Workload(lambda: api.get(api.put(1)), 1)
        if key == "get_10k_refs":
            holder = self.objects_containing_refs.remote(self.module_name, n)
            api.get(holder)
            return Workload(lambda: api.get(holder), 1)
        if key == "put_gigabytes":
            array = _engine.big_array(n)
            return Workload(lambda: api.put(array), array.nbytes / 1e9)
        if key == "multi_put_gigabytes":
            puts = api.remote(_engine.put_large_batch)
            clients, count = _engine.N_PUT_TASKS, _engine.LARGE_PUTS

            def put_multi() -> None:
                done = api.get([puts.remote(self.module_name, n, count) for _ in range(clients)])
                _engine.check_bytes(sum(done), 8 * n * count * clients)

            return Workload(put_multi, 8 * n * count * clients / 1e9)
        if key == "get_large":
            array = _engine.big_array(n)
            ref = api.put(array)
            return Workload(lambda: api.get(ref), array.nbytes / 1e9)
        if key in ("actor_sync", "actor_async"):
            actor = self._actor(_engine.Actor)
            if key == "actor_sync":
                return Workload(lambda: api.get(actor.small_value.remote()), 1)
            return Workload(lambda: api.get([actor.small_value.remote() for _ in range(n)]), n)
        if key == "actor_concurrent":
            actor = self._actor(_engine.Actor, max_concurrency=16)
            return Workload(lambda: api.get([actor.small_value.remote() for _ in range(n)]), n)
        if key == "actor_args_async":
            actor = self._actor(_engine.Actor)
            return Workload(lambda: api.get([actor.small_value_arg.remote(i) for i in range(n)]), n)
        if key == "async_actor_sync":
            actor = self._actor(_engine.AsyncActor)
            return Workload(lambda: api.get(actor.small_value.remote()), 1)
        if key == "async_actor_async":
            actor = self._actor(_engine.AsyncActor)
            return Workload(lambda: api.get([actor.small_value.remote() for _ in range(n)]), n)
        if key == "async_actor_args":
            actor = self._actor(_engine.AsyncActor)
            return Workload(
                lambda: api.get([actor.small_value_with_arg.remote(i) for i in range(n)]), n
            )
        if key in ("actor_1_n", "async_actor_1_n", "actor_n_n", "async_actor_n_n"):
            server_class = _engine.AsyncActor if key.startswith("async") else _engine.Actor
            servers = [self._actor(server_class) for _ in range(_engine.N_SERVERS)]
            n_clients = 1 if key.endswith("1_n") else _engine.N_CLIENTS
            clients = [
                self._actor(_engine.ActorClient, self.module_name, servers)
                for _ in range(n_clients)
            ]
            api.get([c.small_value_batch.remote(n) for c in clients])  # the clients' first calls

            def n_to_n() -> None:
                api.get([c.small_value_batch.remote(n) for c in clients])

            return Workload(n_to_n, n * n_clients * _engine.N_SERVERS)
        if key == "actor_n_n_arg":
            # As ray_perf: each client calls its own server, passing a ref to put(0).
            servers = [self._actor(_engine.Actor) for _ in range(_engine.N_SERVERS)]
            clients = [self._actor(_engine.ActorClient, self.module_name, [s]) for s in servers]
            api.get([c.small_value_batch_arg.remote(n) for c in clients])

            def n_to_n_arg() -> None:
                api.get([c.small_value_batch_arg.remote(n) for c in clients])

            return Workload(n_to_n_arg, n * len(clients))
        if key == "tree":

            def tree() -> None:
                _engine.check_tree(api.get(_engine.tree_layers(n, self.add.remote)), n)

            return Workload(tree, n - 1)
        if key == "map":
            return Workload(lambda: api.get([self.inc.remote(i) for i in range(n)]), n)
        if key in ("transfer_gigabytes", "shuffle_1gb"):
            if self.hosts is None:
                raise RuntimeError(f"{key} needs the two-host cluster of the transfer group")
            return self._transfer_workload(key, n, *self.hosts)
        raise Unsupported(f"no {self.name} version of {key!r}")

    def _transfer_workload(self, key: str, n: int, near: str, far: str) -> Workload:
        api = self.api
        if key == "transfer_gigabytes":
            produce = self._pinned(_engine.big_array, far)
            consume = self._pinned(_engine.nbytes_of, near)
            made: list[Any] = []

            def make() -> None:
                made.clear()  # the last run's array goes before the next one is made
                made.append(produce.remote(n))
                # Ray's wait would otherwise pull the object to the driver's node,
                # which is the near node: the transfer would happen here, untimed.
                api.wait(made, fetch_local=False)

            def pull() -> None:
                _engine.check_bytes(api.get(consume.remote(made[0])), 8 * n)

            return Workload(pull, 8 * n / 1e9, prepare=make)
        tasks = _engine.SHUFFLE_TASKS
        nodes = [near] * (tasks // 2) + [far] * (tasks - tasks // 2)
        maps = [self._pinned(_engine.shuffle_map, node, num_returns=tasks) for node in nodes]
        reduces = [self._pinned(_engine.shuffle_reduce, node) for node in nodes]

        def shuffle() -> None:
            blocks = [m.remote(n // tasks, tasks) for m in maps]
            joined = [r.remote(*[parts[i] for parts in blocks]) for i, r in enumerate(reduces)]
            _engine.check_bytes(sum(api.get(joined)), 8 * n)

        return Workload(shuffle, 8 * n / 1e9)

    def _actor(self, cls: type, *args: Any, **options: Any) -> Any:
        """A ``@remote(num_cpus=0)`` actor of ``cls``, created and called once.

        ``options`` (such as ``max_concurrency``) go to ``.options()``.
        """
        try:
            actor_class = self.api.remote(num_cpus=0)(cls)
        except NotImplementedError as exc:
            raise Unsupported(f"skipped: actors are not implemented yet ({exc})") from None
        if options:
            actor_class = actor_class.options(**options)
        actor = actor_class.remote(*args)
        if hasattr(cls, "small_value"):
            self.api.get(actor.small_value.remote())
        return actor


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
