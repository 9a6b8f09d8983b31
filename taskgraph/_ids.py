"""Ids of tasks and objects: 16 bytes, a 12-byte base and a 4-byte index.

The base is the submitting client's 8-byte id and a 4-byte counter, so ids
are unique without coordination. A task's id has index 0; its returns have
indexes 1..n; a generator task's items follow its single return.
"""

from __future__ import annotations

BASE = 12  # bytes: the submitting client's id (8) and its counter (4)
TASK_INDEX = b"\0\0\0\0"


def task_id(base: bytes) -> bytes:
    """The id of the task (or actor) made under a fresh 12-byte ``base``."""
    return base + TASK_INDEX


def task_of(object_id: bytes) -> bytes:
    """The task that made an object (a return or generator item): index 0."""
    return object_id[:BASE] + TASK_INDEX


def first_return(task_id: bytes) -> bytes:
    """A task's first return; an actor's *anchor* (its creation task's return)."""
    return task_id[:BASE] + b"\x01\0\0\0"


def is_first_return(object_id: bytes) -> bool:
    return object_id[BASE:] == b"\x01\0\0\0"


def same_task(a: bytes, b: bytes) -> bool:
    """Whether two ids (a task's, its objects') share the task's base."""
    return a[:BASE] == b[:BASE]


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


def job_of(task_id: bytes, job: bytes) -> bytes:
    """The driver a task works for (what it prints goes there): the one its spec
    names (``TaskSpec.job``, set on a task's tasks), else its submitter."""
    return job or task_id[:8]
