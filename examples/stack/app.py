"""The registry of the full stack (docker-compose.yml, and scripts/stack without
containers): dice rolls, started by hand (the API, `kser ops start`, the UI) and every
minute by `kser scheduler` (``DICE_CRON`` changes when: the stack's test rolls every few
seconds); schedules.toml adds one more, from a file."""

import logging
import os
import random

from cdumay_result import Result

from kser import Operation, OperationRegistry, Task

registry = OperationRegistry()
logger = logging.getLogger(__name__)


@registry.subscribe
class Roll(Task):
    """One die rolled."""

    def run(self):
        value = random.randint(1, 6)
        logger.info("rolled a %d", value)
        rolled = list(self.result.retval.get("rolled", []))
        return Result(uuid=self.uuid, stdout=f"You made a {value}",
                      retval={"rolled": [*rolled, value]})


@registry.schedule(os.environ.get("DICE_CRON", "* * * * *"), params={"dice": 3},
                   name="dice-every-minute")
class DiceLaunch(Operation):
    """``dice`` dice rolled one after the other, each seeing the rolls before it."""

    def build_tasks(self, dice=3, **kwargs):
        return [Roll() for _ in range(int(dice))]
