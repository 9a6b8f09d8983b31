"""The daemon's object store: pins, deferred frees, spilling and restoring, fullness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from taskgraph.worker import store
from taskgraph.worker.arena import PAGE

MB = 1 << 20


@pytest.fixture
def objects(tmp_path: Path) -> Iterator[store.ObjectStore]:
    s = store.ObjectStore("unit", 10 * MB, tmp_path / "spill")
    yield s
    s.close()
    assert not (store.shm_dir() / store.arena_name("unit")).exists()
    assert not (tmp_path / "spill").exists()


def put(s: store.ObjectStore, oid: bytes, size: int, fill: int, holder: object = "w") -> None:
    offset = s.create(oid, size, holder)
    s.view[offset : offset + size] = bytes([fill]) * size
    s.seal(oid, holder)


def content(s: store.ObjectStore, oid: bytes) -> set[int]:
    s.pin(oid, "check")
    try:
        return set(bytes(s.read(oid)))
    finally:
        s.unpin(oid, "check")


def test_a_sealed_object_is_readable_and_freed_when_the_cluster_lets_go(objects) -> None:
    put(objects, b"a", 3 * MB, 1)
    where = objects.pin(b"a", "reader")
    assert where.offset >= 0 and where.size == 3 * MB and not where.path
    objects.unpin(b"a", "reader")
    objects.free(b"a")
    assert objects.stats()["objects"] == 0 and objects.arena.used == 0


def test_pinning_an_unsealed_or_unknown_object_is_refused(objects) -> None:
    objects.create(b"half", MB, "writer")
    with pytest.raises(KeyError):
        objects.pin(b"half", "reader")
    with pytest.raises(KeyError):
        objects.pin(b"nothing", "reader")
    with pytest.raises(ValueError, match="already in the store"):
        objects.create(b"half", MB, "writer")


def test_a_free_waits_for_the_last_reader(objects) -> None:
    put(objects, b"a", MB, 7)
    objects.pin(b"a", "r1")
    objects.pin(b"a", "r2")
    objects.free(b"a")
    objects.unpin(b"a", "r1")
    assert b"a" in objects.entries, "r2 still maps it"
    objects.unpin(b"a", "r2")
    assert b"a" not in objects.entries and objects.arena.used == 0


def test_a_holder_that_goes_away_drops_its_pins_and_unsealed_writes(objects) -> None:
    put(objects, b"kept", MB, 1)
    objects.pin(b"kept", "proc")
    objects.pin(b"kept", "proc")
    objects.create(b"torn", MB, "proc")  # the process died while writing it
    objects.drop_holder("proc")
    assert b"torn" not in objects.entries
    assert objects.entries[b"kept"].pins == 0
    objects.unpin(b"kept", "proc")  # a late unpin from the dead holder is ignored
    assert objects.entries[b"kept"].pins == 0


def test_above_the_cap_the_least_recently_used_unpinned_object_spills(objects) -> None:
    for i in range(3):
        put(objects, bytes([i]), 3 * MB, i + 1)
    content(objects, b"\x00")  # now the most recently used
    put(objects, b"new", 3 * MB, 9)  # 12 MB asked of 10: one object must go
    assert objects.entries[b"\x01"].offset is None, "the least recently used spilled"
    assert objects.entries[b"\x01"].spill_path is not None
    assert objects.stats()["bytes_spilled"] == 3 * MB
    assert content(objects, b"\x01") == {2}, "restored intact when pinned"
    assert objects.stats()["restored_total"] == 1
    assert all(content(objects, oid) == {fill} for oid, fill in [(b"\x00", 1), (b"new", 9)])


def test_a_spilled_object_is_read_from_its_file_when_nothing_can_make_room(objects) -> None:
    put(objects, b"old", 6 * MB, 5)
    put(objects, b"big", 6 * MB, 6)  # spills "old"
    objects.pin(b"big", "reader")  # now nothing in memory may move
    where = objects.pin(b"old", "reader")
    assert where.path and where.offset == -1
    assert set(Path(where.path).read_bytes()) == {5}
    objects.unpin(b"old", "reader")
    objects.free(b"old")
    assert not Path(where.path).exists(), "freeing a spilled object removes its file"
    assert objects.stats()["bytes_spilled"] == 0


def test_full_when_everything_is_pinned(objects) -> None:
    put(objects, b"a", 5 * MB, 1)
    put(objects, b"b", 4 * MB, 2)
    objects.pin(b"a", "r")
    objects.pin(b"b", "r")
    with pytest.raises(store.StoreFull) as info:
        objects.create(b"c", 2 * MB, "w")
    assert (info.value.needed, info.value.used, info.value.capacity) == (2 * MB, 9 * MB, 10 * MB)
    assert b"c" not in objects.entries
    objects.unpin(b"a", "r")
    objects.create(b"c", 2 * MB, "w")  # now "a" can spill
    assert objects.entries[b"a"].offset is None


def test_an_object_larger_than_the_store_is_refused_at_once(objects) -> None:
    with pytest.raises(store.StoreFull, match="larger than the whole object store"):
        objects.create(b"huge", 10 * MB + PAGE, "w")


def test_an_object_made_again_while_readers_map_its_freed_copy_gets_a_place_of_its_own(
    objects,
) -> None:
    """Lineage: a lost object's task runs again on a worker whose store still keeps
    an earlier copy of it, freed but pinned by readers. The new copy is written;
    the old stays where its readers map it until their pins go, then is freed."""
    put(objects, b"a", MB, 1)
    objects.pin(b"a", "old reader")
    objects.free(b"a")
    put(objects, b"a", MB, 2)  # made again
    assert content(objects, b"a") == {2}
    assert objects.stats()["objects"] == 2 and objects.arena.used == 2 * MB
    objects.pin(b"a", "new reader")
    objects.unpin(b"a", "old reader")  # its pin is on the old copy, which goes
    assert objects.stats()["objects"] == 1 and objects.arena.used == MB
    assert content(objects, b"a") == {2} and objects.retired == {}
    objects.unpin(b"a", "new reader")
    objects.free(b"a")
    assert objects.stats()["objects"] == 0 and objects.arena.used == 0


def test_a_retired_copy_goes_with_its_readers_process(objects) -> None:
    put(objects, b"a", MB, 1)
    objects.pin(b"a", "proc")
    objects.free(b"a")
    put(objects, b"a", MB, 2)
    objects.drop_holder("proc")
    assert objects.stats()["objects"] == 1 and objects.retired == {}
    assert content(objects, b"a") == {2}
