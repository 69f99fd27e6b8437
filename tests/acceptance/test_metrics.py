"""Prometheus metrics scraped from real `kser worker` processes during a real run, on
Kafka and PostgreSQL, checked against what the store says ran.

Two workers of one host share one metrics port and directory (multiprocess mode): one
serves the sum of both. Operations of 4 hops run, a few failing on purpose, and one
hostile record is dead-lettered; during the run the endpoint answers and its counters
only grow; at the end the task runs by entrypoint and status, their durations and hops,
the dead letters and the operations by status equal the store's and the topic's
figures, and the consumer lag falls to 0. Then the serving worker is killed with
SIGKILL: the other one takes the port over, the dead one's gauges leave the sums, its
counters stay.
"""

import glob
import os
import socket
import time
import urllib.request
from collections import Counter

import pytest
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for

pytestmark = pytest.mark.acceptance

HOPS, GOOD, BAD = 4, 24, 3
HOP = "tests.acceptance.workload.Hop"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port):
    """{(name, labels...): value} of every sample the endpoint serves."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, *sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples, name, **labels):
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, *pairs), value in samples.items()
               if sample == name and set(labels.items()) <= set(pairs))


def test_metrics_scraped_from_real_workers_add_up_to_what_ran(kafka, pg_url, processes,
                                                              tmp_path):
    port, directory = free_port(), tmp_path / "metrics"
    run = Run(kafka, pg_url, processes, env={
        "KSER_METRICS_PORT": str(port), "KSER_METRICS_DIR": str(directory),
        "KSER_METRICS_HOST": "127.0.0.1", "KSER_LOG_LEVEL": "INFO"})
    first = wait_for(lambda: scrape(port), "the metrics endpoint answers", timeout=60)
    run.submit(GOOD, HOPS, lambda i: {"sleep": 0.05})
    failing = run.submit(BAD, HOPS, lambda i: {"fail_at": 2, "fixed": str(tmp_path / "no")})
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    producer.send(run.topic, b"\xff\xfe not a message").get(30)
    producer.close()

    # during the run: served, and the counters only grow
    seen, finals = [], {"SUCCESS": GOOD, "FAILED": BAD}
    while run.counts() != finals and len(seen) < 200:
        seen.append(total(scrape(port), "kser_task_runs_total"))
        time.sleep(0.1)
    assert seen == sorted(seen) and seen[0] < GOOD * HOPS, seen[:5]
    run.wait_until_final(finals)

    attempts, tasks = schema.attempts.c, schema.tasks.c
    with run.store.transaction() as tx:
        ran = Counter({(entrypoint, status): n for entrypoint, status, n in tx.connection.execute(
            select(tasks.entrypoint, attempts.status, func.count())
            .select_from(schema.attempts.join(schema.tasks, attempts.task_id == tasks.id))
            .where(tasks.operation_id.in_(run.operations))
            .group_by(tasks.entrypoint, attempts.status)).all()})
    assert ran == {(HOP, "SUCCESS"): GOOD * HOPS + BAD * 2, (HOP, "FAILED"): BAD}

    def adds_up():
        samples = scrape(port)
        figures = {
            "runs": Counter({(HOP, s): total(samples, "kser_task_runs_total", entrypoint=HOP,
                                             status=s) for s in ("SUCCESS", "FAILED")}),
            "durations": total(samples, "kser_task_duration_seconds_count", entrypoint=HOP),
            "hops": total(samples, "kser_hop_latency_seconds_count", entrypoint=HOP),
            "dead letters": total(samples, "kser_dead_letters_total", topic=run.topic),
            "operations": {s: total(samples, "kser_operations", status=s) for s in finals},
            "lag": total(samples, "kser_consumer_lag", topic=run.topic),
            "partitions with a lag": len({dict(pairs)["partition"] for (name, *pairs) in samples
                                          if name == "kser_consumer_lag"
                                          and ("topic", run.topic) in pairs}),
        }
        expected = {"runs": ran, "durations": sum(ran.values()), "hops": sum(ran.values()),
                    "dead letters": 1, "operations": finals, "lag": 0,
                    "partitions with a lag": 4}
        return figures if figures == expected else None

    # (the lag is updated every 5 s, the last commits a moment after the last end)
    try:
        figures = wait_for(adds_up, "the scraped figures equal the store's", timeout=60)
    except AssertionError:
        samples = scrape(port)
        raise AssertionError({key: value for key, value in samples.items()
                              if key[0].startswith("kser_")}) from None
    samples = scrape(port)
    assert total(samples, "kser_task_retries_total") == 0  # (Hop never retries)
    assert total(samples, "kser_hop_latency_seconds_sum", entrypoint=HOP) < 60 * figures["hops"]
    assert total(samples, "kser_outbox_waiting") == 0
    assert first  # (served before anything ran: kser_operations from the store)
    assert failing

    # the worker serving the port dies: the other takes it over; the dead one's gauges
    # leave the sums, its counters stay
    serving = next(w for w in run.workers if f"serving http://127.0.0.1:{port}" in w.output())
    other = next(w for w in run.workers if w is not serving)
    serving.popen.kill()
    serving.popen.wait(30)
    dead = serving.popen.pid
    assert glob.glob(os.path.join(directory, f"gauge_livesum_{dead}.db"))
    wait_for(lambda: f"serving http://127.0.0.1:{port}" in other.output(),
             "the other worker takes the metrics port over", timeout=60)
    after = wait_for(lambda: scrape(port), "the metrics endpoint answers again", timeout=30)
    assert total(after, "kser_task_runs_total", entrypoint=HOP) == sum(ran.values())
    assert not glob.glob(os.path.join(directory, f"gauge_livesum_{dead}.db"))
    for worker in run.workers:
        assert "Traceback" not in worker.output(), worker.output()[-3000:]
    run.close()
