"""Lazy task graphs, Ray's DAG API: ``.bind(...)`` records a node, ``.execute()`` submits.

Nothing is submitted while a graph is built. ``execute(*args, **kwargs)``
walks it once, submits every node in dependency order into the client's
pending graph (which leaves as one batch) and returns what the root makes:
a ref (or a list of refs, a ``MultiOutputNode``'s; a handle, an actor
node's). A node used twice in one graph runs once per ``execute``.

::

    with InputNode() as inp:               # what execute() is given
        model = Model.bind(2)              # ClassNode: an actor, made per execute
        out = model.forward.bind(inp.x)    # ClassMethodNode: a call on it
        dag = MultiOutputNode([out, f.bind(inp[0])])
    refs = dag.execute(1, x=3)             # inp[0] is 1, inp.x is 3

Method calls bound on one actor node run in the order they were bound: a
call that is submitted first submits the calls bound before it (Ray's
rule), even those the root does not reach otherwise. A method bound on a
live actor's handle (``handle.m.bind(...)``) calls that actor every time.
"""

from __future__ import annotations

from typing import Any

from taskgraph._object_ref import ObjectRef


class _Run:
    """One ``execute()``: its input, and what each node made (by node identity)."""

    __slots__ = ("args", "done", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.done: dict[int, Any] = {}


class DAGNode:
    """A node of a lazy graph; ``execute(...)`` submits the graph it roots."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the graph; ``args`` and ``kwargs`` are what its ``InputNode`` stands for."""
        return self._execute(_Run(args, kwargs))

    def _execute(self, run: _Run) -> Any:
        key = id(self)
        if key not in run.done:
            run.done[key] = self._make(run)
        return run.done[key]

    def _make(self, run: _Run) -> Any:
        raise NotImplementedError


class FunctionNode(DAGNode):
    """``f.bind(...)``: a task, submitted per execute."""

    def __init__(
        self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> None:
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._options = options

    def __repr__(self) -> str:
        return f"FunctionNode({self._function._name}, {len(self._args)} args)"

    def _make(self, run: _Run) -> Any:
        args, kwargs = _resolve(self._args, run), _resolve(self._kwargs, run)
        return self._function._remote(args, kwargs, self._options)


class ClassNode(DAGNode):
    """``ActorClass.bind(...)``: an actor, created once per execute; its methods bind."""

    def __init__(
        self,
        actor_class: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        if _has_input((args, kwargs)):
            raise ValueError(
                f"an InputNode cannot be an argument of actor '{actor_class.__name__}': the "
                "actor is made before the input is known; pass it to a method's .bind() instead"
            )
        self._actor_class = actor_class
        self._args = args
        self._kwargs = kwargs
        self._options = options
        self._last_call: ClassMethodNode | None = None

    def __repr__(self) -> str:
        return f"ClassNode({self._actor_class.__qualname__})"

    def __getattr__(self, name: str) -> _UnboundMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        actor_class = self.__dict__.get("_actor_class")
        if actor_class is None or name not in actor_class._methods:
            what = actor_class.__name__ if actor_class is not None else "?"
            raise AttributeError(f"actor '{what}' has no method '{name}'")
        return _UnboundMethod(self, name, {})

    def _make(self, run: _Run) -> Any:
        args, kwargs = _resolve(self._args, run), _resolve(self._kwargs, run)
        return self._actor_class._remote(args, kwargs, self._options)


class _UnboundMethod:
    """``node.method``: bind it (``.bind(...)``), maybe after ``.options(...)``."""

    def __init__(self, actor: ClassNode, name: str, options: dict[str, Any]) -> None:
        self._actor = actor
        self._name = name
        self._options = options

    def options(self, **options: Any) -> _UnboundMethod:
        from taskgraph.actor import validate_method_options

        return _UnboundMethod(self._actor, self._name, validate_method_options(options))

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        node = ClassMethodNode(
            self._actor, self._name, args, kwargs, self._options, self._actor._last_call
        )
        self._actor._last_call = node
        return node

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError(
            f"'{self._name}' of an actor node is called in a graph: use .bind(...), then "
            "execute() the graph"
        )


class ClassMethodNode(DAGNode):
    """``actor_node.m.bind(...)`` or ``handle.m.bind(...)``: a method call, per execute."""

    def __init__(
        self,
        actor: ClassNode | Any,  # a ClassNode, or a live actor's handle
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        previous: ClassMethodNode | None = None,
    ) -> None:
        self._actor = actor
        self._name = name
        self._args = args
        self._kwargs = kwargs
        self._options = options
        self._previous = previous  # bound before this one on the same actor node

    def __repr__(self) -> str:
        return f"ClassMethodNode({self._name}, {len(self._args)} args)"

    def _make(self, run: _Run) -> Any:
        if self._previous is not None:
            self._previous._execute(run)  # submitted first: calls run in bind order
        handle = self._actor._execute(run) if isinstance(self._actor, DAGNode) else self._actor
        args, kwargs = _resolve(self._args, run), _resolve(self._kwargs, run)
        return getattr(handle, self._name)._remote(args, kwargs, self._options)


class InputNode(DAGNode):
    """What ``execute(...)`` is given, as Ray's: use it as ``with InputNode() as inp:``.

    One argument and no keywords: ``inp`` is that value, and ``inp[0]``,
    ``inp["k"]`` and ``inp.x`` index it or read its attribute. Otherwise
    ``inp[i]`` is the i-th argument and ``inp.x`` or ``inp["x"]`` the keyword ``x``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise ValueError(
                "InputNode() takes no arguments: give the input to execute(...) instead"
            )

    def __enter__(self) -> InputNode:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return "InputNode()"

    def __getattr__(self, name: str) -> InputAttributeNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, "attribute")

    def __getitem__(self, key: int | str) -> InputAttributeNode:
        if not isinstance(key, int | str) or isinstance(key, bool):
            raise TypeError(f"index an InputNode with an int or a str, got {key!r}")
        return InputAttributeNode(self, key, "item")

    def _make(self, run: _Run) -> Any:
        if len(run.args) == 1 and not run.kwargs:
            return run.args[0]
        return DAGInputData(run.args, run.kwargs)


class InputAttributeNode(DAGNode):
    """``inp[key]`` or ``inp.name``: part of the input, read per execute."""

    def __init__(self, input_node: InputNode, key: int | str, how: str) -> None:
        self._input = input_node
        self._key = key
        self._how = how  # "item" | "attribute"

    def __repr__(self) -> str:
        return f"InputNode()[{self._key!r}]" if self._how == "item" else f"InputNode().{self._key}"

    def _make(self, run: _Run) -> Any:
        value = self._input._execute(run)
        if isinstance(value, DAGInputData):
            return value[self._key]
        if self._how == "attribute":
            return getattr(value, str(self._key))
        return value[self._key]


class DAGInputData:
    """Several arguments to ``execute``: ``[i]`` is a positional one, ``[name]`` a keyword."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._args = args
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            if key >= len(self._args):
                raise IndexError(
                    f"the graph reads input [{key}], but execute() got {len(self._args)} "
                    "positional argument(s)"
                )
            return self._args[key]
        if key not in self._kwargs:
            raise KeyError(f"the graph reads input {key!r}, but execute() got no such keyword")
        return self._kwargs[key]


class MultiOutputNode(DAGNode):
    """Several roots at once: ``execute()`` returns a list, one item per node given."""

    def __init__(self, nodes: list[Any] | tuple[Any, ...]) -> None:
        if not isinstance(nodes, list | tuple):
            raise ValueError(f"MultiOutputNode takes a list of nodes, got {type(nodes).__name__}")
        self._nodes = list(nodes)

    def __repr__(self) -> str:
        return f"MultiOutputNode({len(self._nodes)} nodes)"

    def _make(self, run: _Run) -> Any:
        return [_resolve(node, run) for node in self._nodes]


def _resolve(value: Any, run: _Run) -> Any:
    if isinstance(value, DAGNode):
        return value._execute(run)
    if isinstance(value, list):
        return [_resolve(v, run) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v, run) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, run) for k, v in value.items()}
    return value


def _has_input(value: Any) -> bool:
    """Whether an InputNode (or a part of one) is among ``value``'s nodes."""
    if isinstance(value, InputNode | InputAttributeNode):
        return True
    if isinstance(value, FunctionNode | ClassNode | ClassMethodNode):
        return _has_input((value._args, value._kwargs)) or (
            isinstance(value, ClassMethodNode) and _has_input(value._actor)
        )
    if isinstance(value, MultiOutputNode):
        return _has_input(value._nodes)
    if isinstance(value, list | tuple):
        return any(_has_input(v) for v in value)
    if isinstance(value, dict):
        return any(_has_input(v) for v in value.values())
    return False


__all__ = [
    "ClassMethodNode",
    "ClassNode",
    "DAGInputData",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
    "ObjectRef",
]
