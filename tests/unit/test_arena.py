"""The arena allocator: ranges never overlap, and freeing merges neighbours."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from taskgraph.worker.arena import PAGE, Arena


def test_first_fit_reuses_a_freed_range() -> None:
    arena = Arena(10 * PAGE)
    a = arena.allocate(3 * PAGE)
    b = arena.allocate(1)
    assert (a, b) == (0, 3 * PAGE)
    assert arena.used == 4 * PAGE  # sizes round up to whole pages
    arena.free(a)
    assert arena.allocate(2 * PAGE) == 0, "the freed range comes first"
    arena.check()


def test_full_arena_says_none_and_merging_makes_room_again() -> None:
    arena = Arena(4 * PAGE)
    offsets = [arena.allocate(PAGE) for _ in range(4)]
    assert arena.allocate(1) is None
    arena.free(offsets[1])
    arena.free(offsets[2])
    assert arena.largest_free() == 2 * PAGE  # two neighbours became one range
    assert arena.allocate(2 * PAGE) == offsets[1]
    arena.check()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 5 * PAGE), st.integers(0, 50))))
def test_random_allocations_and_frees_keep_the_arena_consistent(steps) -> None:
    arena = Arena(64 * PAGE)
    live: dict[int, int] = {}  # offset -> size asked
    for allocate, size, pick in steps:
        if allocate or not live:
            offset = arena.allocate(size)
            if offset is None:
                assert arena.largest_free() < size
                continue
            assert offset % PAGE == 0 and offset + size <= arena.capacity
            for other, other_size in live.items():
                assert offset + size <= other or other + other_size <= offset, "overlap"
            live[offset] = size
        else:
            offset = sorted(live)[pick % len(live)]
            del live[offset]
            arena.free(offset)
        arena.check()
    for offset in list(live):
        arena.free(offset)
    arena.check()
    assert arena.used == 0 and arena.largest_free() == arena.capacity
