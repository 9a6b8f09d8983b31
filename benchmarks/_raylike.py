"""taskgraph and Ray: one adapter, since they share an API.

The only differences are the module imported and how functions reach the
workers: both pickle the benchmark's functions by value, so the workers need
not import this package.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from benchmarks import _engine
from benchmarks._engine import NUM_CPUS, Unsupported, Workload


class RayLikeEngine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.module_name = "taskgraph" if name == "taskgraph" else "ray"
        self.api: Any = importlib.import_module(self.module_name)
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
        self._init()

    def stop(self) -> None:
        self.api.shutdown()

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
        if key == "put_get_small":
            return Workload(lambda: api.get(api.put(1)), 1)
        if key == "get_10k_refs":
            holder = self.objects_containing_refs.remote(self.module_name, n)
            api.get(holder)
            return Workload(lambda: api.get(holder), 1)
        if key == "put_gigabytes":
            array = _engine.big_array(n)
            return Workload(lambda: api.put(array), array.nbytes / 1e9)
        if key == "get_large":
            array = _engine.big_array(n)
            ref = api.put(array)
            return Workload(lambda: api.get(ref), array.nbytes / 1e9)
        if key in ("actor_sync", "actor_async"):
            actor = self._actor(_engine.Actor)
            if key == "actor_sync":
                return Workload(lambda: api.get(actor.small_value.remote()), 1)
            return Workload(lambda: api.get([actor.small_value.remote() for _ in range(n)]), n)
        if key == "async_actor_async":
            actor = self._actor(_engine.AsyncActor)
            return Workload(lambda: api.get([actor.small_value.remote() for _ in range(n)]), n)
        if key == "actor_n_n":
            servers = [self._actor(_engine.Actor) for _ in range(_engine.N_SERVERS)]
            clients = [
                self._actor(_engine.ActorClient, self.module_name, servers)
                for _ in range(_engine.N_CLIENTS)
            ]
            api.get([c.small_value_batch.remote(n) for c in clients])  # the clients' first calls

            def n_to_n() -> None:
                api.get([c.small_value_batch.remote(n) for c in clients])

            return Workload(n_to_n, n * _engine.N_CLIENTS * _engine.N_SERVERS)
        if key == "tree":

            def tree() -> None:
                _engine.check_tree(api.get(_engine.tree_layers(n, self.add.remote)), n)

            return Workload(tree, n - 1)
        if key == "map":
            return Workload(lambda: api.get([self.inc.remote(i) for i in range(n)]), n)
        raise Unsupported(f"no {self.name} version of {key!r}")

    def _actor(self, cls: type, *args: Any) -> Any:
        """A ``@remote(num_cpus=0)`` actor of ``cls``, created and called once."""
        try:
            actor_class = self.api.remote(num_cpus=0)(cls)
        except NotImplementedError as exc:
            raise Unsupported(f"skipped: actors are not implemented yet ({exc})") from None
        actor = actor_class.remote(*args)
        if hasattr(cls, "small_value"):
            self.api.get(actor.small_value.remote())
        return actor
