"""The control plane for real: `kser serve` (gunicorn) and a `kser worker` on the real
broker and PostgreSQL, driven by kser.client.Client and the `kser ops` commands as a
script would run them: start, wait, logs, fail, recover, cancel, watch, their exit
statuses; then the store going away under the API and coming back."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from kser.client import Client, Forbidden, ServiceUnavailable
from tests.acceptance.harness import Run, wait_for

CHAIN = "tests.acceptance.workload.Chain"
TOKENS = "admin:adm-secret,read:read-secret"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(run, processes, **env):
    """`kser serve` of the workload's registry on a free port; its URL once it answers."""
    port = free_port()
    env = {**run.env, "KSER_BOOTSTRAP_SERVERS": run.kafka.bootstrap_servers,
           "KSER_TOPIC": run.topic, "KSER_API_TOKENS": TOKENS, **env}
    processes.start([sys.executable, "-m", "kser.cli", "serve",
                     "tests.acceptance.workload:registry", "--port", str(port),
                     "--workers", "2", "--threads", "4"], env=env, name="api")
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(f"{url}/api/v1/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    wait_for(up, "kser serve answering", 60)
    return url


def ops(url, *args, token="adm-secret", timeout=120):
    """`kser ops ...` as a script runs it: its exit status and output."""
    env = {**os.environ, "KSER_API_URL": url, "KSER_API_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "kser.cli", "ops", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def control_plane(kafka, pg_url, processes):
    run = Run(kafka, pg_url, processes, workers=1)
    url = start_api(run, processes)
    yield run, url
    run.close()


def test_client_and_ops_commands_drive_operations_on_real_workers(control_plane, tmp_path):
    _run, url = control_plane
    kser = Client(url, token="adm-secret")
    ready = kser.ready()
    assert ready["ready"] and ready["checks"]["store"]["ok"] and ready["checks"]["broker"]["ok"]

    # started and waited for through the API: every task ran, in order, on the worker
    done = kser.start(CHAIN, {"hops": 3}, key="nightly-1", wait=60)
    assert done["status"] == "SUCCESS", done
    assert [(t["name"], t["status"], t["attempt"]) for t in done["tasks"]] == [
        ("Hop", "SUCCESS", 1), ("Hop-2", "SUCCESS", 1), ("Hop-3", "SUCCESS", 1)]
    assert done["result"]["retval"]["hops"] == [0, 1, 2]
    assert [line["message"].split(": ")[-1] for line in kser.logs(done["id"], "Hop-3")] == [
        "hop 2 after [0, 1]"]
    assert kser.attempts(done["id"], "Hop-2")[0]["worker"]
    assert kser.start(CHAIN, {"hops": 3}, key="nightly-1")["id"] == done["id"]

    # a failure, seen and repaired from a shell script
    fixed = tmp_path / "fixed"
    failing = kser.start(CHAIN, {"hops": 3, "fail_at": 1, "fixed": str(fixed)}, wait=60)
    assert failing["status"] == "FAILED"
    assert ops(url, "wait", failing["id"])[0] == 1
    status, shown = ops(url, "show", failing["id"])
    assert status == 0 and "hop 1 fails on purpose" in shown
    fixed.touch()
    assert ops(url, "recover", failing["id"])[0] == 0
    assert ops(url, "wait", failing["id"], "--timeout", "60")[0] == 0

    # canceled while its first task runs
    hold = tmp_path / "hold"
    held = kser.start(CHAIN, {"hops": 3, "hold_until": str(hold)})
    wait_for(lambda: kser.get(held["id"])["tasks"][0]["status"] == "RUNNING",
             "the held task running", 60)
    with pytest.raises(Forbidden):
        Client(url, token="read-secret").cancel(held["id"])
    assert ops(url, "cancel", held["id"])[0] == 0
    hold.touch()
    assert ops(url, "wait", held["id"], "--timeout", "60")[0] == 1
    assert kser.get(held["id"])["status"] == "CANCELED"

    # watched and listed by a script
    status, watched = ops(url, "watch", done["id"], failing["id"], "--interval", "0.2",
                          "--timeout", "60")
    assert status == 0, watched
    status, listed = ops(url, "ls", "--json", token="read-secret")
    assert status == 0
    assert {op["id"]: op["status"] for op in json.loads(listed)} == {
        done["id"]: "SUCCESS", failing["id"]: "SUCCESS", held["id"]: "CANCELED"}
    assert ops("http://127.0.0.1:9", "ls")[0] == 2  # nothing there


def test_the_store_going_away_is_a_503_and_the_api_comes_back_with_it(control_plane,
                                                                       postgres):
    _run, url = control_plane
    kser = Client(url, token="adm-secret")
    op = kser.start(CHAIN, {"hops": 2}, wait=60)
    postgres.stop()
    try:
        with pytest.raises(ServiceUnavailable) as down:
            kser.get(op["id"])
        assert down.value.retry_after and "store" in str(down.value).lower()
        answer = requests.get(f"{url}/api/v1/ready", timeout=30)
        assert answer.status_code == 503
        checks = answer.json()["checks"]
        assert not checks["store"]["ok"] and checks["broker"]["ok"]
        assert kser.health()["status"] == "ok"  # the process itself is alive
    finally:
        postgres.start()
    deadline = time.monotonic() + 60
    while True:
        try:
            assert kser.get(op["id"])["status"] == "SUCCESS"
            break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "the API did not come back with the store"
            time.sleep(0.5)
    assert kser.start(CHAIN, {"hops": 2}, wait=60)["status"] == "SUCCESS"


def test_kafka_going_away_leaves_starts_stored_and_sent_when_it_is_back(kafka, pg_url,
                                                                        processes):
    run = Run(kafka, pg_url, processes, workers=1)
    url = start_api(run, processes, KSER_SEND_TIMEOUT="3")
    kser = Client(url, token="adm-secret")
    assert kser.start(CHAIN, {"hops": 2}, wait=60)["status"] == "SUCCESS"
    kafka.stop()
    try:
        # stored, its first message in the outbox: 202, not a 503 a client would retry
        op = kser.start(CHAIN, {"hops": 2}, key="while-kafka-is-away")
        assert op["status"] == "RUNNING"
        assert kser.start(CHAIN, {"hops": 2}, key="while-kafka-is-away")["id"] == op["id"]
        answer = requests.get(f"{url}/api/v1/ready", timeout=60)
        checks = answer.json()["checks"]
        assert answer.status_code == 503 and checks["store"]["ok"] and not checks["broker"]["ok"]
        assert kser.get(op["id"])["status"] == "RUNNING"  # reads need only the store
    finally:
        kafka.start()
    # a worker's sweep sends what waited in the outbox
    assert kser.wait(op["id"], timeout=120)["status"] == "SUCCESS"
    assert requests.get(f"{url}/api/v1/ready", timeout=60).status_code == 200
    run.close()
