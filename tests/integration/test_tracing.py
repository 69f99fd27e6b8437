"""One operation, two real workers on Kafka, one trace: kser's spans (OpenTelemetry SDK,
in-memory exporter) chain across the workers through the trace context the record
headers carry, from the producer's own span to the last task's attempt.

The operation's first task goes to topic A, its second to topic B; one worker consumes
A (the operation's message, the first task), the other B: the chain must cross from
one worker to the other, through the outbox (PostgreSQL) and Kafka."""

import threading
import time
import uuid

import pytest
from cdumay_result import Result
from opentelemetry import trace

from kser.config import Settings
from kser.python_kafka.consumer import Consumer
from kser.python_kafka.producer import Producer
from kser.schemas import Message
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.store import Store
from tests.infra import WAIT
from tests.unit.test_tracing import chain

pytestmark = pytest.mark.integration


class First(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout="first", retval={"first": True})


class Second(Task):
    def run(self):
        return Result(uuid=self.uuid, stdout="second", retval={"second": True})


class TwoTopics(Operation):
    def build_tasks(self, **kwargs):
        return [First(), Second()]


def worker(kafka, store, topic, group):
    """A consumer of ``topic`` with a registry of its own (its own name and producer)."""
    registry = OperationRegistry()
    for entrypoint in (First, Second, TwoTopics):  # (a class's own registry is none here:
        registry.controller.register(entrypoint.path, entrypoint)  # nothing is sent by it)
    registry.configure(store=store)
    settings = Settings(bootstrap_servers=kafka.bootstrap_servers, store_url=store.url)
    consumer = Consumer(settings.client_config(group), [topic], settings=settings)
    consumer.REGISTRY = registry.controller
    return consumer


def test_an_operation_run_by_two_real_workers_is_one_trace(kafka, pg_url, spans,
                                                           monkeypatch):
    a, b = (f"trace-{name}-{uuid.uuid4().hex[:8]}" for name in "ab")
    monkeypatch.setattr(First, "TOPIC", a)
    monkeypatch.setattr(Second, "TOPIC", b)
    store = Store(pg_url)
    consumers = [worker(kafka, store, a, f"g-{a}"), worker(kafka, store, b, f"g-{b}")]
    threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    op_id = str(uuid.uuid4())
    try:
        producer = Producer({"bootstrap_servers": kafka.bootstrap_servers})
        with trace.get_tracer("tests").start_as_current_span("client"):
            assert producer.send(a, Message(op_id, TwoTopics.path)).retcode == 0
        producer.close()
        deadline = time.monotonic() + WAIT
        status = None
        while status != "SUCCESS" and time.monotonic() < deadline:
            with store.transaction() as tx:
                found = tx.get_operation(op_id)
            status = found.status if found else None
            time.sleep(0.2)
        assert status == "SUCCESS"
    finally:
        for consumer in consumers:
            consumer.stop()
        for thread in threads:
            thread.join(WAIT)
        store.close()
    finished = spans.get_finished_spans()
    mine = [s for s in finished if s.attributes.get("kser.operation_id") == op_id]
    assert {s.name for s in mine} >= {f"run {First.path}", f"run {Second.path}",
                                      f"start {TwoTopics.path}"}
    (trace_id,) = {s.context.trace_id for s in mine}
    spans_by_id = {s.context.span_id: s for s in finished if s.context.trace_id == trace_id}
    second = next(s for s in mine if s.name == f"run {Second.path}")
    first = next(s for s in mine if s.name == f"run {First.path}")
    assert chain(second, spans_by_id) == [
        f"run {Second.path}", f"process {b}", f"send {b}",
        f"run {First.path}", f"process {a}", f"send {a}",
        f"start {TwoTopics.path}", f"process {a}", f"send {a}", "client"]
    assert first.attributes["kser.worker"] != second.attributes["kser.worker"]
    assert first.attributes["kser.task_name"] and second.attributes["kser.attempt"] == 1
    processes = [s for s in spans_by_id.values() if s.name.startswith("process ")]
    assert {s.attributes["messaging.consumer.group.name"] for s in processes} == {
        f"g-{a}", f"g-{b}"}
