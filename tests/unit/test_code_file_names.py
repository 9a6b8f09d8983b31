"""Code pickled by value keeps the name of its file (issue 16): a worker's
tracebacks name the user's file and show its lines, for every function that
travelled with a task, not only the task's own."""

from __future__ import annotations

from taskgraph.serialization import dumps, dumps_function, loads, loads_function


def helper(x: int) -> int:
    return x + 1


def task(x: int) -> int:
    def nested(y: int) -> int:
        return helper(y)

    return nested(x)


def test_a_function_and_the_helpers_it_calls_keep_their_file_names() -> None:
    loaded = loads_function(dumps_function(task))

    assert loaded is not task, "test modules travel by value"
    assert loaded(1) == 2
    assert loaded.__code__.co_filename == __file__
    nested = next(c for c in loaded.__code__.co_consts if getattr(c, "co_name", "") == "nested")
    assert nested.co_filename == __file__
    assert loaded.__globals__["helper"].__code__.co_filename == __file__


def test_code_inside_values_keeps_its_file_name_too() -> None:
    [again] = loads(dumps([helper])[0])
    assert again.__code__.co_filename == __file__
    assert again.__code__.co_firstlineno == helper.__code__.co_firstlineno
