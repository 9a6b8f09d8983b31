"""Scheduling strategies a task can ask for, beside the strings "DEFAULT" and "SPREAD"."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    """Run on the node with this id; with ``soft=True``, elsewhere if it has no room."""

    node_id: str
    soft: bool = False

    def encode(self) -> str:
        return f"node?:{self.node_id}" if self.soft else f"node:{self.node_id}"
