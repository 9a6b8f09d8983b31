"""Timing: warm-up, then repetitions; each repetition gives one sample.

"rate" benchmarks repeat their iteration until ``rep_time`` has passed and
report work per second (like ``ray microbenchmark``'s ``timeit``). "job"
benchmarks warm up at a small size (256 items), then time one full-size run per
repetition, stopping early once ``job_budget`` seconds are spent (at least one
run); a job's ``prepare`` step, if it has one, runs before each run, untimed.
"sample" benchmarks report what each repetition measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._catalog import Benchmark
from benchmarks._engine import Engine, Workload


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeat: int
    warmup_time: float
    rep_time: float
    job_budget: float
    settle: float  # idle time before reading an idle cluster's memory
    sample_repeat: int  # each sample starts a cluster: fewer of them by default

    @classmethod
    def make(cls, quick: bool, repeat: int | None) -> Settings:
        if quick:
            return cls(True, repeat or 3, 0.1, 0.2, 10.0, 0.3, repeat or 3)
        return cls(False, repeat or 5, 0.5, 0.5, 30.0, 0.5, repeat or 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def timeout(self, bench: Benchmark) -> float:
        """Seconds a benchmark may take on one system before it counts as hung."""
        if bench.timeout is not None and not self.quick:
            return bench.timeout
        if bench.kind == "job":
            return 60.0 if self.quick else 240.0
        if bench.kind == "sample":
            return 60.0 if self.quick else 150.0
        return 45.0 if self.quick else 90.0


Emit = Callable[..., None]


def measure(
    engine: Engine, bench: Benchmark, settings: Settings, emit: Emit
) -> dict[str, list[float]]:
    """Samples per row key; ``emit(event="rep", ...)`` marks each timed repetition."""
    if bench.kind == "sample":
        engine.cold_start(settings.settle)  # warm-up: first imports, first process spawns
        samples: dict[str, list[float]] = {row.key: [] for row in bench.rows}
        for _ in range(settings.sample_repeat):
            emit(event="rep", key=bench.key, ops=None)
            for row_key, value in engine.cold_start(settings.settle).items():
                samples[row_key].append(value)
        return samples

    (row,) = bench.rows
    n = bench.size(settings.quick)
    if bench.kind == "job":
        timed(engine.workload(bench.key, 64 if settings.quick else 256))  # imports, connections
        work = engine.workload(bench.key, n)
        rates: list[float] = []
        spent = 0.0
        for _ in range(settings.repeat):
            emit(event="rep", key=bench.key, ops=work.ops)
            elapsed = timed(work)
            rates.append(work.ops / elapsed)
            spent += elapsed
            if spent >= settings.job_budget:
                break
        return {row.key: rates}

    work = engine.workload(bench.key, n)
    if work.prepare is not None:
        raise TypeError(f"{bench.key}: only job benchmarks may have a prepare step")
    _run_for(work, settings.warmup_time)
    rates = []
    for _ in range(settings.repeat):
        emit(event="rep", key=bench.key, ops=None)
        rates.append(_run_for(work, settings.rep_time))
    return {row.key: rates}


def timed(work: Workload) -> float:
    """Seconds one run takes, after its untimed prepare step."""
    if work.prepare is not None:
        work.prepare()
    started = time.perf_counter()
    work.run()
    return time.perf_counter() - started


def _run_for(work: Workload, seconds: float) -> float:
    """Run ``work`` at least once and until ``seconds`` pass; work per second."""
    run = work.run
    count = 0
    started = time.perf_counter()
    while True:
        run()
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count * work.ops / elapsed
