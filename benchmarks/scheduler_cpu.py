"""Scheduler CPU per task, measured two ways (issue 5's "≤ 30 µs at 10k tasks/s").

1. The pure state machine alone: N no-op tasks submitted, placed on a 2-CPU
   worker and reported done in pairs, with no IO at all (this process's CPU
   time, so other load on the machine does not count).
2. The real scheduler process: CPU seconds it spent (psutil) while a local
   cluster ran N no-op tasks as fast as it could, divided by N — decoding,
   encoding, sockets and the event loop included.
3. The same for tasks that skip the scheduler's dispatch but not its record
   (docs/architecture.md, "One road for every task"): N no-op tasks awaited
   one by one, which go down a lease, and N calls to an actor awaited one by
   one, which go straight to its process. The scheduler and the worker
   daemon still hear of each (a record, a report); their CPU per task is
   what that costs.

    python -m benchmarks.scheduler_cpu [--tasks 20000] [--rate 10000] [--channel 5000]
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time

import psutil

from taskgraph import _wire as w
from taskgraph._ids import return_ids
from taskgraph.scheduler.state import (
    ClientJoined,
    ClientSent,
    SchedulerState,
    WorkerJoined,
    WorkerSent,
)
from taskgraph.util.state import cluster_statistics


def state_machine_us(n: int) -> float:
    state = SchedulerState(queue_depth=1.0)
    client = b"c" * 8
    state.handle(ClientJoined(client), WorkerJoined(w.WorkerInfo("w1", "h", "", {"CPU": 2.0})))
    args = pickle.dumps(((), {}))
    none = pickle.dumps(None)
    specs = [
        w.TaskSpec(
            task_id=client + i.to_bytes(4, "little") + b"\0\0\0\0",
            function_id=b"f",
            name="noop",
            args=args,
            deps=[],
            resources={"CPU": 1.0},
        )
        for i in range(n)
    ]
    wanted = [return_ids(s.task_id, 1)[0] for s in specs]
    gc.collect()
    start = time.process_time()  # CPU, not wall time: a busy machine must not inflate it
    sends = state.handle(
        ClientSent(
            client, [w.ExportFunction(b"f", b"x"), w.SubmitTasks(specs), w.WantObjects(wanted)]
        )
    )
    done = 0
    while done < n:
        running = [
            a for s in sends for m in s.messages if isinstance(m, w.RunTasks) for a in m.assignments
        ]
        results = [
            w.TaskResult(
                a.spec.task_id, returns=[w.ReturnValue(return_ids(a.spec.task_id, 1)[0], data=none)]
            )
            for a in running
        ]
        done += len(results)
        sends = []
        for i in range(0, len(results), 2):
            sends += state.handle(WorkerSent("w1", [w.TasksDone(results[i : i + 2])]))
    return (time.process_time() - start) / n * 1e6


def scheduler_process_us(n: int, rate: float | None = None) -> tuple[float, float]:
    import taskgraph as tg

    tg.init(num_cpus=2)
    try:

        @tg.remote
        def noop() -> None:
            return None

        tg.get([noop.remote() for _ in range(500)])
        scheduler = next(
            p for p in psutil.Process().children() if "taskgraph.scheduler" in " ".join(p.cmdline())
        )
        before = scheduler.cpu_times()
        start = time.perf_counter()
        if rate is None:  # as fast as the driver can: 2,000 at a time
            batch = 2000
            for _ in range(n // batch):
                tg.get([noop.remote() for _ in range(batch)])
        else:  # paced: 50 every 50/rate seconds, results collected as they go
            batch, pending = 50, []
            for i in range(n // batch):
                pending.append([noop.remote() for _ in range(batch)])
                if len(pending) > 40:
                    tg.get(pending.pop(0))
                pause = start + (i + 1) * batch / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            for refs in pending:
                tg.get(refs)
        elapsed = time.perf_counter() - start
        after = scheduler.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
        return cpu / n * 1e6, n / elapsed
    finally:
        tg.shutdown()


def channel_us(n: int) -> dict[str, tuple[float, float, float]]:
    """(scheduler µs, daemon µs, calls/s) per leased task and per direct actor call."""
    import taskgraph as tg

    tg.init(num_cpus=2)
    try:

        @tg.remote
        def noop() -> None:
            return None

        @tg.remote
        class Actor:
            def noop(self) -> None:
                return None

        actor = Actor.remote()
        children = psutil.Process().children()
        scheduler = next(p for p in children if "taskgraph.scheduler" in " ".join(p.cmdline()))
        daemon = next(p for p in children if "taskgraph.worker" in " ".join(p.cmdline()))
        out = {}
        ways = (
            ("leased task", noop.remote, "tasks_leased"),
            ("direct actor call", actor.noop.remote, "direct_actor_calls"),
        )
        for name, call, count in ways:
            # Until calls take the path (a lease, or the actor's address), code warm.
            deadline = time.monotonic() + 30
            while True:
                went = getattr(tg.statistics(), count)
                tg.get(call())
                if getattr(tg.statistics(), count) > went:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {name} in 30 s")
            for _ in range(100):
                tg.get(call())
            went = getattr(tg.statistics(), count)
            before = (scheduler.cpu_times(), daemon.cpu_times())
            start = time.perf_counter()
            for _ in range(n):
                tg.get(call())
            elapsed = time.perf_counter() - start
            if getattr(tg.statistics(), count) - went < n * 0.9:
                raise AssertionError(
                    f"only {getattr(tg.statistics(), count) - went} of {n} went as {name}"
                )
            after = (scheduler.cpu_times(), daemon.cpu_times())
            used = [
                (a.user - b.user) + (a.system - b.system)
                for a, b in zip(after, before, strict=True)
            ]
            out[name] = (used[0] / n * 1e6, used[1] / n * 1e6, n / elapsed)
        deadline = time.monotonic() + 10  # the last reports gather for a few ms
        while time.monotonic() < deadline:
            paths = cluster_statistics()["tasks_finished_by_path"]
            if paths["lease"] >= n * 0.9 and paths["actor_direct"] >= n * 0.9:
                return out
            time.sleep(0.01)
        raise AssertionError(f"the scheduler saw too few of them: {paths}")
    finally:
        tg.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument(
        "--rate", type=float, default=None, help="submit at this many tasks/s (default: flat out)"
    )
    parser.add_argument("--channel", type=int, default=5_000, help="tasks awaited one by one")
    args = parser.parse_args()
    print(f"state machine alone : {state_machine_us(args.tasks):6.1f} µs of CPU per task")
    per_task, rate = scheduler_process_us(args.tasks, args.rate)
    print(f"scheduler process   : {per_task:6.1f} µs of CPU per task at {rate:,.0f} tasks/s")
    for name, (sched, daemon, rate) in channel_us(args.channel).items():
        print(
            f"{name:20s}: {sched:6.1f} µs of scheduler and {daemon:5.1f} µs of worker "
            f"daemon CPU per task at {rate:,.0f}/s"
        )


if __name__ == "__main__":
    main()
