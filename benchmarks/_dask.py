"""Dask distributed, written the way a Dask user would write each workload.

The cluster is ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)``: two single-threaded worker processes, like taskgraph's and
Ray's two executors; the scheduler runs inside the driver process, as
LocalCluster always does. The dashboard is off (Ray's minimal install has
none either). Ray's put/get map to ``scatter`` and ``Future.result``.

The same cluster serves the transfer group: Dask workers never share memory,
so an object one worker needs from the other always crosses TCP, as between
two hosts. ``workers=`` pins a task to one of them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks import _engine
from benchmarks._engine import NUM_CPUS, Unsupported, Workload


class DaskEngine:
    name = "dask"

    def __init__(self) -> None:
        import cloudpickle

        cloudpickle.register_pickle_by_value(_engine)
        # Closing a cluster logs heartbeats to workers that already left.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        self.cluster: Any = None
        self.client: Any = None

    def _start(self) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=NUM_CPUS, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = Client(self.cluster)

    def start(self) -> None:
        self._start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    def cold_start(self, settle: float) -> dict[str, float]:
        started = time.perf_counter()
        self._start()
        self.client.submit(_engine.small_value, pure=False).result()
        elapsed = time.perf_counter() - started
        time.sleep(settle)
        memory = _engine.cluster_memory_mib()
        self.stop()
        left = _engine.wait_for_descendants_to_exit()
        if left:
            raise RuntimeError(f"closing the LocalCluster left processes running: {left}")
        return {"init": elapsed, "idle_memory": memory}

    def workload(self, key: str, n: int) -> Workload:
        from distributed import as_completed

        client = self.client
        f = _engine.small_value
        if key == "tasks_sync":
            return Workload(lambda: client.submit(f, pure=False).result(), 1)
        if key in ("tasks_async", "tasks_and_get_batch"):
            return Workload(
                lambda: client.gather([client.submit(f, pure=False) for _ in range(n)]),
                n if key == "tasks_async" else 1,
            )
        if key == "multi_tasks_async":
            clients = [
                client.submit(_engine.TaskClient, "dask", actor=True, pure=False).result()
                for _ in range(_engine.N_TASK_CLIENTS)
            ]

            def multi_tasks() -> None:
                # Each client submits through its worker's client (get_client()).
                for call in [c.small_value_batch(n) for c in clients]:
                    call.result()

            multi_tasks()
            return Workload(multi_tasks, n * _engine.N_TASK_CLIENTS)
        if key == "wait_1k":

            def wait_one_at_a_time() -> None:
                # ray.wait(num_returns=1) hands back one ready ref per call. Dask's
                # wait(return_when=FIRST_COMPLETED) costs O(n) per call (about a minute
                # for 1000 calls here); as_completed is how Dask users take one at a time.
                for _future in as_completed([client.submit(f, pure=False) for _ in range(n)]):
                    pass

            return Workload(wait_one_at_a_time, 1)
        if key == "get_small":
            future = client.scatter(0, hash=False)
            return Workload(future.result, 1)
        if key == "put_small":
            return Workload(lambda: client.scatter(0, hash=False), 1)
        if key == "multi_put_small":
            return Workload(
                lambda: client.gather(
                    [
                        client.submit(_engine.put_small_batch, "dask", n, pure=False)
                        for _ in range(_engine.N_PUT_TASKS)
                    ]
                ),
                n * _engine.N_PUT_TASKS,
            )
        if key == "put_get_small":
            return Workload(lambda: client.scatter(1, hash=False).result(), 1)
        if key == "put_gigabytes":
            array = _engine.big_array(n)
            return Workload(lambda: client.scatter(array, hash=False), array.nbytes / 1e9)
        if key == "multi_put_gigabytes":
            tasks, count = _engine.N_PUT_TASKS, _engine.LARGE_PUTS

            def put_multi() -> None:
                done = client.gather(
                    [
                        client.submit(_engine.put_large_batch, "dask", n, count, pure=False)
                        for _ in range(tasks)
                    ]
                )
                _engine.check_bytes(sum(done), 8 * n * count * tasks)

            return Workload(put_multi, 8 * n * count * tasks / 1e9)
        if key == "get_large":
            array = _engine.big_array(n)
            future = client.scatter(array, hash=False)
            return Workload(future.result, array.nbytes / 1e9)
        one_to_one = {
            "actor_sync": (_engine.Actor, "small_value"),
            "actor_async": (_engine.Actor, "small_value"),
            "actor_args_async": (_engine.Actor, "small_value_arg"),
            "async_actor_sync": (_engine.AsyncActor, "small_value"),
            "async_actor_async": (_engine.AsyncActor, "small_value"),
            "async_actor_args": (_engine.AsyncActor, "small_value_with_arg"),
        }
        if key in one_to_one:
            cls, name = one_to_one[key]
            actor = client.submit(cls, actor=True, pure=False).result()
            if key.endswith("_sync"):
                return Workload(lambda: actor.small_value().result(), 1)
            method = getattr(actor, name)
            with_arg = name != "small_value"

            def calls() -> None:
                for call in [method(i) if with_arg else method() for i in range(n)]:
                    call.result()

            return Workload(calls, n)
        if key in ("actor_1_n", "async_actor_1_n", "actor_n_n", "async_actor_n_n", "actor_n_n_arg"):
            return self._actor_clients(key, n)
        if key == "tree":
            import dask

            add = dask.delayed(_engine.add, pure=False)

            def tree() -> None:
                root = _engine.tree_layers(n, add)
                _engine.check_tree(client.compute(root).result(), n)

            return Workload(tree, n - 1)
        if key == "map":
            return Workload(lambda: client.gather(client.map(_engine.inc, range(n), pure=False)), n)
        if key in ("transfer_gigabytes", "shuffle_1gb"):
            return self._transfer_workload(key, n)
        raise Unsupported(f"no Dask version of {key!r}")

    def _actor_clients(self, key: str, n: int) -> Workload:
        """Client actors that call server actors and wait for them (ray_perf's ``Client``).

        The clients live on one worker and the servers on the other. Dask runs a
        call to an actor on the caller's own worker as a plain function call (and
        hands back a bare coroutine for an ``async def`` method), where taskgraph
        and Ray send every call to the actor's own process; apart, every Dask call
        is a message too. All actors on a Dask worker share its one actor thread.
        """
        client = self.client
        client_worker, server_worker = sorted(client.scheduler_info()["workers"])
        server_class = _engine.AsyncActor if key.startswith("async") else _engine.Actor
        servers = [
            client.submit(server_class, actor=True, workers=[server_worker], pure=False).result()
            for _ in range(_engine.N_SERVERS)
        ]

        def make_client(of: list[Any]) -> Any:
            return client.submit(
                _engine.ActorClient, "dask", of, actor=True, workers=[client_worker], pure=False
            ).result()

        if key == "actor_n_n_arg":
            clients = [make_client([s]) for s in servers]  # each client calls its own server
            calls_per_run = n * len(clients)
        else:
            n_clients = 1 if key.endswith("1_n") else _engine.N_CLIENTS
            clients = [make_client(servers) for _ in range(n_clients)]
            calls_per_run = n * n_clients * _engine.N_SERVERS
        method = "small_value_batch_arg" if key == "actor_n_n_arg" else "small_value_batch"

        def run(servers: list[Any] = servers) -> None:
            # Dask releases an actor once the driver drops its last reference (the
            # clients' copies do not count), so the servers ride along in a default.
            for call in [getattr(c, method)(n) for c in clients]:
                call.result()

        run()
        return Workload(run, calls_per_run)

    def _transfer_workload(self, key: str, n: int) -> Workload:
        import operator

        from distributed import wait

        client = self.client
        near, far = sorted(client.scheduler_info()["workers"])
        if key == "transfer_gigabytes":
            made: list[Any] = []

            def make() -> None:
                made.clear()  # the last run's array goes before the next one is made
                made.append(client.submit(_engine.big_array, n, workers=[far], pure=False))
                wait(made)

            def pull() -> None:
                moved = client.submit(_engine.nbytes_of, made[0], workers=[near], pure=False)
                _engine.check_bytes(moved.result(), 8 * n)

            return Workload(pull, 8 * n / 1e9, prepare=make)
        tasks = _engine.SHUFFLE_TASKS
        workers = [near] * (tasks // 2) + [far] * (tasks - tasks // 2)

        def shuffle() -> None:
            # A map task returns its partitions as one list; getitem tasks on the
            # same worker name each partition, so a reduce task fetches only its own.
            blocks = [
                client.submit(_engine.shuffle_map, n // tasks, tasks, workers=[w], pure=False)
                for w in workers
            ]
            parts = [
                [
                    client.submit(operator.getitem, b, i, workers=[w], pure=False)
                    for i in range(tasks)
                ]
                for b, w in zip(blocks, workers, strict=True)
            ]
            joined = [
                client.submit(
                    _engine.shuffle_reduce, *[p[i] for p in parts], workers=[w], pure=False
                )
                for i, w in enumerate(workers)
            ]
            _engine.check_bytes(sum(client.gather(joined)), 8 * n)

        return Workload(shuffle, 8 * n / 1e9)
