"""What the benchmarks run: a no-op task, and operations of no-op tasks."""

import asyncio
import time

from cdumay_result import Result

from kser.sequencing import Parallel
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()


@registry.subscribe
class Noop(Task):
    """Does nothing: what is measured is kser's own cost per message."""

    def run(self):
        return Result(uuid=self.uuid)


@registry.subscribe
class NoopChain(Operation):
    """``hops`` no-op tasks in a row."""

    def build_tasks(self, hops=10, **kwargs):
        return [Noop() for _ in range(int(hops))]


@registry.subscribe
class Timed(Task):
    """A no-op (or a sleep of ``params["sleep"]`` seconds: an I/O-bound task) that reports
    when its body started and ended (``retval["s"]``/``["f"]``), so hop latency is measured
    body to body, as benchmarks/celery_chain.py and temporal_chain.py do."""

    def run(self):
        started = time.time()
        if self.params.get("sleep"):
            time.sleep(float(self.params["sleep"]))
        return Result(uuid=self.uuid, retval=dict(s=started, f=time.time()))


@registry.subscribe
class AsyncTimed(Task):
    """:class:`Timed` written ``async def``: it awaits its sleep on the worker's event
    loop, holding no thread."""

    async def run(self):
        started = time.time()
        if self.params.get("sleep"):
            await asyncio.sleep(float(self.params["sleep"]))
        return Result(uuid=self.uuid, retval=dict(s=started, f=time.time()))


@registry.subscribe
class TimedChain(Operation):
    """``hops`` :class:`Timed` tasks in a row (each sleeping ``sleep`` seconds), or
    :class:`AsyncTimed` ones (``asynchronous``)."""

    def build_tasks(self, hops=10, sleep=0, asynchronous=False, **kwargs):
        kind = AsyncTimed if asynchronous else Timed
        return [kind(params={"sleep": float(sleep)} if sleep else {})
                for _ in range(int(hops))]


@registry.subscribe
class Sleep(Task):
    """Sleeps ``params["seconds"]``; reports when its body started and ended
    (``retval[its name] = [start, end]``: the results of a group merge)."""

    def run(self):
        started = time.time()
        time.sleep(float(self.params["seconds"]))
        return Result(uuid=self.uuid, retval={self.name: [started, time.time()]})


@registry.subscribe
class Fanout(Operation):
    """``width`` :class:`Sleep` tasks of ``seconds``: in a parallel group, or (``chain``)
    one after the other."""

    def build_tasks(self, width=3, seconds=1.0, chain=False, **kwargs):
        sleeps = [Sleep(name=f"sleep{i}", params={"seconds": seconds})
                  for i in range(int(width))]
        return sleeps if chain else [Parallel(*sleeps)]
