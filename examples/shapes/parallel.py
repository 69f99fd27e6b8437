"""A parallel group and a DAG, on the embedded default (no broker).

    python examples/shapes/parallel.py

A nightly report: one task fetches, three render in parallel (each takes a
second), one publishes once all three are done. Two workers of one group run
it, each running up to three tasks at once (`kser worker --concurrency 3`), so
the group takes about one second, not three. Then the same shape wired as a
DAG with ``>>``, where the last task reads each upstream result by name.
With Kafka, only the transport changes: see README.md.
"""

import logging
import sys
import tempfile
import threading
import time

from cdumay_result import Result

from kser import Operation, OperationRegistry, Parallel, Settings, Store, Task
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()


@registry.subscribe
class Fetch(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout="fetched", retval={"rows": 120})


@registry.subscribe
class Render(Task):
    """Renders one format; takes a second."""

    def run(self):
        time.sleep(1.0)
        fmt = self.params["format"]
        return Result(uuid=self.uuid, stdout=f"{fmt} rendered",
                      retval={fmt: f"report.{fmt} ({self.result.retval['rows']} rows)"})


@registry.subscribe
class Publish(Task):
    def run(self):
        rendered = sorted(k for k in self.result.retval if k != "rows")  # merged results
        by_name = ", ".join(f"{name}: {r.stdout}" for name, r in
                            sorted(self.upstream_results.items()))
        return Result(uuid=self.uuid, stdout=f"published {rendered} ({by_name})")


@registry.subscribe
class Nightly(Operation):
    """fetch ──┬── pdf ──┬── publish
               ├── html ─┤
               └── csv ──┘"""

    def build_tasks(self, **kwargs):
        return [Fetch(name="fetch"),
                Parallel(*(Render(name=f, params={"format": f}) for f in ("pdf", "html", "csv"))),
                Publish(name="publish")]


@registry.subscribe
class NightlyDag(Operation):
    """The same shape, wired with >>."""

    def build_tasks(self, **kwargs):
        fetch, publish = Fetch(name="fetch"), Publish(name="publish")
        renders = [Render(name=f, params={"format": f}) for f in ("pdf", "html", "csv")]
        fetch >> renders >> publish
        return [fetch, *renders, publish]


class Workers:
    """Two workers of one group, three tasks at once each (threads here; `kser worker
    --concurrency 3` processes with Kafka)."""

    def __init__(self, broker):
        self.consumers = [Consumer({"broker": broker, "group_id": "workers"}, ["reports"],
                                   settings=Settings(concurrency=3)) for _ in range(2)]
        self.threads = []
        for consumer in self.consumers:
            consumer.controller = registry.controller
            self.threads.append(threading.Thread(target=consumer.run,
                                                 kwargs=dict(until_idle=False)))
            self.threads[-1].start()

    def stop(self):
        for consumer in self.consumers:
            consumer.stop()
        for thread in self.threads:
            thread.join()


def run(operation_class):
    start = time.monotonic()
    operation = operation_class().send()
    while True:  # until the operation ended
        with registry.store.transaction() as tx:
            op = tx.operation(operation.uuid)
        if op.status != "RUNNING" or time.monotonic() - start > 30:
            break
        time.sleep(0.05)
    took = time.monotonic() - start
    with registry.store.transaction() as tx:
        tasks = tx.get_tasks(operation.uuid)
    print(f"\n{operation_class.__name__} is {op.status} in {took:.1f} s")
    for task in tasks:
        print(f"  {task.name:<8} {task.status:<8} {task.result['stdout']}")


def main():
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="kser-example-") as folder:
        store = Store(f"sqlite:///{folder}/kser.db")
        try:
            registry.configure(store=store, producer=Producer({"broker": "shapes"}),
                               topic="reports")
            workers = Workers("shapes")
            try:
                run(Nightly)
                run(NightlyDag)
            finally:
                workers.stop()
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
