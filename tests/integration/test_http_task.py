"""kser.tasks.HttpTask against a real HTTP server on 127.0.0.1 (a small Flask app)."""

import threading

import pytest
from flask import Flask, jsonify
from werkzeug.serving import make_server

from kser.sequencing import Operation
from kser.tasks import HttpTask
from tests.unit import tasks
from tests.unit.test_sequencing import Harness, run_until_final

registry = tasks.registry
HITS: dict[str, int] = {}


@pytest.fixture(scope="module")
def server():
    app = Flask("http-task-test")

    @app.route("/<status>", methods=["GET", "POST"])
    def answer(status):
        HITS[status] = HITS.get(status, 0) + 1
        if status == "flaky" and HITS[status] < 3:
            return jsonify(error="busy"), 503
        code = 200 if status == "flaky" else int(status)
        return jsonify(status=code), code

    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(10)


class FastRetries(HttpTask):
    RETRY_MIN_BACKOFF = RETRY_MAX_BACKOFF = 0.05


registry.subscribe(FastRetries)


@registry.subscribe
class Call(Operation):
    def build_tasks(self, url, **kwargs):
        return [FastRetries("POST", url, json={"x": 1}, name="call")]


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    HITS.clear()
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    yield harness
    harness.store.close()


def test_an_ok_status_succeeds_with_the_decoded_body(h, server):
    row = run_until_final(h, Call(params={"url": f"{server}/201"}).send().uuid)
    assert row.status == "SUCCESS"
    assert row.result["retval"] == {"status": 201, "json": {"status": 201}}


def test_a_5xx_is_retried_and_a_4xx_is_not(h, server):
    row = run_until_final(h, Call(params={"url": f"{server}/flaky"}).send().uuid)
    assert row.status == "SUCCESS" and HITS["flaky"] == 3
    row = run_until_final(h, Call(params={"url": f"{server}/404"}).send().uuid)
    assert row.status == "FAILED" and HITS["404"] == 1 and row.result["retcode"] == 404
    assert "answered 404, not one of [200, 201, 202, 204]" in row.result["stderr"]


def test_a_server_that_is_not_there_is_retried_then_fails(h):
    row = run_until_final(h, Call(params={"url": "http://127.0.0.1:9/nothing"}).send().uuid)
    assert row.status == "FAILED"
    assert "ConnectionError" in row.result["stderr"]
    _, task_rows = h.operation(row.id)
    assert task_rows[0].attempt == 3  # the first, and MAX_RETRIES (2) more
