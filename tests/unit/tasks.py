"""Tasks and operations the unit tests route messages to."""

import logging

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()
CALLS: list[str] = []


@registry.subscribe
class Echo(Task):
    REQUIRED_FIELDS = ("text",)

    def run(self):
        CALLS.append(self.params["text"])
        return Result(uuid=self.uuid, stdout=self.params["text"],
                      retval={"echoed": self.params["text"]})


@registry.subscribe
class Boom(Task):
    def run(self):
        raise KeyError("missing-key")


@registry.subscribe
class Refuse(Task):
    def run(self):
        return Result(uuid=self.uuid, retcode=409, stderr="refused on purpose")


class Step(Task):
    """Appends its index to retval["seen"], which it reads from the forwarded result."""

    def run(self):
        seen = list(self.result.retval.get("seen", []))
        CALLS.append(f"step{self.params['index']}")
        return Result(uuid=self.uuid, stdout=f"step {self.params['index']}",
                      retval={"seen": [*seen, self.params["index"]]})


class FailingStep(Task):
    def run(self):
        CALLS.append("failing")
        raise ValidationError("step refused its input")


@registry.subscribe
class ThreeSteps(Operation):
    REQUIRED_FIELDS = ("name",)

    def build_tasks(self, **kwargs):
        return [Step(params={"index": i}) for i in range(3)]


@registry.subscribe
class FailsInTheMiddle(Operation):
    def build_tasks(self, **kwargs):
        return [Step(params={"index": 0}), FailingStep(), Step(params={"index": 2})]


@registry.subscribe
class NeedsTaskParam(Operation):
    def build_tasks(self, **kwargs):
        return [Echo()]


FLAKY = {"fail": True}


class FlakyStep(Task):
    """Fails while FLAKY["fail"] is set; logs its attempt number."""

    def run(self):
        CALLS.append(f"flaky{self.attempt}")
        self.log("attempt %d", logging.INFO, self.attempt)
        if FLAKY["fail"]:
            return Result(uuid=self.uuid, retcode=500, stderr="flaky step failed")
        return Result(uuid=self.uuid, stdout="flaky ok", retval={"flaky": self.attempt})


@registry.subscribe
class WithFlaky(Operation):
    def build_tasks(self, **kwargs):
        return [Step(params={"index": 0}), FlakyStep(), Step(params={"index": 2})]


@registry.subscribe
class FlakyFirst(Operation):
    def build_tasks(self, **kwargs):
        return [FlakyStep(), Step(params={"index": 1})]


class HeavyStep(Step):
    """A step routed to its own topic (and so to its own pool of consumers)."""

    TOPIC = "heavy"


@registry.subscribe
class Routed(Operation):
    def build_tasks(self, **kwargs):
        return [Step(params={"index": 0}), HeavyStep(params={"index": 1})]


@registry.subscribe
class Announced(Operation):
    ON_EXIT_NOTIFY = {"topic": "exits", "payload": {"insert": 1}}
    TTL_STRATEGY = {"seconds_after_success": 0}

    def build_tasks(self, **kwargs):
        return [Step(params={"index": 0})]


for _cls in (Step, FailingStep, FlakyStep, HeavyStep):
    registry.subscribe(_cls)


FAILURES: dict[str, int] = {}


@registry.subscribe
class Unreliable(Task):
    """Fails ``params["fail"]`` times in the way ``params["how"]`` says, then succeeds."""

    MAX_RETRIES = 2
    RETRY_MIN_BACKOFF = 0.05
    RETRY_MAX_BACKOFF = 0.1
    TIME_LIMIT = 1.0

    def run(self):
        import time as _time

        from kser.sequencing.retries import Retry

        CALLS.append(f"unreliable{self.attempt}")
        if FAILURES.get(self.uuid, 0) < self.params["fail"]:
            FAILURES[self.uuid] = FAILURES.get(self.uuid, 0) + 1
            how = self.params["how"]
            if how == "raise":
                raise ConnectionError("backend unreachable")
            if how == "invalid":
                raise ValidationError("bad input")
            if how == "retry":
                raise Retry("not ready yet", delay=0.01)
            if how == "slow":
                for _ in range(100):
                    _time.sleep(0.05)
            return Result(uuid=self.uuid, retcode=int(how), stderr=f"returned {how}")
        return Result(uuid=self.uuid, stdout="finally", retval={"attempts": self.attempt})


@registry.subscribe
class OneUnreliable(Operation):
    def build_tasks(self, **kwargs):
        return [Unreliable()]


@registry.subscribe
class DeletesItsOperation(Task):
    """Deletes its own operation from the store while it runs (purged meanwhile)."""

    def run(self):
        with registry.sequencer.store.transaction() as tx:
            tx.delete_operations([self.metadata["kser"]["operation_id"]])
        CALLS.append("deleted")
        return Result(uuid=self.uuid)


@registry.subscribe
class PurgedWhileRunning(Operation):
    def build_tasks(self, **kwargs):
        return [DeletesItsOperation(), Step(params={"index": 1})]
