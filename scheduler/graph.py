"""The task graph the dashboard's ``/graph`` page draws: its nodes, its edges, where they go.

::

    TaskHistory.since(seq) ──┐  (finished: kept in a window of the last ``keep``)
    state.tasks (live) ──────┴─▶ TaskGraph.update() ── nodes: id -> Node(name, deps), states
                                      │ the set of nodes changed (version + 1)
                                      ▼
                       TaskGraph.shape(): a frozen copy ──layout(shape)──▶ Layout
                                                        (networkx; the shell runs it off the loop)
                       TaskGraph.view(layout): the Layout, with each node's state now ──▶ GraphView

A node is a task: its function's name, its state (the state API's names) and
the tasks whose returns it awaited (its edges). Live tasks are all in the
graph; finished ones stay while they are among the last ``keep`` finished, so
a graph that ran is still there to look at after it ran, and old ones give
way. ``keep`` is twice ``limit``, so a graph that was collapsed while it ran
stays whole (and collapsed) once done rather than shrinking to its last tasks.
Leases are not tasks of the user's graph and are left out.

Where nodes go depends only on which nodes there are (a task's dependencies
never change), so ``layout`` runs when that set changed, on a frozen copy,
and a state change costs one lookup per node. Layers are networkx's
``topological_generations``: x is the generation, y the order within it,
sorted so that edges cross less and placed near each node's parents, so that
chains run straight (see ``positions``); a generation taller than the square
root of the graph wraps into several columns. Above ``limit`` nodes the
graph collapses by function: one node per function name, an edge where a
task of one awaited a task of the other, and the share of its tasks in each
state.

Pure: no clock, no threads, no IO, no bokeh. ``scheduler/graph_page.py``
holds the shell (when to lay out, and where) and the page.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from taskgraph._ids import task_of

from .history import STATE_NAMES

if TYPE_CHECKING:
    from .history import TaskEvent
    from .records import Task

KEEP = 10_000  # finished tasks kept in the graph, the last ones (as many as the history)
LIMIT = 5_000  # nodes drawn one per task; above it, one per function
LEASE = "lease"  # the name the client gives a lease's task (taskgraph/_leases.py)
MIN_ROWS = 32  # a generation wraps into columns above max(MIN_ROWS, sqrt(nodes)) rows
COLUMN = 0.5  # x between the columns of one wrapped generation
GAP = 1.0  # x between one generation's last column and the next one's first

STATES = ("PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "RUNNING", "FINISHED", "FAILED")
STATE_COLORS = {
    "PENDING_ARGS_AVAIL": "#c7c7c7",  # waiting for its arguments
    "PENDING_NODE_ASSIGNMENT": "#7f7f7f",  # ready, waiting for a worker
    "RUNNING": "#1f77b4",
    "FINISHED": "#2ca02c",
    "FAILED": "#d62728",
}  # (the /status page's progress colours, ready a darker grey)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    deps: tuple[bytes, ...]  # the tasks whose returns it awaited (put objects have none)


def node_of(name: str, task_id: bytes, deps: Iterable[bytes]) -> Node:
    parents = dict.fromkeys(task_of(oid) for oid in deps)  # (in order, once each)
    parents.pop(task_id, None)
    return Node(name, tuple(parents))


@dataclass(frozen=True, slots=True)
class Shape:
    """What a layout depends on: the graph's nodes, as they were at ``version``."""

    version: int
    nodes: tuple[tuple[bytes, Node], ...]  # in the order they joined
    limit: int


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each node of one ``Shape`` goes, and its edges, ready to draw."""

    version: int
    collapsed: bool  # a node per function (keys are names) rather than per task
    keys: list[bytes] | list[str]  # task ids, or function names when collapsed
    names: list[str]
    x: list[float]
    y: list[float]
    edges: list[tuple[int, int]]  # (parent, child), as indexes into keys
    weights: list[int]  # the task edges each edge stands for (1 unless collapsed)
    index: dict[Any, int] = field(repr=False)  # key -> its place in keys


EMPTY = Layout(-1, False, [], [], [], [], [], [], {})


@dataclass(frozen=True, slots=True)
class GraphView:
    """One snapshot of the graph as the page draws it: a ``Layout``, and per node
    its state now (a task's), or its tasks' counts by state (a function's)."""

    layout: Layout
    states: list[str]  # a task's state; a function's most common one
    counts: list[dict[str, int]]  # a function's tasks by state (empty unless collapsed)
    nodes: int  # tasks in the graph now (some may not be laid out yet)
    taken: float = 0.0  # wall-clock seconds

    def colors(self) -> list[str]:
        return [STATE_COLORS[s] for s in self.states]

    def to_json(self) -> dict[str, Any]:
        """Nodes with their place and state; edges name their ends (task ids, or
        function names when collapsed) and the task edges they stand for."""
        layout = self.layout
        keys = [k.hex() if isinstance(k, bytes) else k for k in layout.keys]
        if layout.collapsed:
            nodes = [
                {"name": name, "tasks": sum(c.values()), "states": c, "x": x, "y": y}
                for name, c, x, y in zip(layout.names, self.counts, layout.x, layout.y, strict=True)
            ]
        else:
            nodes = [
                {"task_id": key, "name": name, "state": state, "x": x, "y": y}
                for key, name, state, x, y in zip(
                    keys, layout.names, self.states, layout.x, layout.y, strict=True
                )
            ]
        return {
            "time": self.taken,
            "collapsed": layout.collapsed,
            "tasks": self.nodes,
            "nodes": nodes,
            "edges": [
                {"source": keys[s], "target": keys[t], "tasks": n}
                for (s, t), n in zip(layout.edges, layout.weights, strict=True)
            ],
        }


class TaskGraph:
    """The nodes of the graph and their states, updated from the scheduler's records."""

    def __init__(self, keep: int = KEEP, limit: int = LIMIT) -> None:
        self.keep = keep
        self.limit = limit
        self.nodes: dict[bytes, Node] = {}
        self.states: dict[bytes, str] = {}
        self.version = 0  # goes up whenever the set of nodes changes
        self._finished: deque[bytes] = deque()  # finished nodes, oldest first
        self._live: set[bytes] = set()

    def update(self, finished: Iterable[TaskEvent], live: Iterable[Task]) -> None:
        """Take the tasks finished since the last update, then every live one.
        A task that was live and is neither (it finished and fell out of the
        history before it was read) leaves the graph."""
        nodes, states = self.nodes, self.states
        changed = False
        for event in finished:
            if event.name == LEASE and not event.deps and event.type == "NORMAL_TASK":
                continue
            key = event.task_id
            if key not in nodes:
                nodes[key] = node_of(event.name, key, event.deps)
                changed = True
            states[key] = STATE_NAMES[event.state]
            self._live.discard(key)
            self._finished.append(key)
        live_now: set[bytes] = set()
        for task in live:
            spec = task.spec
            if spec.channel_to and not spec.actor_id:  # (w.is_lease, inlined: every live task)
                continue
            key = spec.task_id
            live_now.add(key)
            if key not in nodes:
                nodes[key] = node_of(spec.name, key, spec.deps)
                changed = True
            states[key] = STATE_NAMES[task.state]
        for key in self._live - live_now:  # (those that finished now left _live above)
            del nodes[key], states[key]
            changed = True
        self._live = live_now
        while len(self._finished) > self.keep:
            key = self._finished.popleft()
            if key not in live_now and key in nodes:  # (a retried task may live again)
                del nodes[key], states[key]
                changed = True
        if changed:
            self.version += 1

    def shape(self) -> Shape:
        return Shape(self.version, tuple(self.nodes.items()), self.limit)

    def view(self, layout: Layout, taken: float = 0.0) -> GraphView:
        """``layout`` with the states of its nodes now (one that left the graph
        since it was laid out shows as FINISHED, as it most likely is)."""
        states = self.states
        if not layout.collapsed:
            shown = [states.get(k, "FINISHED") for k in layout.keys if isinstance(k, bytes)]
            return GraphView(layout, shown, [], len(self.nodes), taken)
        counts: list[dict[str, int]] = [{} for _ in layout.keys]
        index = layout.index
        for key, node in self.nodes.items():
            i = index.get(node.name)
            if i is not None:
                state = states[key]
                counts[i][state] = counts[i].get(state, 0) + 1
        common = [max(c, key=c.__getitem__) if c else "FINISHED" for c in counts]
        return GraphView(layout, common, counts, len(self.nodes), taken)


# -- layout ------------------------------------------------------------------


def layout(shape: Shape) -> Layout:
    """Lay ``shape`` out: a node per task, or per function above ``shape.limit`` nodes."""
    nodes = shape.nodes
    if len(nodes) > shape.limit:
        return _collapsed(shape)
    index = {key: i for i, (key, _) in enumerate(nodes)}
    edges = [(index[d], i) for i, (_, node) in enumerate(nodes) for d in node.deps if d in index]
    x, y = positions(len(nodes), edges)
    return Layout(
        shape.version,
        False,
        [key for key, _ in nodes],
        [node.name for _, node in nodes],
        x,
        y,
        edges,
        [1] * len(edges),
        index,
    )


def _collapsed(shape: Shape) -> Layout:
    names: dict[str, int] = {}
    of_task: dict[bytes, int] = {}
    for key, node in shape.nodes:
        of_task[key] = names.setdefault(node.name, len(names))
    weights: dict[tuple[int, int], int] = {}
    for key, node in shape.nodes:
        child = of_task[key]
        for d in node.deps:
            parent = of_task.get(d)
            if parent is not None and parent != child:
                weights[parent, child] = weights.get((parent, child), 0) + 1
    edges = list(weights)
    x, y = positions(len(names), edges)
    keys = list(names)
    return Layout(shape.version, True, keys, keys, x, y, edges, [weights[e] for e in edges], names)


def positions(n: int, edges: Sequence[tuple[int, int]]) -> tuple[list[float], list[float]]:
    """x and y of nodes ``0..n-1``: a column per topological generation (wrapped
    when tall), ordered within it so that edges cross less: by the mean place of
    each node's parents, then of its children, then of its parents again (the
    sweeps of a Sugiyama layout, once each way); each node then as near its
    parents' mean height as the nodes beside it let it, so that chains run straight.

    Only edges to a node that joined later place nodes: a task's dependencies
    joined before it, so for tasks that is every edge, while the edges of a
    cycle among functions (collapsed) that point back are drawn but ignored here."""
    parents: list[list[int]] = [[] for _ in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    graph: nx.DiGraph[int] = nx.DiGraph()
    graph.add_nodes_from(range(n))
    for s, t in edges:
        if s < t:
            parents[t].append(s)
            children[s].append(t)
            graph.add_edge(s, t)
    generations = [sorted(g) for g in nx.topological_generations(graph)]  # (the order they joined)
    place = [0.0] * n  # a node's place within its generation, 0..1
    _order(generations, place)
    for sweep, neighbours in ((generations[1:], parents), (generations[-2::-1], children)):
        for generation in sweep:
            generation.sort(key=lambda node: _mean(place, neighbours[node], place[node]))
            _order([generation], place)
    for generation in generations[1:]:
        generation.sort(key=lambda node: _mean(place, parents[node], place[node]))
        _order([generation], place)
    rows = max(MIN_ROWS, math.ceil(math.sqrt(n)))
    x = [0.0] * n
    down = [0.0] * n  # rows down from the middle (y is its opposite)
    left = 0.0
    for depth, generation in enumerate(generations):
        size = len(generation)
        columns = math.ceil(size / rows)
        if depth and columns == 1:
            _beside_parents(generation, parents, down)
        else:  # the roots, or a generation that wraps: centred, in its order across
            # the columns row by row, so that its order still runs top to bottom
            height = math.ceil(size / columns)
            for rank, node in enumerate(generation):
                row, column = divmod(rank, columns)
                x[node] = column * COLUMN
                down[node] = row - (height - 1) / 2
        for node in generation:
            x[node] += left
        left += (columns - 1) * COLUMN + GAP
    return x, [0.0 - d for d in down]  # (not -d: no -0.0 in the JSON)


def _beside_parents(generation: list[int], parents: list[list[int]], down: list[float]) -> None:
    """Each node as near the mean row of its parents as it can be while each is a
    row below the one before: the least squares fit (pool adjacent violators)."""
    # With row_i = fit_i + i the rule is fit nondecreasing: an isotonic regression.
    blocks: list[list[float]] = []  # [sum, count] of runs pooled to their mean
    for i, node in enumerate(generation):
        blocks.append([_mean(down, parents[node], 0.0) - i, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    i = 0
    for total, count in blocks:
        for _ in range(int(count)):
            down[generation[i]] = total / count + i
            i += 1


def _order(generations: list[list[int]], place: list[float]) -> None:
    for generation in generations:
        size = len(generation)
        for rank, node in enumerate(generation):
            place[node] = rank / size


def _mean(place: list[float], neighbours: list[int], otherwise: float) -> float:
    return sum(place[p] for p in neighbours) / len(neighbours) if neighbours else otherwise
