"""The DAG API's rules without a cluster: what InputNode stands for, how often an
actor node is made, and the order of calls bound on it (taskgraph/dag.py)."""

from __future__ import annotations

from typing import Any

import pytest

from taskgraph.dag import ClassNode, DAGInputData, InputNode, MultiOutputNode


class FakeActorClass:
    """Stands in for an ActorClass: records each actor it makes and each call."""

    __name__ = __qualname__ = "Fake"
    _methods = {"inc": 1, "get": 1}

    def __init__(self) -> None:
        self.made: list[FakeHandle] = []

    def _remote(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: Any) -> FakeHandle:
        handle = FakeHandle(len(self.made), args)
        self.made.append(handle)
        return handle


class FakeHandle:
    def __init__(self, number: int, args: tuple[Any, ...]) -> None:
        self.number, self.args = number, args
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        handle = self

        class Method:
            def _remote(self, args: tuple[Any, ...], kwargs: Any, options: Any) -> Any:
                handle.calls.append((name, args))
                return (handle.number, name, args)

        return Method()


def test_one_input_is_the_value_and_is_indexed_or_read_into():
    with InputNode() as inp:
        pass
    assert inp.execute(5) == 5
    assert inp[1].execute([7, 8]) == 8
    assert inp["k"].execute({"k": "v"}) == "v"

    class Point:
        x = 3

    assert inp.x.execute(Point()) == 3


def test_several_inputs_are_indexed_by_position_and_keyword():
    inp = InputNode()
    data = inp.execute(1, 2, x=3)
    assert isinstance(data, DAGInputData)
    both = MultiOutputNode([inp[0], inp[1], inp.x, inp["x"]])
    assert both.execute(1, 2, x=3) == [1, 2, 3, 3]
    with pytest.raises(KeyError, match="no such keyword"):
        inp.y.execute(1, x=2)
    with pytest.raises(TypeError, match="int or a str"):
        inp[1.5]
    with pytest.raises(AttributeError):
        inp._private  # noqa: B018 - private names are not input attributes


def test_an_actor_node_is_made_once_per_execute_and_runs_calls_in_bind_order():
    cls = FakeActorClass()
    node = ClassNode(cls, (10,), {}, {})
    node.inc.bind(1)
    node.inc.bind(2)
    last = node.get.bind()
    node.inc.bind(3)  # bound after the root: not run
    assert last.execute() == (0, "get", ())
    assert [c[0] for c in cls.made[0].calls] == ["inc", "inc", "get"]
    assert [c[1] for c in cls.made[0].calls] == [(1,), (2,), ()]
    both = MultiOutputNode([last, node.get.bind()])
    assert both.execute() == [(1, "get", ()), (1, "get", ())]
    assert len(cls.made) == 2  # one actor per execute, shared by every node that uses it
    assert [c[0] for c in cls.made[1].calls] == ["inc", "inc", "get", "inc", "get"]


def test_an_actor_node_takes_no_input_and_names_only_its_methods():
    cls = FakeActorClass()
    inp = InputNode()
    with pytest.raises(ValueError, match="cannot be an argument of actor 'Fake'"):
        ClassNode(cls, ([inp[0]],), {}, {})
    with pytest.raises(AttributeError, match="no method 'missing'"):
        ClassNode(cls, (), {}, {}).missing  # noqa: B018


def test_multi_output_node_takes_a_list():
    with pytest.raises(ValueError, match="takes a list"):
        MultiOutputNode(InputNode())  # type: ignore[arg-type]
