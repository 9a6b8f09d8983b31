"""One system's cluster for one group of benchmarks, in a process of its own.

Run by the orchestrator as ``python -m benchmarks._child CONFIG FD``. It
imports only its own system (so Ray's or Dask's background threads cannot
slow taskgraph's numbers down), runs the group's benchmarks, and reports
each step as a JSON line on file descriptor FD:

    {"event": "ready"}                       cluster started
    {"event": "start", "key": K}             benchmark K begins (warm-up)
    {"event": "rep", "key": K, "ops": ...}   a timed repetition begins
    {"event": "result", "key": K, "samples": {row: [...]}}
    {"event": "skip" | "error", "key": K, "note": "..."}
    {"event": "leak", "note": "..."}         processes left after stopping the cluster
    {"event": "done"}

The orchestrator enforces time limits by killing this process and its
descendants, so nothing here needs a timeout of its own.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from benchmarks import _catalog, _engine
from benchmarks._engine import Engine, Unsupported
from benchmarks._measure import Settings, measure


def make_engine(system: str, group: str) -> Engine:
    if system in ("taskgraph", "ray"):
        from benchmarks._raylike import RayLikeEngine

        return RayLikeEngine(system, two_hosts=group in _catalog.TWO_HOST_GROUPS)
    if system == "dask":
        from benchmarks._dask import DaskEngine

        return DaskEngine()
    if system == "limit":
        from benchmarks._limit import LimitEngine

        return LimitEngine()
    raise ValueError(f"unknown system {system!r}")


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    channel = os.fdopen(int(argv[1]), "w", buffering=1)

    def emit(**event: Any) -> None:
        channel.write(json.dumps(event) + "\n")

    settings = Settings(**config["settings"])
    benches = [_catalog.BY_KEY[key] for key in config["benchmarks"]]
    engine = make_engine(config["system"], config["group"])
    own_cluster = config["group"] not in _catalog.PER_SAMPLE_CLUSTER
    if own_cluster:
        engine.start()
    emit(event="ready")
    try:
        for bench in benches:
            emit(event="start", key=bench.key)
            try:
                samples = measure(engine, bench, settings, emit)
            except Unsupported as exc:
                emit(event="skip", key=bench.key, note=str(exc))
            except Exception as exc:
                traceback.print_exc()
                emit(event="error", key=bench.key, note=f"{type(exc).__name__}: {exc}")
            else:
                emit(event="result", key=bench.key, samples=samples)
    finally:
        if own_cluster:
            engine.stop()
        left = _engine.wait_for_descendants_to_exit()
        if left:
            emit(event="leak", note=f"{engine.name} left processes after shutdown: {left}")
    emit(event="done")
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
