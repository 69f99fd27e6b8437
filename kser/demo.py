"""The embedded default: the dice game of kser's documentation, in one process.

``kser demo`` sends one ``DiceLaunch`` operation on the in-process transport
and runs a consumer until the topic is drained: three dice are rolled.
"""

from __future__ import annotations

import random
import uuid

from cdumay_result import Result

from kser.controller import Controller
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task


class DemoController(Controller):
    """Keeps the result of every message it ran, so the demo can print them."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[Result] = []

    def onsuccess(self, kmsg: Message, result: Result) -> Result:
        self.results.append(result)
        return result

    def onerror(self, kmsg: Message | None, result: Result) -> Result:
        self.results.append(result)
        return result


registry = OperationRegistry(controller_class=DemoController)

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

    def build_tasks(self, dice: int = 3, **kwargs) -> list[Task]:
        return [DiceRoll() for _ in range(int(dice))]


def run_demo(dice: int = 3) -> Result:
    """Send one DiceLaunch and consume until done; return the operation's result."""
    producer = Producer({"broker": BROKER})
    kmsg = Message(uuid=str(uuid.uuid4()), entrypoint=DiceLaunch.path, params={"dice": dice})
    producer.send(TOPIC, kmsg)
    consumer = Consumer({"broker": BROKER, "group_id": "demo"}, [TOPIC])
    consumer.REGISTRY = registry.controller
    consumer.run(until_idle=True)
    return registry.controller.results[-1]
