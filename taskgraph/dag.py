"""Lazy task graphs: ``f.bind(...)`` records a node, ``node.execute()`` submits them all.

Nothing is submitted while a graph is built. ``execute()`` walks it once,
submits every node in dependency order into the client's pending graph
(which leaves as one batch) and returns the root's ref. A node used twice
runs once.
"""

from __future__ import annotations

from typing import Any

from taskgraph._object_ref import ObjectRef


class DAGNode:
    def execute(self) -> Any:
        return self._execute({})

    def _execute(self, done: dict[int, Any]) -> Any:
        raise NotImplementedError


class FunctionNode(DAGNode):
    def __init__(
        self, function: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> None:
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._options = options

    def __repr__(self) -> str:
        return f"FunctionNode({self._function._name}, {len(self._args)} args)"

    def _execute(self, done: dict[int, Any]) -> Any:
        key = id(self)
        if key in done:
            return done[key]
        args = tuple(_resolve(a, done) for a in self._args)
        kwargs = {k: _resolve(v, done) for k, v in self._kwargs.items()}
        ref = self._function._remote(args, kwargs, self._options)
        done[key] = ref
        return ref


def _resolve(value: Any, done: dict[int, Any]) -> Any:
    if isinstance(value, DAGNode):
        return value._execute(done)
    if isinstance(value, list):
        return [_resolve(v, done) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(v, done) for v in value)
    if isinstance(value, dict):
        return {k: _resolve(v, done) for k, v in value.items()}
    return value


__all__ = ["DAGNode", "FunctionNode", "ObjectRef"]
