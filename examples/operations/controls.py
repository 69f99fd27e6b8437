"""Operations, their store and their controls, on the embedded default (no broker).

    python examples/operations/controls.py

An ETL operation of three tasks runs through the in-process transport with a
SQLite store: its second task fails, is fixed, the operation is recovered;
then one task is run again alone (run_one), the tail is re-run (run_from),
a second operation is canceled before it runs, and finished operations are
purged. With Kafka, only the transport changes: see README.md.
"""

import logging
import sys
import tempfile

from cdumay_result import Result

from kser import Operation, OperationRegistry, Store, Task
from kser.memory.broker import get_broker
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer

registry = OperationRegistry()
UPSTREAM = {"ready": False}


@registry.subscribe
class Extract(Task):
    REQUIRED_FIELDS = ("source",)

    def run(self):
        self.log(f"reading {self.params['source']}")
        return Result(uuid=self.uuid, stdout="extracted 3 rows", retval={"rows": [3, 1, 2]})


@registry.subscribe
class Transform(Task):
    def run(self):
        if not UPSTREAM["ready"]:
            return Result(uuid=self.uuid, retcode=503, stderr="upstream service unavailable")
        rows = sorted(self.result.retval["rows"])  # what Extract left
        return Result(uuid=self.uuid, stdout=f"sorted {rows}", retval={"rows": rows})


@registry.subscribe
class Load(Task):
    def run(self):
        self.log(f"loading {self.result.retval['rows']} (attempt {self.attempt})")
        return Result(uuid=self.uuid, stdout="loaded", retval={"loaded": True})


@registry.subscribe
class Etl(Operation):
    REQUIRED_FIELDS = ("source",)
    #: announce the end of every Etl on topic "etl.done"
    ON_EXIT_NOTIFY = {"topic": "etl.done", "payload": {"team": "data"}}
    #: purge successful ones at once (demo), keep failed ones a day
    TTL_STRATEGY = {"seconds_after_success": 0, "seconds_after_failure": 86400}

    def build_tasks(self, **kwargs):
        return [Extract(), Transform(), Load()]


def work():
    """One consumer of the in-process broker, until the topic is drained."""
    consumer = Consumer({"broker": "etl", "group_id": "workers"}, ["etl"])
    consumer.REGISTRY = registry.controller
    consumer.run(until_idle=True)


def show(title, operation_id):
    with registry.store.transaction() as tx:
        op, tasks = tx.operation(operation_id), tx.get_tasks(operation_id)
    print(f"\n{title}: {op.entrypoint} is {op.status}")
    for task in tasks:
        result = task.result or {}
        outcome = result.get("stderr") if task.status == "FAILED" else result.get("stdout")
        print(f"  {task.entrypoint:<28} {task.status:<8} attempt {task.attempt}"
              f"  {outcome or ''}")
    return op, tasks


def main():
    logging.basicConfig(level=logging.CRITICAL)  # the printed states tell the story
    with tempfile.TemporaryDirectory(prefix="kser-example-") as folder:
        store = Store(f"sqlite:///{folder}/kser.db")
        try:
            return tour(store)
        finally:
            store.close()


def tour(store: Store) -> int:
    registry.configure(store=store, producer=Producer({"broker": "etl"}), topic="etl")

    operation = Etl(params={"source": "s3://bucket/day=1"}).send()
    work()
    show("Transform failed", operation.uuid)

    UPSTREAM["ready"] = True
    print(registry.recover(operation.uuid).stdout)
    work()
    _, tasks = show("Recovered", operation.uuid)

    print(registry.run_one(operation.uuid, tasks[2].id).stdout)
    work()
    show("Load run once more", operation.uuid)

    print(registry.run_from(operation.uuid, tasks[1].id).stdout)
    work()
    show("Re-run from Transform", operation.uuid)

    second = Etl(params={"source": "s3://bucket/day=2"}).send()
    print(registry.cancel(second.uuid).stdout)
    work()
    show("Canceled before it ran", second.uuid)

    print(f"\npurged {registry.purge()} finished operation(s) whose TTL expired")
    exits = get_broker("etl").records("etl.done")
    print(f"exit notifications on etl.done: {len(exits)} (one per time the operation ended)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
