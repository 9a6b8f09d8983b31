"""Ids of tasks and objects: 16 bytes, a 12-byte base and a 4-byte index.

The base is the submitting client's 8-byte id and a 4-byte counter, so ids
are unique without coordination. A task's id has index 0; its returns have
indexes 1..n; a generator task's items follow its single return.
"""

from __future__ import annotations


def return_ids(task_id: bytes, count: int) -> list[bytes]:
    """Object ids of a task's returns: the task id with index 1..count."""
    base = task_id[:12]
    if count == 1:  # nearly every task: skip the loop
        return [base + b"\x01\0\0\0"]
    return [base + (i + 1).to_bytes(4, "little") for i in range(count)]


def generator_item_id(task_id: bytes, index: int) -> bytes:
    """Items of a generator task follow its single return (the item count)."""
    return task_id[:12] + (index + 2).to_bytes(4, "little")


def client_of(task_or_object_id: bytes) -> bytes:
    """The id of the client that submitted the task (or made the object)."""
    return task_or_object_id[:8]
