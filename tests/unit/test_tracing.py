"""kser's own spans (OpenTelemetry SDK, in-memory exporter): one trace per operation
whose context travels in the record headers, so that the chain send > process > run >
send > process > run ... crosses workers; a retry sent later by a sweep stays in it;
hostile trace headers change a parent, never an outcome. (Over two real workers on
Kafka: tests/integration/test_tracing.py.)"""

import re
import subprocess
import sys
from collections import Counter

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from tests.unit import tasks
from tests.unit.test_sequencing import h, run_until_final  # noqa: F401 (the fixture)


def by_id(finished):
    return {span.context.span_id: span for span in finished}


def chain(span, spans_by_id):
    """The names of ``span`` and its ancestors, itself first."""
    names = []
    while span is not None:
        names.append(span.name)
        span = spans_by_id.get(span.parent.span_id) if span.parent else None
    return names


def test_an_operation_is_one_trace_across_two_workers(h, spans):  # noqa: F811
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("client"):  # (the producer's own span: the root)
        op = tasks.Routed(params={}).send()  # (stored here, its first task sent)
    # two workers: one consumes "ops" (the operation, its Step), the other "heavy"
    ops = Consumer({"broker": h.broker.name, "group_id": "ops-workers"}, ["ops"])
    heavy = Consumer({"broker": h.broker.name, "group_id": "heavy-workers"}, ["heavy"])
    for consumer in (ops, heavy):
        consumer.REGISTRY = h.registry.controller
    ops.run()
    heavy.run()
    assert h.operation(op.uuid)[0].status == "SUCCESS"
    finished = spans.get_finished_spans()
    assert len({span.context.trace_id for span in finished}) == 1, [s.name for s in finished]
    runs = {span.name: span for span in finished if span.name.startswith("run ")}
    step, heavy_step = runs["run tests.unit.tasks.Step"], runs["run tests.unit.tasks.HeavyStep"]
    spans_by_id = by_id(finished)
    assert chain(heavy_step, spans_by_id) == [
        "run tests.unit.tasks.HeavyStep", "process heavy", "send heavy",
        "run tests.unit.tasks.Step", "process ops", "send ops",
        "start tests.unit.tasks.Routed", "client"]
    assert step.attributes["kser.worker"] != heavy_step.attributes["kser.worker"]
    assert heavy_step.attributes["kser.operation_id"] == op.uuid
    assert heavy_step.attributes["kser.attempt"] == 1
    assert heavy_step.attributes["kser.status"] == "SUCCESS"
    kinds = {span.name: span.kind for span in finished}
    assert kinds["send heavy"] == SpanKind.PRODUCER and kinds["process heavy"] == SpanKind.CONSUMER
    process = next(s for s in finished if s.name == "process heavy")
    assert process.attributes["messaging.consumer.group.name"] == "heavy-workers"


def test_a_retry_sent_later_by_a_sweep_stays_in_its_operations_trace(h, spans):  # noqa: F811
    tasks.FAILURES.clear()
    op = tasks.OneUnreliable(params={"how": "503", "fail": 1}).send()
    assert run_until_final(h, op.uuid)["status"] == "SUCCESS"
    finished = spans.get_finished_spans()
    first, second = sorted((s for s in finished if s.name == "run tests.unit.tasks.Unreliable"),
                           key=lambda s: s.attributes["kser.attempt"])
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes["kser.status"] == "FAILED"
    assert chain(second, by_id(finished))[:4] == [
        "run tests.unit.tasks.Unreliable", "process ops", "send ops",
        "run tests.unit.tasks.Unreliable"]
    assert second.context.trace_id == first.context.trace_id


@pytest.mark.parametrize("headers", [
    [("traceparent", b"\xff\xfe garbage")],
    [("traceparent", b"00-" + b"f" * 5000)],
    [("traceparent", None), ("tracestate", b"")],
    [("traceparent", b"00-00000000000000000000000000000000-0000000000000000-01")],
    [(b"\xff".decode("latin-1"), b"x"), ("tracestate", b"k=v" * 2000)],
])
def test_hostile_trace_headers_start_a_new_trace_and_change_nothing_else(
        memory_broker_name, spans, headers):
    producer = Producer({"broker": memory_broker_name})
    key, value = producer.encode(Message(uuid="m-1", entrypoint="tests.unit.tasks.Echo",
                                         params={"text": "hi"}))
    producer.send_raw("lone", value, key, headers)
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["lone"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert consumer.processed == 1
    process = next(s for s in spans.get_finished_spans() if s.name == "process lone")
    run = next(s for s in spans.get_finished_spans() if s.name == "run tests.unit.tasks.Echo")
    assert process.parent is None  # (an invalid context is none)
    assert run.parent.span_id == process.context.span_id
    assert run.attributes["kser.status"] == "SUCCESS"


def test_kser_tracing_console_prints_one_trace_per_operation_and_refuses_the_unknown(
        tmp_path):
    command = [sys.executable, "-m", "kser.cli", "--tracing", "console", "--log-level",
               "WARNING", "demo", "--dice", "2", "--store-url", f"sqlite:///{tmp_path}/d.db"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = Counter(re.findall(r'^    "name": "([^"]+)"', done.stdout, re.MULTILINE))
    assert names == {"start kser.demo.DiceLaunch": 1, "send dice": 2, "process dice": 2,
                     "run kser.demo.DiceRoll": 2}
    assert len(set(re.findall(r'"trace_id": "(0x[0-9a-f]+)"', done.stdout))) == 1
    assert '"service.name": "kser-demo"' in done.stdout
    refused = subprocess.run([sys.executable, "-m", "kser.cli", "demo"], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path,
                             env={"KSER_TRACING": "zipkin", "PATH": "/usr/bin:/bin"})
    assert refused.returncode != 0
    assert "KSER_TRACING=zipkin: unknown exporter 'zipkin': console, otlp or empty" in (
        refused.stderr)


def test_a_sub_operation_is_in_its_parents_trace(h, spans):  # noqa: F811
    from tests.unit.test_shapes import Outer

    with trace.get_tracer("tests").start_as_current_span("client"):
        op = Outer().send()
    h.drain()
    assert h.operation(op.uuid)[0].status == "SUCCESS"
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.name.startswith("run ")]
    assert len(runs) == 4  # a, x, y (the child's), b
    assert len({s.context.trace_id for s in finished}) == 1, sorted(
        (s.name, s.context.trace_id) for s in finished)


class OddFailureError(Exception):
    pass


def test_a_result_whose_error_is_no_text_still_ends_its_attempt(h, spans, monkeypatch):  # noqa: F811
    from cdumay_result import Result

    from kser.sequencing.task import Task

    original = Task.execute

    def failing(self, result=None):
        if type(self) is tasks.Step:
            return Result(uuid=self.uuid, retcode=500, stderr=OddFailureError("not text"))
        return original(self, result)

    monkeypatch.setattr(Task, "execute", failing)
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    assert run_until_final(h, op.uuid)["status"] == "FAILED"
    [run] = [s for s in spans.get_finished_spans() if s.name == "run tests.unit.tasks.Step"]
    assert run.status.status_code == StatusCode.ERROR and "not text" in run.status.description


def test_a_failing_tracer_never_fails_the_work(h, spans, monkeypatch, caplog):  # noqa: F811
    from kser import tracing

    class Broken:
        fields = {"traceparent"}

        def extract(self, *args, **kwargs):
            raise ValueError("a propagator of its own")

        def inject(self, *args, **kwargs):
            raise ValueError("a propagator of its own")

    monkeypatch.setattr(tracing, "_PROPAGATOR", Broken())
    monkeypatch.setattr(tracing, "_failed", set())
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    assert run_until_final(h, op.uuid)["status"] == "SUCCESS"
    assert "the work goes on untraced" in caplog.text


def test_a_baggage_header_is_not_read(memory_broker_name, spans, caplog):
    producer = Producer({"broker": memory_broker_name})
    key, value = producer.encode(Message(uuid="m-1", entrypoint="tests.unit.tasks.Echo",
                                         params={"text": "hi"}))
    producer.send_raw("lone", value, key, [("baggage", "ä=1,".encode() * 200)])
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["lone"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert consumer.processed == 1
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
