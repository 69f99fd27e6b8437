"""Sub-operations and built-in tasks, on the embedded default (no broker).

    python examples/shapes/sub_operations.py

A nightly operation runs two regional loads in parallel, each an operation of
its own (a child: its own row, its own tasks), then archives with a command
and checks the disk with a plain Python function (any importable function:
here the standard library's ``shutil.disk_usage``):

    extract ──┬── europe (child: fetch ── load) ────┬── archive ── space
              └── americas (child: fetch ── load) ──┘   (ShellTask)  (PythonTask)

The parent's tasks for the children hold no worker while the children run.
"""

import logging
import shutil
import sys
import tempfile

from cdumay_result import Result

from kser import Operation, OperationRegistry, Parallel, PythonTask, ShellTask, Store, Task
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()


@registry.subscribe
class Fetch(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout=f"fetched {self.params['region']}")


@registry.subscribe
class Load(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout=f"loaded {self.params['region']}",
                      retval={self.params["region"]: "loaded"})


@registry.subscribe
class RegionalLoad(Operation):
    def build_tasks(self, region, **kwargs):
        return [Fetch(name="fetch", params={"region": region}),
                Load(name="load", params={"region": region})]


@registry.subscribe
class Nightly(Operation):
    def build_tasks(self, **kwargs):
        regions = ["europe", "americas"]
        return [Fetch(name="extract", params={"region": "all"}),
                Parallel(*(RegionalLoad(name=r, params={"region": r}) for r in regions)),
                ShellTask([sys.executable, "-c", "print('archived')"], name="archive"),
                PythonTask(shutil.disk_usage, "/", name="space")]


def main():
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="kser-example-") as folder:
        store = Store(f"sqlite:///{folder}/kser.db")
        try:
            registry.configure(store=store, producer=Producer({"broker": "nightly"}),
                               topic="nightly")
            operation = Nightly().send()
            worker = Consumer({"broker": "nightly", "group_id": "workers"}, ["nightly"])
            worker.controller = registry.controller
            worker.run(until_idle=True)
            with registry.store.transaction() as tx:
                op, tasks = tx.operation(operation.uuid), tx.get_tasks(operation.uuid)
                total, _, free = op.result["retval"]["return"]  # disk_usage's return value
                print(f"Nightly is {op.status}: europe {op.result['retval']['europe']}, "
                      f"americas {op.result['retval']['americas']}, "
                      f"{100 * free // total}% of the disk free")
                for task in tasks:
                    said = task.result["stdout"].strip().splitlines()[-1]
                    print(f"  {task.name:<9} {task.status:<8} {said}")
                    child = tx.get_operation(task.id)
                    for child_task in tx.get_tasks(task.id) if child else []:
                        print(f"    {child_task.name:<7} {child_task.status:<8} "
                              f"{child_task.result['stdout']}  (in child {child.id[:8]})")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
