"""Tasks whose ``run`` is ``async def``: awaited on the worker's event loop, each holding no
thread while it waits, with the same claims, time limits, retries, results and log
fields as a thread's body (memory transport, SQLite)."""

import asyncio
import threading
import time

import pytest
from cdumay_result import Result

from kser import logs
from kser.aio import EventLoop
from kser.memory.consumer import Consumer
from kser.schemas import Message
from kser.sequencing import Operation
from kser.sequencing.task import Task
from tests.unit import tasks
from tests.unit.tasks import registry
from tests.unit.test_sequencing import Harness, run_until_final

#: bodies waiting now, and the most seen at once
WAITING = {"now": 0, "peak": 0}
FLAKY = {"failed": set()}


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    tasks.CALLS.clear()
    WAITING.update(now=0, peak=0)
    FLAKY["failed"].clear()
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    yield harness
    harness.store.close()


@registry.subscribe
class AsyncStep(Task):
    """Awaits a sleep, then adds its index to what the steps before it saw; returns the
    log fields its body saw (each body's own)."""

    async def run(self):
        await asyncio.sleep(0.01)
        seen = list(self.result.retval.get("seen", []))
        return Result(uuid=self.uuid, retval={"seen": [*seen, self.params["index"]],
                                              "fields": dict(logs._task.get() or {})})


@registry.subscribe
class SyncStep(Task):
    def run(self):
        seen = list(self.result.retval.get("seen", []))
        return Result(uuid=self.uuid, retval={"seen": [*seen, self.params["index"]]})


@registry.subscribe
class Mixed(Operation):
    def build_tasks(self, **kwargs):
        kinds = [AsyncStep, SyncStep, AsyncStep, AsyncStep, SyncStep]
        return [kind(params={"index": i}) for i, kind in enumerate(kinds)]


@registry.subscribe
class Together(Task):
    """Waits (awaiting, no thread) until ``params["all"]`` bodies wait at once (10 s at
    most): with one task thread, only bodies on an event loop get there."""

    async def run(self):
        WAITING["now"] += 1
        WAITING["peak"] = max(WAITING["peak"], WAITING["now"])
        deadline = time.monotonic() + 10
        while WAITING["peak"] < self.params["all"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        WAITING["now"] -= 1
        return Result(uuid=self.uuid, retval={"peak": WAITING["peak"]})


@registry.subscribe
class OneTogether(Operation):
    def build_tasks(self, **kwargs):
        return [Together(params={"all": self.params["all"]})]


@registry.subscribe
class TooSlow(Task):
    TIME_LIMIT = 0.2

    async def run(self):
        await asyncio.sleep(30)


@registry.subscribe
class FailsOnceAsync(Task):
    MAX_RETRIES = 1
    RETRY_MIN_BACKOFF = RETRY_MAX_BACKOFF = 0.01

    async def run(self):
        await asyncio.sleep(0)
        if self.uuid not in FLAKY["failed"]:
            FLAKY["failed"].add(self.uuid)
            raise ConnectionError("the job server hung up")
        return Result(uuid=self.uuid, stdout="second time")


@registry.subscribe
class Single(Operation):
    def build_tasks(self, **kwargs):
        return [{"slow": TooSlow, "flaky": FailsOnceAsync}[self.params["kind"]]()]


def test_async_and_thread_bodies_chain_their_results_through_an_operation(h):
    ops = [Mixed().send() for _ in range(10)]
    h.drain()
    for op in ops:
        row, task_rows = h.operation(op.uuid)
        assert row["status"] == "SUCCESS"
        assert [t["result"]["retval"]["seen"] for t in task_rows] == [
            list(range(n + 1)) for n in range(5)]
        for task in task_rows:
            assert [a["status"] for a in h.attempts(task["id"])] == ["SUCCESS"]
            if task["entrypoint"].endswith("AsyncStep"):  # its own log fields, not another's
                fields = task["result"]["retval"]["fields"]
                assert (fields["task_id"], fields["operation_id"]) == (task["id"], op.uuid)
    assert h.broker.lag("workers", ["ops"]) == 0


def test_bodies_wait_together_on_the_event_loop_with_one_task_thread(h, monkeypatch):
    monkeypatch.setattr(h.registry.settings, "concurrency", 1)
    count = 300
    ops = [OneTogether(params={"all": count}).send() for _ in range(count)]
    started = time.monotonic()
    h.drain()
    assert WAITING["peak"] == count  # every body waited at once, on one task thread
    assert time.monotonic() - started < 30
    assert all(h.operation(op.uuid)[0]["status"] == "SUCCESS" for op in ops)


def test_async_concurrency_bounds_the_bodies_awaited_at_once(h, monkeypatch):
    monkeypatch.setenv("KSER_ASYNC_CONCURRENCY", "20")  # (the worker's setting)
    monkeypatch.setattr(h.registry.context, "aio", EventLoop(lambda: 20))  # (the engine's)
    ops = [OneTogether(params={"all": 20}).send() for _ in range(60)]
    h.drain()  # (each waits for 20 at once: three rounds)
    assert WAITING["peak"] == 20
    assert all(h.operation(op.uuid)[0]["status"] == "SUCCESS" for op in ops)


def test_an_async_body_past_its_time_limit_is_cancelled_and_fails(h):
    op = Single(params={"kind": "slow"}).send()
    started = time.monotonic()
    h.drain()
    assert time.monotonic() - started < 10
    row, (task,) = h.operation(op.uuid)
    assert (row["status"], task["status"]) == ("FAILED", "FAILED")
    (attempt,) = h.attempts(task["id"])
    assert "time limit exceeded after 0.2 s" in (attempt["error"] or "")


def test_an_async_body_that_raises_is_retried_like_any_other(h):
    op = Single(params={"kind": "flaky"}).send()
    assert run_until_final(h, op.uuid)["status"] == "SUCCESS"  # (a retry is due later)
    (task,) = h.operation(op.uuid)[1]
    assert [a["status"] for a in h.attempts(task["id"])] == ["FAILED", "SUCCESS"]
    assert "the job server hung up" in h.attempts(task["id"])[0]["error"]


def test_a_lone_async_task_message_runs_in_its_thread(h):
    h.broker.produce("ops", Message("lone-1", AsyncStep.path, params={"index": 7}).dumps())
    consumer = h.drain()
    assert consumer.processed == 1
    assert AsyncStep(params={"index": 3}).execute().retval["seen"] == [3]


def test_is_async_tells_the_two_kinds_of_bodies_apart():
    assert AsyncStep.is_async() and Together.is_async()
    assert not SyncStep.is_async() and not tasks.ThreeSteps.is_async()


GATE = {"waiting": 0, "open": False, "runs": 0}


@registry.subscribe
class Gated(Task):
    """Counts its runs, then waits (awaiting) until the gate opens (10 s at most)."""

    async def run(self):
        GATE["runs"] += 1
        GATE["waiting"] += 1
        deadline = time.monotonic() + 10
        while not GATE["open"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return Result(uuid=self.uuid, stdout="through")


@registry.subscribe
class OneGated(Operation):
    def build_tasks(self, **kwargs):
        return [Gated()]


@registry.subscribe
class CancelsItself(Task):
    async def run(self):
        raise asyncio.CancelledError()  # (as a library's await might, unasked)


@registry.subscribe
class OneCancelsItself(Operation):
    def build_tasks(self, **kwargs):
        return [CancelsItself()]


def wait_until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_copy_of_an_awaited_task_s_message_does_not_run_it_again(h):
    GATE.update(waiting=0, open=False, runs=0)
    op = OneGated().send()
    consumer = Consumer({"broker": h.broker.name, "group_id": "workers"}, ["ops"])
    consumer.REGISTRY = h.registry.controller
    worker = threading.Thread(target=consumer.run)
    worker.start()
    try:
        wait_until(lambda: GATE["waiting"] == 1, "the body waiting")
        task_id = h.operation(op.uuid)[1][0]["id"]
        (record,) = [r for r in h.broker.records("ops") if r.key == task_id.encode()]
        h.broker.produce("ops", record.value, record.key)  # a copy, while it waits
        wait_until(lambda: consumer.processed == 1, "the copy handled (the task's own "
                   "message is in hand)")
        assert h.operation(op.uuid)[1][0]["status"] == "RUNNING"
        GATE["open"] = True
        wait_until(lambda: h.operation(op.uuid)[0]["status"] == "SUCCESS", "the end")
    finally:
        GATE["open"] = True
        consumer.stop()
        worker.join(30)
    assert GATE["runs"] == 1
    assert [a["status"] for a in h.attempts(task_id)] == ["SUCCESS"]


def test_a_body_raising_cancelled_error_unasked_fails_and_its_record_is_done(h):
    op = OneCancelsItself().send()
    h.drain()  # (returns: nothing left in hand)
    row, (task,) = h.operation(op.uuid)
    assert (row["status"], task["status"]) == ("FAILED", "FAILED")
    assert "raised CancelledError, but nothing cancelled it" in h.attempts(
        task["id"])[0]["error"]
    assert h.broker.lag("workers", ["ops"]) == 0


CANCELLED = {"runs": 0}


@registry.subscribe
class CancelledOnce(Task):
    """Its first run is cancelled from outside its body (as a stop would); then it runs."""

    async def run(self):
        CANCELLED["runs"] += 1
        if CANCELLED["runs"] == 1:
            asyncio.current_task().cancel()
            await asyncio.sleep(1)
        return Result(uuid=self.uuid, stdout="second run")


@registry.subscribe
class OneCancelledOnce(Operation):
    def build_tasks(self, **kwargs):
        return [CancelledOnce()]


def test_a_cancelled_body_s_message_is_handled_again_off_the_loop(h, monkeypatch):
    monkeypatch.setenv("KSER_REDO_BACKOFF", "0.05")
    CANCELLED["runs"] = 0
    op = OneCancelledOnce().send()
    h.drain()
    row, (task,) = h.operation(op.uuid)
    assert (row["status"], CANCELLED["runs"]) == ("SUCCESS", 2)
    assert task["result"]["stdout"] == "second run"
    assert h.broker.lag("workers", ["ops"]) == 0
