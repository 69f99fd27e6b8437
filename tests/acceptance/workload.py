"""The operations the acceptance tests run in real `kser worker` processes."""

import os
import time

from cdumay_result import Result

from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()


def ran(task_id):
    """Append ``task_id`` to the side-effect log (KSER_TEST_SIDE_EFFECTS), if one is set:
    what proves that a task body ran once, whatever the store says."""
    path = os.environ.get("KSER_TEST_SIDE_EFFECTS")
    if path:
        with open(path, "a") as log:
            log.write(f"{task_id}\n")


@registry.subscribe
class Hop(Task):
    """Checks it saw every hop before it in ``retval["hops"]``, then adds its own index.

    With ``fail_at == index`` it fails until the file ``fixed`` names exists.
    """

    REQUIRED_FIELDS = ("index",)

    def run(self):
        ran(self.uuid)
        index = self.params["index"]
        seen = list(self.result.retval.get("hops", []))
        if seen != list(range(index)):
            return Result(uuid=self.uuid, retcode=500, stderr=f"hop {index} saw {seen}")
        hold = self.params.get("hold_until")  # the first hop waits for this file
        while index == 0 and hold and not os.path.exists(hold):
            time.sleep(0.1)
        if self.params.get("fail_at") == index and not os.path.exists(self.params["fixed"]):
            return Result(uuid=self.uuid, retcode=500, stderr=f"hop {index} fails on purpose")
        time.sleep(float(self.params.get("sleep", 0.02)))
        self.log(f"hop {index} after {seen}")
        return Result(uuid=self.uuid, stdout=f"hop {index}", retval={"hops": [*seen, index]},
                      retcode=self.params.get("retcode", 0) if index == 0 else 0)


@registry.subscribe
class Lone(Task):
    """A task sent alone; with ``hang_unless`` it never returns unless that file exists."""

    def run(self):
        ran(self.uuid)
        marker = self.params.get("hang_unless")
        while marker and not os.path.exists(marker):
            time.sleep(0.1)
        return Result(uuid=self.uuid, stdout="lone")


@registry.subscribe
class Chain(Operation):
    """``hops`` Hop tasks in a row."""

    def build_tasks(self, hops=5, **kwargs):
        return [Hop(params={"index": i}) for i in range(int(hops))]
