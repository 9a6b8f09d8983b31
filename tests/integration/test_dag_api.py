"""Ray's DAG API as Ray documents it: actor nodes, InputNode, MultiOutputNode (issue 16)."""

from __future__ import annotations

import pytest

import taskgraph as tg
from taskgraph.dag import ClassMethodNode, ClassNode, InputNode, MultiOutputNode

pytestmark = pytest.mark.usefixtures("cluster")


@tg.remote(num_cpus=0.5)
def func(src, inc=1):
    return src + inc


@tg.remote(num_cpus=0.5)
def combine(x, y):
    return x + y


@tg.remote(num_cpus=0.5)
class Actor:
    def __init__(self, init_value):
        self.i = init_value

    def inc(self, x):
        self.i += x

    def get(self):
        return self.i

    def pid(self):
        import os

        return os.getpid()


def test_function_nodes_chain_and_share_nodes():
    a_ref = func.bind(1, inc=2)
    assert tg.get(a_ref.execute()) == 3
    b_ref = func.bind(a_ref, inc=3)
    assert tg.get(b_ref.execute()) == 6
    c_ref = func.bind(b_ref, inc=a_ref)
    assert tg.get(c_ref.execute()) == 9


def test_actor_nodes_run_bound_calls_in_order_as_rays_example():
    a1 = Actor.bind(10)
    val = a1.get.bind()
    assert isinstance(a1, ClassNode) and isinstance(val, ClassMethodNode)
    assert tg.get(val.execute()) == 10

    a2 = Actor.bind(10)
    a1.inc.bind(2)
    a1.inc.bind(4)
    a2.inc.bind(6)
    dag = combine.bind(a1.get.bind(), a2.get.bind())
    # The calls bound before get() on each actor run before it: 10+2+4 and 10+6.
    assert tg.get(dag.execute()) == 32


def test_each_execute_creates_the_actor_once():
    node = Actor.bind(0)
    first, second = node.pid.bind(), node.pid.bind()
    dag = MultiOutputNode([first, second, node.get.bind()])
    pids_a = tg.get(dag.execute())
    pids_b = tg.get(dag.execute())
    assert pids_a[0] == pids_a[1] and pids_b[0] == pids_b[1]  # one actor per execute
    assert pids_a[0] != pids_b[0]  # and a new one each time
    assert isinstance(node.execute(), tg.ActorHandle)


def test_input_node_feeds_each_execute_its_own_value():
    @tg.remote(num_cpus=0.5)
    def a(user_input):
        return user_input * 2

    @tg.remote(num_cpus=0.5)
    def b(user_input):
        return user_input + 1

    with InputNode() as dag_input:
        dag = combine.bind(a.bind(dag_input), b.bind(dag_input))
    assert tg.get(dag.execute(2)) == 7
    assert tg.get(dag.execute(3)) == 10
    assert tg.get([dag.execute(i) for i in range(5)]) == [3 * i + 1 for i in range(5)]


def test_input_attributes_items_and_keywords():
    with InputNode() as inp:
        dag = MultiOutputNode([func.bind(inp["x"]), func.bind(inp["y"])])
    refs = dag.execute({"x": 1, "y": 2})
    assert isinstance(refs, list) and all(isinstance(r, tg.ObjectRef) for r in refs)
    assert tg.get(refs) == [2, 3]

    with InputNode() as inp:
        dag = combine.bind(inp[0], inp.x)
    assert tg.get(dag.execute(1, x=2)) == 3  # several arguments: by position and keyword

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    with InputNode() as inp:
        dag = combine.bind(inp.x, inp.y)
    assert tg.get(dag.execute(Point(3, 4))) == 7  # one argument: its attributes
    with InputNode() as inp:
        dag = combine.bind(inp[0], inp[1])
    assert tg.get(dag.execute([2, 3])) == 5  # one list: its items
    assert tg.get(dag.execute(2, 3)) == 5  # two arguments: the same


def test_input_reaches_actor_methods_bound_on_nodes_and_on_handles():
    with InputNode() as inp:
        m1, m2 = Actor.bind(1), Actor.bind(2)
        m1.inc.bind(inp[0])
        m2.inc.bind(inp.x)
        dag = combine.bind(m1.get.bind(), m2.get.bind())
    assert tg.get(dag.execute(1, x=2)) == 2 + 4
    assert tg.get(dag.execute(10, x=20)) == 11 + 22  # new actors: nothing carried over

    worker = Actor.remote(0)  # a live actor: the graph calls it, every execute
    with InputNode() as inp:
        dag = MultiOutputNode([worker.inc.bind(inp), worker.get.bind()])
    assert tg.get(dag.execute(1)) == [None, 1]
    assert tg.get(dag.execute(2)) == [None, 3]
    assert tg.get(worker.get.remote()) == 3


def test_method_options_and_errors_in_graph_building():
    @tg.remote
    class Pair:
        def both(self, x):
            return x, -x

    node = Pair.options(num_cpus=0.5).bind()
    plus, minus = node.both.options(num_returns=2).bind(3).execute()
    assert tg.get([plus, minus]) == [3, -3]
    with pytest.raises(AttributeError, match="no method 'nope'"):
        _ = node.nope
    with pytest.raises(AttributeError, match=r"use \.bind"):
        node.both.remote(1)
    with InputNode() as inp, pytest.raises(ValueError, match="cannot be an argument of actor"):
        Actor.bind(inp)
    with pytest.raises(ValueError, match="takes no arguments"):
        InputNode(1)
    with InputNode() as inp:
        dag = func.bind(inp[2])
    with pytest.raises(IndexError, match="got 2 positional"):
        dag.execute(1, 2)
