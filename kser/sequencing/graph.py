"""How results flow through an operation's tasks, and which tasks depend on which: the
dependencies are rows of the store (a chain is task n depending on task n-1)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cdumay_result import Result

from kser.schemas import dump_result
from kser.status import Status
from kser.store.rows import OperationRow, TaskRow


def load_result(data: Mapping[str, Any] | None, uuid_: str | None = None) -> Result:
    if not data:
        return Result(uuid=uuid_)
    loaded = Result(**{k: v for k, v in data.items() if k in
                       ("uuid", "retcode", "stdout", "stderr", "retval")})
    # (a copy: Result's + updates its left side's retval in place, which would change
    # ``data``, a stored or forwarded result, under its other readers)
    loaded.retval = dict(loaded.retval)
    return loaded


def forwarded(op: OperationRow, tasks: Mapping[str, TaskRow],
              dependencies: Iterable[str]) -> dict[str, Any] | None:
    """The result a task receives: its upstream tasks' results merged (of those that
    succeeded), else the one the operation was sent with."""
    dependencies = list(dependencies)
    if not dependencies:
        return op.initial_result
    if len(dependencies) == 1 and tasks[dependencies[0]].status == Status.SUCCESS:
        return tasks[dependencies[0]].result
    return merged([tasks[dep].result for dep in
                   sorted(dependencies, key=lambda d: tasks[d].position)
                   if tasks[dep].status == Status.SUCCESS])


def merged(results: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Results merged in order (``Result`` addition), as the next task receives them."""
    merged = Result()
    for result in results:
        merged = merged + load_result(result)
    return dump_result(merged)


def descendants(dependencies: Mapping[str, set[str]], task: TaskRow) -> list[str]:
    """``task`` and every task that (transitively) depends on it."""
    found, frontier = [task.id], [task.id]
    while frontier:
        current = frontier.pop()
        for tid, deps in dependencies.items():
            if current in deps and tid not in found:
                found.append(tid)
                frontier.append(tid)
    return found
