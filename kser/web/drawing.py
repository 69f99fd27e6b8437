"""What the web UI draws, computed on the server: an operation's task graph in layers
(each task one layer right of its deepest upstream task) and the timeline of its
attempts. The templates turn these boxes and bars into SVG; no script draws anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: size of a task's box and the gaps between layers and rows, in SVG units (pixels)
NODE_WIDTH, NODE_HEIGHT = 150, 40
LAYER_GAP, ROW_GAP, MARGIN = 60, 18, 10
#: timeline: height of an attempt's row, width of its bars' area, of the task names
#: before it and of the worker names after it
TIMELINE_ROW, TIMELINE_WIDTH, TIMELINE_LABEL, TIMELINE_TAIL = 22, 620, 170, 150


@dataclass(frozen=True)
class Node:
    task: dict[str, Any]
    x: int
    y: int

    @property
    def cx(self) -> int:
        return self.x + NODE_WIDTH // 2


@dataclass(frozen=True)
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def path(self) -> str:
        """A smooth curve from the upstream box's right side to the task's left side."""
        middle = (self.x1 + self.x2) // 2
        return (f"M{self.x1},{self.y1} C{middle},{self.y1} {middle},{self.y2} "
                f"{self.x2},{self.y2}")


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: int
    height: int


def layers(tasks: list[dict[str, Any]]) -> dict[str, int]:
    """Each task's layer: 0 without upstream tasks, else one more than its deepest
    upstream task's (tasks are listed in the order their operation built them, and a
    task's upstream tasks were built before it; an unknown id is ignored)."""
    known = {task["id"] for task in tasks}
    depth: dict[str, int] = {}
    pending = list(tasks)
    while pending:  # (one pass when upstream tasks come first, as kser lists them)
        left = []
        for task in pending:
            deps = [d for d in task["depends_on"] if d in known]
            if all(d in depth for d in deps):
                depth[task["id"]] = 1 + max((depth[d] for d in deps), default=-1)
            else:
                left.append(task)
        if len(left) == len(pending):  # a cycle cannot be stored; never loop on one
            for task in left:
                depth[task["id"]] = 0
            break
        pending = left
    return depth


def graph(tasks: list[dict[str, Any]]) -> Graph:
    """The layered drawing of ``tasks`` (an operation's, as the API gives them)."""
    depth = layers(tasks)
    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for task in tasks:
        layer = depth[task["id"]]
        row = rows.get(layer, 0)
        rows[layer] = row + 1
        nodes[task["id"]] = Node(task, MARGIN + layer * (NODE_WIDTH + LAYER_GAP),
                                 MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    edges = [Edge(nodes[d].x + NODE_WIDTH, nodes[d].y + NODE_HEIGHT // 2,
                  node.x, node.y + NODE_HEIGHT // 2)
             for node in nodes.values() for d in node.task["depends_on"] if d in nodes]
    width = MARGIN * 2 + (max(depth.values(), default=0) + 1) * (NODE_WIDTH + LAYER_GAP)
    height = MARGIN * 2 + max(rows.values(), default=1) * (NODE_HEIGHT + ROW_GAP)
    return Graph(list(nodes.values()), edges, width - LAYER_GAP, height - ROW_GAP)


@dataclass(frozen=True)
class Bar:
    task: str
    attempt: dict[str, Any]
    y: int
    x: int
    width: int


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]
    width: int
    height: int
    seconds: float


def _epoch(iso: Any) -> float | None:
    if iso is None:
        return None
    if isinstance(iso, datetime):
        return iso.timestamp()
    return datetime.fromisoformat(str(iso)).timestamp()


def timeline(attempts: list[tuple[str, dict[str, Any]]], now: float) -> Timeline:
    """A bar per attempt (``(task name, attempt)`` pairs, as the API gives attempts),
    placed on a common time axis from the first start; a running one ends at ``now``."""
    spans: list[tuple[str, dict[str, Any], float, float]] = []
    for name, attempt in attempts:
        started = _epoch(attempt["started_at"])
        if started is not None:
            spans.append((name, attempt, started, _epoch(attempt["finished_at"]) or now))
    if not spans:
        return Timeline([], TIMELINE_LABEL + TIMELINE_WIDTH + TIMELINE_TAIL, 0, 0.0)
    start = min(s for _, _, s, _ in spans)
    seconds = max(max(f for _, _, _, f in spans) - start, 1e-3)
    scale = TIMELINE_WIDTH / seconds
    bars = [Bar(name, attempt, index * TIMELINE_ROW,
                TIMELINE_LABEL + int((s - start) * scale),
                max(2, int((f - s) * scale)))
            for index, (name, attempt, s, f) in enumerate(spans)]
    return Timeline(bars, TIMELINE_LABEL + TIMELINE_WIDTH + TIMELINE_TAIL,
                    len(bars) * TIMELINE_ROW, seconds)
