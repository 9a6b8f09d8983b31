"""Placement policy: pure functions over snapshots of workers."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskgraph.scheduler import placement
from taskgraph.scheduler.placement import choose_worker, feasible, fits, pick_gpus, shortfall


@dataclass
class View:
    worker_id: str
    total: dict[str, float]
    available: dict[str, float] = field(default_factory=dict)
    gpu_free: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.available:
            self.available = dict(self.total)
        if not self.gpu_free:
            self.gpu_free = [1.0] * int(self.total.get("GPU", 0))


# -- fits, shortfall, feasible ----------------------------------------------------


def test_fits_compares_every_asked_resource() -> None:
    assert fits({"CPU": 2.0}, {"CPU": 2.0})
    assert not fits({"CPU": 2.0}, {"CPU": 1.0})
    assert fits({"CPU": 1.0, "disk": 1.0}, {"CPU": 4.0, "disk": 1.0})
    assert not fits({"CPU": 1.0, "disk": 1.0}, {"CPU": 4.0})
    assert fits({}, {}), "asking for nothing fits anywhere"
    assert fits({"disk": 0.0}, {}), "asking for zero of a resource nobody has fits"
    assert fits({"CPU": 0.1 + 0.2}, {"CPU": 0.3}), "float noise does not decide"
    assert not fits({"CPU": 1.0}, {"CPU": -1.0}), "an overcommitted worker fits nothing"


def test_shortfall_names_what_is_missing_and_by_how_much() -> None:
    assert shortfall({"CPU": 4.0, "disk": 1.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}) == {
        "CPU": 2.0,
        "disk": 1.0,
    }
    assert shortfall({"CPU": 1.0}, {"CPU": 8.0}) == {}
    assert shortfall({"disk": 0.0}, {}) == {}


def test_feasible_asks_whether_any_worker_could_ever_run_it() -> None:
    busy = View("a", {"CPU": 4.0}, available={"CPU": 0.0})
    assert feasible({"CPU": 4.0}, [busy]), "busy now, but it could run there"
    assert not feasible({"CPU": 5.0}, [busy])
    assert not feasible({"CPU": 1.0}, [])


@given(
    need=st.dictionaries(st.sampled_from(["CPU", "GPU", "disk"]), st.floats(0, 8)),
    have=st.dictionaries(st.sampled_from(["CPU", "GPU", "disk"]), st.floats(0, 8)),
)
def test_fits_exactly_when_nothing_falls_short(
    need: dict[str, float], have: dict[str, float]
) -> None:
    assert fits(need, have) == (shortfall(need, have) == {})
    for name, short in shortfall(need, have).items():
        assert short > 0 and short == pytest.approx(need[name] - have.get(name, 0.0))


# -- GPUs ----------------------------------------------------------------------------


def test_pick_gpus_gives_whole_gpus_for_whole_numbers() -> None:
    assert pick_gpus(0, [1.0, 1.0]) == []
    assert pick_gpus(1, [1.0, 1.0]) == [0]
    assert pick_gpus(2, [1.0, 1.0]) == [0, 1]
    assert pick_gpus(1, [0.5, 1.0]) == [1], "a shared GPU is not a whole one"
    assert pick_gpus(2, [0.5, 1.0]) is None
    assert pick_gpus(3, [1.0, 1.0]) is None
    assert pick_gpus(1, []) is None


def test_pick_gpus_gives_a_share_of_one_gpu_for_fractions() -> None:
    assert pick_gpus(0.5, [1.0, 1.0]) == [0]
    assert pick_gpus(0.5, [0.5, 1.0]) == [0], "fill a shared GPU before opening another"
    assert pick_gpus(0.5, [0.25, 1.0]) == [1]
    assert pick_gpus(0.5, [0.25, 0.25]) is None, "a share never spans GPUs"
    assert pick_gpus(0.1 + 0.2, [0.3]) == [0]


# -- choose_worker ---------------------------------------------------------------------


def test_choose_worker_needs_room_now() -> None:
    full = View("a", {"CPU": 2.0}, available={"CPU": 0.0})
    free = View("b", {"CPU": 2.0})
    assert choose_worker({"CPU": 1.0}, "DEFAULT", [full, free], {}) is free
    assert choose_worker({"CPU": 1.0}, "DEFAULT", [full], {}) is None
    assert choose_worker({"CPU": 1.0}, "DEFAULT", [], {}) is None


def test_choose_worker_prefers_local_bytes_then_least_load_then_id() -> None:
    a = View("a", {"CPU": 4.0}, available={"CPU": 1.0})
    b = View("b", {"CPU": 4.0}, available={"CPU": 3.0})
    c = View("c", {"CPU": 4.0}, available={"CPU": 3.0})
    need = {"CPU": 1.0}
    assert choose_worker(need, "DEFAULT", [a, b, c], {}) is b, "least loaded, then by id"
    assert choose_worker(need, "DEFAULT", [a, b, c], {"a": 10, "c": 5}) is a
    assert choose_worker(need, "SPREAD", [a, b, c], {"a": 10}) is b, "SPREAD ignores locality"


def test_choose_worker_checks_gpus_beside_the_gpu_count() -> None:
    # Two half-used GPUs add up to one free GPU, but no whole one is free.
    shared = View(
        "s", {"CPU": 4.0, "GPU": 2.0}, available={"CPU": 4.0, "GPU": 1.0}, gpu_free=[0.5, 0.5]
    )
    assert choose_worker({"GPU": 1.0}, "DEFAULT", [shared], {}) is None
    assert choose_worker({"GPU": 0.5}, "DEFAULT", [shared], {}) is shared


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("node:b", "b"), ("node?:b", "b"), ("node:gone", None), ("node?:gone", "a")],
)
def test_node_affinity(strategy: str, expected: str | None) -> None:
    a = View("a", {"CPU": 4.0})
    b = View("b", {"CPU": 4.0}, available={"CPU": 1.0})
    chosen = choose_worker({"CPU": 1.0}, strategy, [a, b], {"a": 100})
    assert (chosen.worker_id if chosen else None) == expected


def test_hard_affinity_to_a_full_node_waits_and_soft_affinity_moves_on() -> None:
    a = View("a", {"CPU": 4.0})
    b = View("b", {"CPU": 4.0}, available={"CPU": 0.0})
    assert choose_worker({"CPU": 1.0}, "node:b", [a, b], {}) is None
    assert choose_worker({"CPU": 1.0}, "node?:b", [a, b], {}) is a


def test_load_is_the_share_of_cpus_in_use() -> None:
    assert placement._load(View("a", {"CPU": 4.0}, available={"CPU": 1.0})) == 0.75
    assert placement._load(View("a", {"GPU": 1.0})) == 0.0, "no CPUs: never loaded"
