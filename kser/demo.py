"""The embedded default: the dice game of kser's documentation, in one process.

``kser demo`` launches one ``DiceLaunch`` operation on the in-process
transport with a SQLite store, and runs a consumer until the topic is
drained: each roll is a message of its own, and every state is in the store.
"""

from __future__ import annotations

import random
from typing import Any

from cdumay_result import Result

from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()

#: the in-process broker and topic the demo uses
BROKER, TOPIC = "demo", "dice"


@registry.subscribe
class DiceRoll(Task):
    """Roll one die; its value is added to the operation's ``retval["rolls"]``."""

    def run(self) -> Result:
        value = random.randint(1, 6)
        rolls = [*self.result.retval.get("rolls", []), value]
        self.log(f"rolled a {value}")
        return Result(uuid=self.uuid, stdout=f"You made a {value}", retval={"rolls": rolls})


@registry.subscribe
class DiceLaunch(Operation):
    """Roll ``dice`` dice (default 3), one task each."""

    def build_tasks(self, dice: int = 3, **kwargs: Any) -> list[Task]:
        return [DiceRoll() for _ in range(int(dice))]


def run_demo(dice: int = 3, store_url: str | None = None) -> dict[str, Any]:
    """Launch one DiceLaunch and consume until done; return the operation as stored.

    :param store_url: the store (default ``KSER_STORE_URL``, the SQLite file
        ``.kser/kser.db``; ``kser demo`` uses ``.kser/demo.db``)
    """
    registry.configure(store=store_url, producer=Producer({"broker": BROKER}), topic=TOPIC)
    operation = DiceLaunch(params={"dice": dice})
    operation.send()
    consumer = Consumer({"broker": BROKER, "group_id": "demo"}, [TOPIC])
    consumer.REGISTRY = registry.controller
    consumer.run(until_idle=True)
    with registry.sequencer.store.transaction() as tx:
        row = tx.get_operation(operation.uuid)
        assert row is not None  # it was just stored
        return dict(row, tasks=tx.get_tasks(operation.uuid))
