"""Branches, skips and trigger rules, on the embedded default (no broker).

    python examples/shapes/branching.py

An import job looks at what arrived and takes one of two roads (a Branch): a
full load or a delta. The delta road skips its own cleanup when there is
nothing to clean (SkipTask); publish runs when nothing before it failed
(``none_failed``: skipped tasks are fine). Whatever happened, an ``all_done``
task closes the import; a ``one_failed`` task pages someone when a step failed,
and fails itself, so that the operation ends FAILED (a failure followed by a
task that ran and succeeded counts as handled).

    check ──┬── full ──────────────┬── publish ── close (all_done)
            └── delta ── cleanup ──┘
    page (one_failed) waits for full, delta, cleanup and publish
"""

import logging
import sys
import tempfile

from cdumay_result import Result

from kser import Branch, Operation, OperationRegistry, SkipTask, Store, Task
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()


@registry.subscribe
class Check(Branch):
    def choose(self):
        return "full" if self.params["files"] > 100 else "delta"


@registry.subscribe
class Load(Task):
    def run(self):
        if self.params.get("broken"):
            return Result(uuid=self.uuid, retcode=500, stderr=f"{self.name}: disk full")
        return Result(uuid=self.uuid, stdout=f"{self.name} load of {self.params['files']} files")


@registry.subscribe
class Cleanup(Task):
    def run(self):
        if self.params["files"] == 0:
            raise SkipTask("nothing arrived, nothing to clean")
        return Result(uuid=self.uuid, stdout="cleaned")


@registry.subscribe
class Note(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout=self.params["note"])


@registry.subscribe
class Page(Task):
    def run(self):
        failed = sorted(n for n, r in self.upstream_results.items() if r.retcode >= 300)
        return Result(uuid=self.uuid, retcode=500, stderr=f"paged someone: {failed} failed")


@registry.subscribe
class Import(Operation):
    def build_tasks(self, **kwargs):
        check, full, delta = Check(name="check"), Load(name="full"), Load(name="delta")
        cleanup = Cleanup(name="cleanup")
        publish = Note(name="publish", params={"note": "published"}, trigger_rule="none_failed")
        close = Note(name="close", params={"note": "import closed"}, trigger_rule="all_done")
        page = Page(name="page", trigger_rule="one_failed")
        check >> [full, delta]
        delta >> cleanup
        [full, cleanup] >> publish >> close
        [full, delta, cleanup, publish] >> page
        return [check, full, delta, cleanup, publish, close, page]


def work():
    consumer = Consumer({"broker": "imports", "group_id": "workers"}, ["imports"])
    consumer.controller = registry.controller
    consumer.run(until_idle=True)


def show(title, params):
    operation = Import(params=params).send()
    work()
    with registry.store.transaction() as tx:
        op, tasks = tx.operation(operation.uuid), tx.get_tasks(operation.uuid)
    print(f"\n{title}: {op.status}")
    for task in tasks:
        result = task.result or {}
        said = result.get("stderr") if task.status == "FAILED" else result.get("stdout")
        print(f"  {task.name:<8} {task.status:<8} {said}")


def main():
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="kser-example-") as folder:
        store = Store(f"sqlite:///{folder}/kser.db")
        try:
            registry.configure(store=store, producer=Producer({"broker": "imports"}),
                               topic="imports")
            show("500 files: the full road", {"files": 500})
            show("3 files: the delta road", {"files": 3})
            show("nothing arrived: the delta road, cleanup skipped", {"files": 0})
            show("a broken full load", {"files": 500, "broken": True})
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
