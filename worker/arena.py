"""Where objects sit inside a worker's shared-memory arena: a pure allocator.

The arena is one ``/dev/shm`` file per worker daemon, mapped once by every
process on the host. Reusing freed ranges is what makes large ``put`` calls
run at memory-copy speed: their pages are already allocated and already in
each writer's page tables, where a fresh segment costs a page fault per 4 KiB.

First fit over a sorted free list, neighbours merged on free. Ranges are
page-aligned so that no two objects share a page.
"""

from __future__ import annotations

import bisect

PAGE = 4096


def round_up(n: int) -> int:
    return max(PAGE, (n + PAGE - 1) // PAGE * PAGE)


class Arena:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity // PAGE * PAGE
        self._starts: list[int] = [0] if self.capacity else []  # free ranges, sorted
        self._sizes: dict[int, int] = {0: self.capacity} if self.capacity else {}
        self._taken: dict[int, int] = {}  # offset -> size of each allocated range
        self.used = 0

    def allocate(self, size: int) -> int | None:
        """The offset of a free range of at least ``size`` bytes, or None."""
        need = round_up(size)
        for i, start in enumerate(self._starts):
            free = self._sizes[start]
            if free < need:
                continue
            del self._sizes[start]
            if free == need:
                del self._starts[i]
            else:
                self._starts[i] = start + need
                self._sizes[start + need] = free - need
            self._taken[start] = need
            self.used += need
            return start
        return None

    def free(self, offset: int) -> None:
        size = self._taken.pop(offset)
        self.used -= size
        i = bisect.bisect_left(self._starts, offset)
        # Merge with the free range after, then with the one before.
        if i < len(self._starts) and self._starts[i] == offset + size:
            size += self._sizes.pop(self._starts[i])
            del self._starts[i]
        if i > 0:
            before = self._starts[i - 1]
            if before + self._sizes[before] == offset:
                self._sizes[before] += size
                return
        self._starts.insert(i, offset)
        self._sizes[offset] = size

    def size_of(self, offset: int) -> int:
        return self._taken[offset]

    def largest_free(self) -> int:
        return max(self._sizes.values(), default=0)

    def check(self) -> None:
        """Free and taken ranges tile the arena exactly (for tests)."""
        ranges = sorted([*self._sizes.items(), *self._taken.items()])
        position = 0
        for start, size in ranges:
            assert start == position, f"gap or overlap at {position}"
            assert size > 0 and size % PAGE == 0
            position += size
        assert position == self.capacity
        assert self.used == sum(self._taken.values())
        assert self._starts == sorted(self._sizes)
        for a, b in zip(self._starts, self._starts[1:], strict=False):
            assert a + self._sizes[a] < b, "adjacent free ranges were not merged"
