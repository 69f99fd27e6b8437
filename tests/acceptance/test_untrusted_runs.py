"""Hostile runs of issue 26 ("Reliability III"), on a real broker, PostgreSQL and real
`kser worker` / `kser serve` processes: duplicates of a running task's message, reads
of the API that created topics, JSON nested too deep or too large, a cancel followed by
run-from, and a retry's error leaking into the results that follow it.

Each test asserts what kser does once the issue is fixed.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from requests.adapters import HTTPAdapter
from sqlalchemy import func, select

from kser.client import Client, ClientError
from kser.store import schema
from tests.acceptance.harness import Run, wait_for
from tests.acceptance.test_control_plane import start_api
from tests.acceptance.workload import Chain, FailsAfterFirst, RetriedInParallel
from tests.infra import group_lag

pytestmark = pytest.mark.acceptance

CHAIN = Chain.path
#: deeper than any limit kser sets (the fix refuses more than 100 levels)
DEEP = 5_000
#: what a refusal of deep JSON says: that it is nested too deep (not Python's recursion)
TOO_DEEP = re.compile(r"nest|deep|depth", re.I)


def side_effects(path):
    return Counter(path.read_text().split()) if path.exists() else Counter()


def statuses(run, op_ids):
    with run.store.transaction() as tx:
        found = {op_id: tx.get_operation(op_id) for op_id in op_ids}
    return {op_id: op and op["status"] for op_id, op in found.items()}


def tasks_of(run, op_id):
    with run.store.transaction() as tx:
        return tx.get_tasks(op_id)


def running_tasks(run):
    with run.store.transaction() as tx:
        return tx.connection.execute(select(func.count()).select_from(schema.tasks)
                                     .where(schema.tasks.c.status == "RUNNING")).scalar()


def task_record(kafka, topic, task_id, timeout=60):
    """The record of ``topic`` holding the message of the task ``task_id``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=1000)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for record in consumer:
                try:
                    meta = json.loads(record.value)["metadata"]["kser"]
                except (ValueError, TypeError, KeyError):
                    continue
                if meta.get("task_id") == task_id:
                    return record
    finally:
        consumer.close()
    raise AssertionError(f"no message of task {task_id} in {topic} within {timeout} s")


def broker_topics(kafka):
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def nested(depth, leaf=1):
    """A dict nested ``depth`` levels deep (built without recursion)."""
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_text(depth, leaf="1"):
    """The JSON text of :func:`nested` (by hand: json.dumps would hit the recursion limit)."""
    return '{"a":' * depth + leaf + "}" * depth


def server_log(tmp_path):
    return (tmp_path / "api.log").read_text(errors="replace")


# -- 4. duplicates of a running task stall the workers ---------------------------------

def test_copies_of_a_running_tasks_message_are_committed_at_once(kafka, pg_url, processes,
                                                                 tmp_path):
    """A copy of the message of a task that runs (on this worker or another) holds no task
    thread: it is committed at once, and the work behind it runs meanwhile.

    Two threads per worker: the worker running the held task keeps one free (with one,
    every partition it owns would wait for the release whatever kser does). With a
    30 s lease, a copy held a thread for 1.5 leases (45 s) before the fix."""
    effects = tmp_path / "side-effects"
    run = Run(kafka, pg_url, processes, workers=2, partitions=12,
              env={"KSER_CONCURRENCY": "2", "KSER_TASK_LEASE": "30",
                   "KSER_TEST_SIDE_EFFECTS": str(effects), "KSER_LOG_LEVEL": "INFO"})
    for worker in run.workers:  # the group settled: no rebalance moves the held task
        worker.wait_for("assigned 6 partition(s)")
    release = tmp_path / "release"
    [held_op] = run.submit(1, hops=1, params=lambda i: {"release": str(release)})
    wait_for(lambda: [t["status"] for t in tasks_of(run, held_op)] == ["RUNNING"],
             "the held hop RUNNING", timeout=60)
    [held_task] = [t["id"] for t in tasks_of(run, held_op)]
    record = task_record(kafka, run.topic, held_task)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    for partition in range(12):
        producer.send(run.topic, record.value, key=record.key, partition=partition)
    producer.flush()
    producer.close()

    started = time.monotonic()
    ops = run.submit(20, hops=1)
    wait_for(lambda: set(statuses(run, ops).values()) == {"SUCCESS"},
             "20 one-hop operations SUCCESS while the copies wait", timeout=40)
    took = time.monotonic() - started
    assert not release.exists()
    assert [t["status"] for t in tasks_of(run, held_op)] == ["RUNNING"], (
        "the held hop ended before its release")

    release.touch()
    wait_for(lambda: statuses(run, [held_op])[held_op] == "SUCCESS", "the held op SUCCESS",
             timeout=60)
    assert side_effects(effects)[held_task] == 1, side_effects(effects)
    assert running_tasks(run) == 0
    wait_for(lambda: group_lag(kafka, run.group, run.topic) == 0,
             "every record (the copies too) committed", timeout=60)
    for worker in run.workers:
        assert "Traceback" not in worker.output(), worker.output()[-3000:]
    print(f"20 operations in {took:.1f} s beside 12 copies of a running task's message")
    run.close()


# -- 5. a read token creates topics ----------------------------------------------------

def test_read_routes_create_no_topic(kafka, pg_url, processes, tmp_path):
    """GET routes, with hostile query arguments, create nothing on the broker (Kafka
    auto-creates a topic a client asks about) nor in the store; the dead letters of the
    registry's topic, which has no dead-letter topic yet, are an empty list; another
    topic's are not the API's to read (a 404)."""
    run = Run(kafka, pg_url, processes, workers=0)
    url = start_api(run, processes)
    read = {"Authorization": "Bearer read-secret"}
    marker = uuid.uuid4().hex[:8]
    new = [f"new-{marker}-{i}" for i in range(3)]
    before = broker_topics(kafka)

    for topic in new:  # (another application's topic: not this registry's to read)
        answer = requests.get(f"{url}/api/v1/dead-letters", headers=read,
                              params={"topic": topic, "wait": 0.5}, timeout=60)
        assert answer.status_code == 404, (answer.status_code, answer.text[:500])
        assert "not a topic of this registry" in answer.json()["message"]
    # (the API's own topic has no dead-letter topic either: nothing to list, nothing made)
    answer = requests.get(f"{url}/api/v1/dead-letters", headers=read,
                          params={"wait": 0.5}, timeout=60)
    assert answer.status_code == 200, (answer.status_code, answer.text[:500])
    assert answer.json()["dead_letters"] == []
    for path, args in [("/operations", {"entrypoint": f"{new[0]}.dlq"}),
                       ("/operations", {"search": new[1]}),
                       (f"/operations/{new[2]}", {}),
                       (f"/operations/{new[2]}/tasks/{new[2]}/logs", {}),
                       (f"/operations/{new[2]}/tasks/{new[2]}/attempts", {}),
                       ("/entrypoints", {}), ("/schedules", {}), ("/ready", {})]:
        answer = requests.get(f"{url}/api/v1{path}", headers=read, params=args, timeout=60)
        assert answer.status_code < 500, (path, answer.status_code, answer.text[:500])

    # (Kafka's own __consumer_offsets appears at a fresh broker's first consumer group)
    created = {t for t in broker_topics(kafka) - before if not t.startswith("__")}
    assert not created, f"read routes created topics: {sorted(created)}"
    assert all(f"{topic}.dlq" not in broker_topics(kafka) for topic in new)
    with run.store.transaction() as tx:
        assert tx.connection.execute(select(func.count())
                                     .select_from(schema.operations)).scalar() == 0
    assert "Traceback" not in server_log(tmp_path), server_log(tmp_path)[-3000:]
    run.close()


# -- 6. a 5,000-deep JSON body is a 500 --------------------------------------------------

class CountingAdapter(HTTPAdapter):
    """Counts the requests that reach the wire."""

    sent = 0

    def send(self, *args, **kwargs):
        self.sent += 1
        return super().send(*args, **kwargs)


def csrf_of(page):
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_json_nested_too_deep_or_too_large_is_a_422_everywhere(kafka, pg_url, processes,
                                                                tmp_path):
    """JSON nested 5,000 deep, or larger than KSER_MAX_MESSAGE_BYTES, is refused with what
    to change by the API (a 422), the UI's start form (a 422), the Python client (an error
    before anything is sent) and `kser ops start` (one line, no traceback); a 10-deep
    params object is started by each."""
    run = Run(kafka, pg_url, processes, workers=0)
    url = start_api(run, processes, KSER_MAX_MESSAGE_BYTES="100000")
    admin = {"Authorization": "Bearer adm-secret", "Content-Type": "application/json"}
    ten_deep = {"hops": 1, "deep": nested(10)}

    # the API
    body = f'{{"entrypoint": "{CHAIN}", "params": {{"hops": 1, "deep": {nested_text(DEEP)}}}}}'
    answer = requests.post(f"{url}/api/v1/operations", data=body, headers=admin, timeout=60)
    assert answer.status_code == 422, (answer.status_code, answer.text[:500])
    assert TOO_DEEP.search(answer.json()["message"]), answer.json()
    assert "recursion" not in answer.text.lower(), answer.text[:500]
    big = json.dumps({"entrypoint": CHAIN, "params": {"hops": 1, "blob": "x" * 200_000}})
    answer = requests.post(f"{url}/api/v1/operations", data=big, headers=admin, timeout=60)
    assert answer.status_code == 422, (answer.status_code, answer.text[:500])
    assert answer.json()["message"], answer.json()
    answer = requests.post(f"{url}/api/v1/operations", headers=admin, timeout=60,
                           data=json.dumps({"entrypoint": CHAIN, "params": ten_deep}))
    assert answer.status_code == 202, (answer.status_code, answer.text[:500])
    log = server_log(tmp_path)
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]

    # the Python client: refused before anything is sent
    wire = CountingAdapter()
    session = requests.Session()
    session.mount("http://", wire)
    kser = Client(url, token="adm-secret", session=session)
    with pytest.raises(ClientError) as refused:
        kser.start(CHAIN, {"hops": 1, "deep": nested(DEEP)})
    assert wire.sent == 0
    assert TOO_DEEP.search(str(refused.value)), refused.value
    assert "recursion" not in str(refused.value).lower(), refused.value
    assert kser.start(CHAIN, ten_deep)["status"] == "RUNNING"

    # kser ops start
    env = {"KSER_API_URL": url, "KSER_API_TOKEN": "adm-secret"}
    done = subprocess.run([sys.executable, "-m", "kser.cli", "ops", "start", CHAIN,
                           "--params", f'{{"hops": 1, "deep": {nested_text(DEEP)}}}'],
                          env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "Traceback" not in said, said[-3000:]
    assert len(said.splitlines()) == 1 and TOO_DEEP.search(said), said[-3000:]
    assert "recursion" not in said.lower(), said
    done = subprocess.run([sys.executable, "-m", "kser.cli", "ops", "start", CHAIN,
                           "--params", json.dumps(ten_deep)],
                          env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    # the UI's start form, logged in with an admin token
    browser = requests.Session()
    login = browser.get(f"{url}/ui/login", timeout=60)
    answer = browser.post(f"{url}/ui/login", timeout=60, allow_redirects=False,
                          data=dict(token="adm-secret", csrf=csrf_of(login.text)))
    assert answer.status_code == 302, answer.text[:500]
    form = browser.get(f"{url}/ui/entrypoints", timeout=60)
    answer = browser.post(f"{url}/ui/entrypoints/start", timeout=60, allow_redirects=False,
                          data={"entrypoint": CHAIN, "csrf": csrf_of(form.text),
                                "params": f'{{"hops": 1, "deep": {nested_text(DEEP)}}}'})
    assert answer.status_code == 422, (answer.status_code, answer.text[:500])
    [error] = re.findall(r'class="error"[^>]*>([^<]*)<', answer.text)
    assert TOO_DEEP.search(error) and "recursion" not in error.lower(), error
    answer = browser.post(f"{url}/ui/entrypoints/start", timeout=60, allow_redirects=False,
                          data={"entrypoint": CHAIN, "csrf": csrf_of(form.text),
                                "params": json.dumps(ten_deep)})
    assert answer.status_code == 302, (answer.status_code, answer.text[:500])
    log = server_log(tmp_path)
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]
    run.close()


# -- 7. cancel, then run-from, leaves an attempt RUNNING forever -------------------------

def test_cancel_then_run_from_leaves_no_attempt_running(kafka, pg_url, processes, tmp_path):
    """Canceled while its first task runs, then run from that task: the task runs again
    and the operation ends SUCCESS, and then no attempt of any task is RUNNING or without
    an end time, in the store and in the API."""
    run = Run(kafka, pg_url, processes, workers=1)
    url = start_api(run, processes)
    kser = Client(url, token="adm-secret")
    release = tmp_path / "release"
    op = kser.start(CHAIN, {"hops": 2, "release": str(release)})["id"]
    first = tasks_of(run, op)[0]["id"]

    def attempts(task_id):
        with run.store.transaction() as tx:
            return tx.get_attempts(task_id)

    wait_for(lambda: [a["status"] for a in attempts(first)] == ["RUNNING"],
             "attempt 1 of the first hop RUNNING", timeout=60)
    assert kser.cancel(op)["operation"]["status"] == "CANCELED"
    assert kser.run_from(op, first)["operation"]["status"] == "RUNNING"
    release.touch()
    assert kser.wait(op, timeout=90)["status"] == "SUCCESS"

    with run.store.transaction() as tx:
        rows = {task["name"]: tx.get_attempts(task["id"]) for task in tx.get_tasks(op)}
    ends = {name: [(a["number"], a["status"], a["finished_at"] is not None) for a in found]
            for name, found in rows.items()}
    assert all(status != "RUNNING" and ended for found in ends.values()
               for _, status, ended in found), ends
    for name in rows:
        shown = [(a["number"], a["status"], a["finished_at"]) for a in kser.attempts(op, name)]
        assert all(status != "RUNNING" and finished for _, status, finished in shown), shown
    assert running_tasks(run) == 0
    run.close()


# -- 8. a retry's error leaks into the success -------------------------------------------

def test_a_retrys_error_stays_out_of_the_results_that_follow(kafka, pg_url, processes):
    """A task that raised on attempt 1 and succeeded on attempt 2 stores what attempt 2
    returned plus the retval it inherited: no trace of attempt 1's error in it, in what
    the next task receives, nor in the operation's result. A failing task's stdout is its
    own, not its upstream's."""
    run = Run(kafka, pg_url, processes, workers=1)
    [parallel] = run.submit(1, operation=RetriedInParallel)
    [failing] = run.submit(1, operation=FailsAfterFirst)
    wait_for(lambda: statuses(run, [parallel, failing]) == {parallel: "SUCCESS",
                                                            failing: "FAILED"},
             "both operations ended", timeout=60)
    with run.store.transaction() as tx:
        tasks = {t["name"]: t for t in tx.get_tasks(parallel)}
        op = tx.get_operation(parallel)
        flaky_attempts = [a["status"] for a in tx.get_attempts(tasks["flaky"]["id"])]
        second = {t["name"]: t for t in tx.get_tasks(failing)}["second"]
        failed_op = tx.get_operation(failing)
    assert flaky_attempts == ["FAILED", "SUCCESS"]  # (it did fail once)

    flaky = tasks["flaky"]["result"]
    assert "error" not in flaky["retval"], flaky
    assert "Traceback" not in json.dumps(flaky), flaky
    assert not flaky["stderr"] and flaky["stdout"] == "ok", flaky
    assert set(flaky["retval"]) == {"first", "flaky"} and flaky["retval"]["flaky"] == 2

    received = tasks["join"]["result"]["retval"]["received"]
    assert set(received["retval"]) == {"first", "flaky", "ok1", "ok2"}, received
    assert not received["stderr"] and "Traceback" not in json.dumps(received), received
    result = op["result"]
    assert "error" not in result["retval"] and "Traceback" not in json.dumps(result), result

    assert second["status"] == "FAILED"
    assert second["result"]["stdout"] != "first", second["result"]
    assert second["result"]["stderr"] == "second fails on purpose", second["result"]
    assert failed_op["result"]["stdout"] != "first", failed_op["result"]
    run.close()
