"""Shapes of operations: chains, parallel groups, DAGs, branches, skips.

``Operation.build_tasks`` returns either

- a list, run in order (a chain), where an element may be ``Parallel(a, b, c)``: the
  three run at once after what precedes, and what follows waits for all of them;
  ``Parallel`` holds tasks, lists (chains) and other ``Parallel`` groups::

      [extract, Parallel(clean, [enrich, geocode]), load]

          extract ──┬── clean ─────────────┬── load
                    └── enrich ── geocode ─┘

- or tasks wired with ``>>`` (``extract >> [clean, enrich] >> load``, or
  ``load.set_upstream(clean, enrich)``), returned as a list of every task: a DAG.

:func:`wire` turns either into each task's :attr:`~kser.sequencing.task.Task.upstream`,
names the tasks, and refuses a cycle or a dependency on a task the operation lacks.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Sequence
from typing import Any, Union

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.entry import Entrypoint
from kser.sequencing.task import SkipTask, Task

__all__ = ["Branch", "Parallel", "Sensor", "SkipTask", "wire"]

#: what build_tasks' list may hold
Shape = Union[Task, "Parallel", Sequence["Shape"]]


class Parallel:
    """Branches that run at once: each a task, a list (a chain) or another ``Parallel``.

    In a chain, the tasks after a ``Parallel`` wait for every branch to end.
    """

    def __init__(self, *branches: Shape) -> None:
        if not branches:
            raise ValidationError("Parallel() needs at least one branch")
        self.branches: tuple[Shape, ...] = branches

    def __repr__(self) -> str:
        return f"Parallel({', '.join(map(repr, self.branches))})"


class Branch(Task):
    """A task that chooses which of its direct downstream tasks run.

    :meth:`choose` returns the name (or names) of the downstream tasks to follow; the
    others are SKIPPED (and what depends only on them, by their trigger rules). Its
    result's ``retval["followed"]`` lists the names chosen.
    """

    def choose(self) -> str | list[str]:
        """The names of the downstream tasks to follow (to implement)."""
        raise NotImplementedError(f"{type(self).path}.choose() is not implemented")

    def run(self) -> Result:
        chosen = self.choose()
        names = [chosen] if isinstance(chosen, str) else list(chosen)
        if not all(isinstance(name, str) for name in names):
            raise TypeError(f"{type(self).path}.choose() must return a task name or a list "
                            f"of names, not {chosen!r}")
        self.followed = names
        return Result(uuid=self.uuid, stdout=f"following {', '.join(names) or 'nothing'}",
                      retval={"followed": names})


class Sensor(Task):
    """A task that waits for a condition: :meth:`poke` is called every
    :attr:`POKE_INTERVAL` seconds until it returns True (SUCCESS) or :attr:`TIMEOUT`
    seconds passed since the first poke (FAILED).

    Between two pokes nothing is held: no worker thread, no consumer, no partition. A
    poke that finds the condition unmet ends at once, without using up an attempt
    (``MAX_RETRIES`` counts failures only), and the next poke is a delayed message
    from the store, as a retry's is. :attr:`pokes` says how many pokes came before.
    """

    #: seconds between two pokes
    POKE_INTERVAL: float = 5.0
    #: seconds after the first poke at which the sensor fails (its condition never met)
    TIMEOUT: float = 3600.0

    #: pokes that found the condition unmet before this one (set by kser)
    pokes: int = 0

    def poke(self) -> bool:
        """True once the condition is met (to implement)."""
        raise NotImplementedError(f"{type(self).path}.poke() is not implemented")

    def run(self) -> Result:
        if self.poke():
            return Result(uuid=self.uuid, stdout=f"{self.name or type(self).__name__}: "
                          f"condition met at poke {self.pokes + 1}")
        self.waiting = True
        return Result(uuid=self.uuid, stdout="condition not met yet")


def wire(operation: Entrypoint, items: Iterable[Any]) -> list[Task]:
    """The tasks ``build_tasks`` returned, flattened, each with its upstream tasks set,
    named (unique in the operation) and checked for cycles.

    :raises ValidationError: not a task, a cycle (naming its tasks), a dependency on a
        task that is not in the operation, a name used twice, ``Parallel`` mixed with ``>>``
    """
    items = list(items)
    owner = type(operation).path
    tasks = _flatten(items, owner)
    explicit = any(task.upstream for task in tasks)
    if explicit:
        if any(isinstance(item, Parallel | list | tuple) for item in items):
            raise ValidationError(
                f"{owner}.build_tasks() mixes Parallel (or nested lists) with tasks wired "
                "with >>: use one or the other (>> can express any shape)")
    else:
        _chain(items, [], owner)
    _name(tasks, owner)
    known = {id(task) for task in tasks}
    for task in tasks:
        for upstream in task.upstream:
            if id(upstream) not in known:
                raise ValidationError(
                    f"Task {task.name} of {owner} depends on {_label(upstream)}, which is "
                    "not in the operation: return it from build_tasks() too",
                    extra=dict(task=task.name))
    graph = {task.name: {up.name for up in task.upstream} for task in tasks}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        raise ValidationError(
            f"The tasks of {owner} form a cycle: {' >> '.join(cycle)}; a task "
            "cannot wait for itself", extra=dict(cycle=list(cycle))) from None
    return tasks


def _flatten(items: Iterable[Any], owner: str) -> list[Task]:
    tasks: list[Task] = []
    seen: set[int] = set()

    def visit(item: Any) -> None:
        if isinstance(item, Task):
            if id(item) in seen:
                raise ValidationError(f"{owner}.build_tasks() returned the task "
                                      f"{_label(item)} twice")
            seen.add(id(item))
            tasks.append(item)
        elif isinstance(item, Parallel):
            for branch in item.branches:
                visit(branch)
        elif isinstance(item, list | tuple):
            for element in item:
                visit(element)
        else:
            raise ValidationError(f"{owner}.build_tasks() returned {item!r}: expected Task "
                                  "instances, lists of them or Parallel(...)")

    visit(items)
    return tasks


def _chain(item: Any, before: list[Task], owner: str) -> list[Task]:
    """Wire ``item`` after the tasks ``before``; return the tasks that end it."""
    if isinstance(item, Task):
        item.upstream = list(before)
        return [item]
    if isinstance(item, Parallel):
        ends: list[Task] = []
        for branch in item.branches:
            ends.extend(_chain(branch, before, owner))
        return ends
    for element in item:  # a list: a chain
        before = _chain(element, before, owner)
    return before


def _name(tasks: list[Task], owner: str) -> None:
    """Give every unnamed task its class's name (``-2``, ``-3``... when taken)."""
    taken: set[str] = set()
    for task in tasks:
        if task.name is not None:
            if task.name in taken:
                raise ValidationError(f"Two tasks of {owner} are named {task.name!r}: a name "
                                      "is unique in its operation",
                                      extra=dict(task=task.name))
            taken.add(task.name)
    for task in tasks:
        if task.name is None:
            base, number = type(task).__name__, 1
            name = base
            while name in taken:
                number += 1
                name = f"{base}-{number}"
            task.name = name
            taken.add(name)


def _label(task: Task) -> str:
    return task.name or f"{type(task).__name__}[{task.uuid}]"
