"""Metrics count what ran (in this process: prometheus-client's single-process mode; the
workers' shared multiprocess mode is tested on real workers in
tests/acceptance/test_metrics.py): task runs by entrypoint and status, retries,
durations, hop latency, dead letters, consumer lag, and the store's gauges."""

import math
import os
import subprocess
import sys
import time

import pytest
from prometheus_client import REGISTRY, generate_latest

from kser import metrics
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.web import create_app
from tests.unit import tasks
from tests.unit.test_api import ADMIN, READ
from tests.unit.test_sequencing import h, run_until_final  # noqa: F401 (the fixture)


@pytest.fixture(autouse=True)
def counting():
    metrics.enable()  # (single-process: the default registry; once per process)


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_task_runs_retries_durations_and_hops_are_counted_by_entrypoint_and_status(h):  # noqa: F811
    step, unreliable = "tests.unit.tasks.Step", "tests.unit.tasks.Unreliable"
    runs = lambda e, s: sample("kser_task_runs_total", entrypoint=e, status=s)  # noqa: E731
    ok, failed = runs(step, "SUCCESS"), runs(unreliable, "FAILED")
    recovered = runs(unreliable, "SUCCESS")
    retries = sample("kser_task_retries_total", entrypoint=unreliable)
    durations = sample("kser_task_duration_seconds_count", entrypoint=step)
    hops = sample("kser_hop_latency_seconds_count", entrypoint=step)
    late = sample("kser_hop_latency_seconds_bucket", entrypoint=step, le="+Inf")
    tasks.FAILURES.clear()
    three = tasks.ThreeSteps(params={"name": "n"}).send()
    flaky = tasks.OneUnreliable(params={"how": "503", "fail": 1}).send()
    assert run_until_final(h, three.uuid)["status"] == "SUCCESS"
    assert run_until_final(h, flaky.uuid)["status"] == "SUCCESS"
    assert runs(step, "SUCCESS") - ok == 3
    assert runs(unreliable, "FAILED") - failed == 1  # (then retried)
    assert runs(unreliable, "SUCCESS") - recovered == 1
    assert sample("kser_task_retries_total", entrypoint=unreliable) - retries == 1
    assert sample("kser_task_duration_seconds_count", entrypoint=step) - durations == 3
    # each of the three steps started once, each one after it could: a hop each
    assert sample("kser_hop_latency_seconds_count", entrypoint=step) - hops == 3
    assert sample("kser_hop_latency_seconds_bucket", entrypoint=step, le="+Inf") - late == 3
    assert sample("kser_hop_latency_seconds_sum", entrypoint=step) < 3 * 60


@pytest.mark.parametrize("ready_at", ["soon", None, True, math.nan, math.inf, -5, 1e12,
                                      [1.0], {"t": 1}])
def test_a_hop_is_measured_only_from_a_plausible_time_a_message_gives(ready_at):
    count = sample("kser_hop_latency_seconds_count", entrypoint="x.Hostile")
    metrics.task_started("x.Hostile", ready_at, time.time())
    assert sample("kser_hop_latency_seconds_count", entrypoint="x.Hostile") == count
    metrics.task_started("x.Hostile", time.time() + 5, time.time())  # (clock skew: 0)
    assert sample("kser_hop_latency_seconds_count", entrypoint="x.Hostile") == count + 1
    assert sample("kser_hop_latency_seconds_bucket", entrypoint="x.Hostile",
                  le="0.001") >= 1


def test_a_lone_task_counts_as_a_run_of_its_entrypoint(memory_broker_name):
    name = "tests.unit.tasks.Echo"
    before = sample("kser_task_runs_total", entrypoint=name, status="SUCCESS")
    producer = Producer({"broker": memory_broker_name})
    producer.send("lone", Message(uuid="m-1", entrypoint=name, params={"text": "hi"}))
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["lone"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert sample("kser_task_runs_total", entrypoint=name, status="SUCCESS") == before + 1


def test_dead_letters_are_counted_by_source_topic(memory_broker_name):
    before = sample("kser_dead_letters_total", topic="hostile", to="topic")
    producer = Producer({"broker": memory_broker_name})
    producer.send_raw("hostile", b"\xff not json", None, [])
    producer.send_raw("hostile", b'{"uuid": "u", "entrypoint": "no.Such"}', None, [])
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["hostile"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert sample("kser_dead_letters_total", topic="hostile", to="topic") == before + 2


def test_the_consumer_lag_is_what_follows_the_committed_offset(memory_broker_name,
                                                               monkeypatch):
    monkeypatch.setattr(metrics, "LAG_INTERVAL", 0.0)
    producer = Producer({"broker": memory_broker_name})
    for i in range(3):
        producer.send("lagging", Message(uuid=f"m-{i}", entrypoint="tests.unit.tasks.Echo",
                                          params={"text": "hi"}))
    consumer = Consumer({"broker": memory_broker_name, "group_id": "lag"}, ["lagging"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    partitions = {str(p) for p in range(12)}
    lag = lambda: sum(sample("kser_consumer_lag", topic="lagging", partition=p)  # noqa: E731
                      for p in partitions)
    consumer._maybe_report_lag(type("Loop", (), {"last_lag": 0.0,
                                                 "tracker": consumer._tracker})())
    assert lag() == 0
    for i in range(2):  # (the same keys: partitions the group committed to)
        producer.send("lagging", Message(uuid=f"m-{i}", entrypoint="tests.unit.tasks.Echo",
                                          params={"text": "hi"}))
    consumer._maybe_report_lag(type("Loop", (), {"last_lag": 0.0,
                                                 "tracker": consumer._tracker})())
    assert lag() == 2
    consumer._revoked([("lagging", p) for p in range(12)])  # (another worker's now)
    assert lag() == 0


def test_the_store_gauges_count_operations_by_status_and_the_outbox(h, monkeypatch):  # noqa: F811
    from prometheus_client import CollectorRegistry

    monkeypatch.setattr(metrics, "STORE_READ_INTERVAL", 0.0)
    tasks.FAILURES.clear()
    done = tasks.ThreeSteps(params={"name": "n"}).send()
    run_until_final(h, done.uuid)
    tasks.OneUnreliable(params={"how": "503", "fail": 1}).send()  # (queued, not run)
    h.registry.sequencer.flush_sent()  # (a produced message is marked by the next
    # transaction: until then it is counted as waiting)
    served = CollectorRegistry(auto_describe=False)
    served.register(metrics.StoreCollector(lambda: h.store))
    value = lambda name, **labels: served.get_sample_value(name, labels)  # noqa: E731
    assert value("kser_operations", status="SUCCESS") == 1
    assert value("kser_operations", status="RUNNING") == 1
    assert value("kser_operations", status="CANCELED") == 0  # (every status, 0 included)
    assert value("kser_outbox_waiting") == 0  # (sent when stored)
    assert value("kser_outbox_scheduled") == 0
    with h.store.transaction() as tx:
        tx.add_outbox(done.uuid, "ops", None, b"{}", time.time() + 3600)
        tx.add_outbox(done.uuid, "ops", None, b"{}", None)
    assert value("kser_outbox_waiting") == 1 and value("kser_outbox_scheduled") == 1
    # scrapes closer together than STORE_READ_INTERVAL get the last figures
    monkeypatch.setattr(metrics, "STORE_READ_INTERVAL", 60.0)
    with h.store.transaction() as tx:
        tx.add_outbox(done.uuid, "ops", None, b"{}", None)
    assert value("kser_outbox_waiting") == 1


def test_a_store_that_cannot_be_read_leaves_its_gauges_out_and_says_why(caplog):
    from prometheus_client import CollectorRegistry

    def broken():
        raise ConnectionError("database is down")

    served = CollectorRegistry(auto_describe=False)
    served.register(metrics.StoreCollector(broken))
    assert b"kser_operations" not in generate_latest(served)
    assert "the store could not be read (database is down)" in caplog.text


def test_the_api_serves_the_store_gauges_to_a_read_token(h, monkeypatch):  # noqa: F811
    monkeypatch.setattr(h.registry.settings, "api_tokens", "admin:adm-token, read:read-token")
    monkeypatch.setattr(h.registry.settings, "api_auth", "token")
    client = create_app(h.registry).test_client()
    client.post("/api/v1/operations", json={"entrypoint": "tests.unit.tasks.ThreeSteps",
                                            "params": {"name": "n"}}, headers=ADMIN)
    assert client.get("/api/v1/metrics").status_code == 401
    answer = client.get("/api/v1/metrics", headers=READ)
    assert answer.status_code == 200 and answer.mimetype == "text/plain"
    text = answer.get_data(as_text=True)
    assert 'kser_operations{status="RUNNING"} 1.0' in text
    assert "kser_outbox_waiting" in text


def test_a_count_that_fails_never_fails_the_task_it_counts(h, monkeypatch, caplog):  # noqa: F811
    class Broken:
        def labels(self, *args):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics._metrics, "runs", Broken())
    monkeypatch.setattr(metrics._metrics, "hop", Broken())
    monkeypatch.setattr(metrics, "_failed", set())
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    assert run_until_final(h, op.uuid)["status"] == "SUCCESS"
    warnings = [r for r in caplog.records if "the work goes on, uncounted" in r.message
                and r.levelname == "WARNING"]
    assert {r.message.split()[1] for r in warnings} == {"task_ran", "task_started"}


def test_a_metrics_directory_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(metrics.MetricsUnavailableError, match="is not this user's alone"):
        metrics._private(str(shared))
    private = tmp_path / "private"
    metrics._private(str(private))
    assert private.stat().st_mode & 0o777 == 0o700
    assert metrics.default_directory(9400).endswith(f"kser-metrics-{os.getuid()}-9400")


#: a process that finds a dead predecessor's gauges under its own pid (a restarted
#: container's pid 1 with /tmp kept): they must not be served as its own
PID_REUSE = """
import os, sys
from prometheus_client.mmap_dict import MmapedDict, mmap_key
directory = sys.argv[1]
stale = MmapedDict(os.path.join(directory, f"gauge_livesum_{os.getpid()}.db"))
stale.write_value(mmap_key("kser_consumer_lag", "kser_consumer_lag", ["topic", "partition"],
                           ["t", "3"], "lag"), 100.0, 0.0)
stale.close()
from kser import metrics
metrics.enable(directory)
metrics.set_lag({("t", 1): 5})
from prometheus_client import generate_latest
print(generate_latest(metrics.registry()).decode())
"""


def test_a_process_with_a_dead_ones_pid_does_not_serve_its_gauges(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-c", PID_REUSE, str(directory)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'kser_consumer_lag{partition="1",topic="t"} 5.0' in done.stdout
    assert 'partition="3"' not in done.stdout


def test_the_api_answers_503_when_the_store_cannot_be_read(h, monkeypatch):  # noqa: F811
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(h.registry.settings, "api_tokens", "read:read-token")
    monkeypatch.setattr(h.registry.settings, "api_auth", "token")

    def down():
        raise OperationalError("SELECT", {}, ConnectionError("the database is down"))

    monkeypatch.setattr(h.store, "reading", down)
    answer = create_app(h.registry).test_client().get("/api/v1/metrics", headers=READ)
    assert answer.status_code == 503
    assert "the store is unreachable" in answer.get_json()["message"]
