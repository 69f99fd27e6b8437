"""The REST API (kser.web) on the memory transport and SQLite: what each route answers,
what bad input gets, and that tokens are enforced (tests/integration: real broker)."""

import json
import re
import threading
import time

import pytest

from kser.config import Settings
from kser.web import AuthConfigError, create_app
from kser.web.auth import Tokens
from tests.unit import tasks
from tests.unit.test_sequencing import Harness

ADMIN = {"Authorization": "Bearer adm-token"}
READ = {"Authorization": "Bearer read-token"}
API = "/api/v1"


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    tasks.CALLS.clear()
    tasks.FLAKY["fail"] = True
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    monkeypatch.setattr(harness.registry.settings, "api_tokens",
                        "admin:adm-token, read:read-token")
    monkeypatch.setattr(harness.registry.settings, "api_auth", "token")
    harness.client = create_app(harness.registry).test_client()
    yield harness
    harness.store.close()


def start(h, entrypoint, params=None, **body):
    response = h.client.post(f"{API}/operations", headers=ADMIN,
                             json=dict(entrypoint=entrypoint, params=params or {}, **body))
    assert response.status_code in (200, 202), response.json
    return response


def count_operations(h):
    with h.store.transaction() as tx:
        return sum(tx.count_operations().values())


def test_start_then_watch_an_operation_to_its_end(h):
    response = start(h, tasks.ThreeSteps.path, {"name": "n"})
    assert response.status_code == 202
    op = response.json
    assert response.headers["Location"] == op["url"] == f"{API}/operations/{op['id']}"
    assert op["status"] == "RUNNING" and [t["status"] for t in op["tasks"]] == ["PENDING"] * 3
    h.drain()
    op = h.client.get(op["url"], headers=READ).json
    assert op["status"] == "SUCCESS" and op["finished_at"] is not None
    first, second, third = op["tasks"]
    assert [t["name"] for t in op["tasks"]] == ["Step", "Step-2", "Step-3"]
    assert first["depends_on"] == [] and second["depends_on"] == [first["id"]]
    assert third["depends_on"] == [second["id"]]
    assert third["result"]["retval"]["seen"] == [0, 1, 2]
    assert all(t["attempt"] == 1 and t["worker"] for t in op["tasks"])


def test_a_task_started_alone_runs_as_an_operation_of_one_task(h):
    op = start(h, tasks.Echo.path, {"text": "alone"}).json
    h.drain()
    op = h.client.get(op["url"], headers=READ).json
    assert op["status"] == "SUCCESS"
    assert [t["entrypoint"] for t in op["tasks"]] == [tasks.Echo.path]
    assert op["tasks"][0]["result"]["retval"] == {"echoed": "alone"}
    assert tasks.CALLS == ["alone"]


def test_wait_returns_the_ended_operation_or_202_when_time_runs_out(h):
    response = h.client.post(f"{API}/operations?wait=0.2", headers=ADMIN,
                             json=dict(entrypoint=tasks.ThreeSteps.path, params={"name": "n"}))
    assert response.status_code == 202 and response.json["status"] == "RUNNING"
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(h.client.post(
        f"{API}/operations?wait=30", headers=ADMIN,
        json=dict(entrypoint=tasks.ThreeSteps.path, params={"name": "m"}))))
    waiting.start()
    deadline = time.monotonic() + 30
    while waiting.is_alive() and time.monotonic() < deadline:
        h.drain()
        waiting.join(0.05)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json["status"] == "SUCCESS"


def test_a_key_starts_one_operation(h):
    first = start(h, tasks.ThreeSteps.path, {"name": "n"}, key="nightly-2026-11-22").json
    again = start(h, tasks.ThreeSteps.path, {"name": "n"}, key="nightly-2026-11-22").json
    assert again["id"] == first["id"] and count_operations(h) == 1


@pytest.mark.parametrize("body, field", [
    (dict(entrypoint="no.such.Thing"), "entrypoint"),
    (dict(entrypoint=tasks.ThreeSteps.path), "params.name"),  # a required param missing
    (dict(entrypoint=tasks.Echo.path, params={}), "params.text"),
    (dict(entrypoint=tasks.Echo.path, params=["text"]), "params"),  # wrong type
    (dict(entrypoint=tasks.Echo.path, parms={"text": "x"}), "parms"),  # misspelt field
    (dict(params={"text": "x"}), "entrypoint"),
    (dict(entrypoint=tasks.Echo.path, params={"text": "x"}, key=""), "key"),
])
def test_bad_input_is_a_422_naming_the_field_and_starts_nothing(h, body, field):
    response = h.client.post(f"{API}/operations", headers=ADMIN, json=body)
    assert response.status_code == 422, response.json
    errors = response.json["errors"]["json"]
    assert field in errors, errors
    assert count_operations(h) == 0


def test_bad_query_arguments_are_422s(h):
    for query in ("limit=0", "limit=x", "status=DONE", "created_after=yesterday",
                  "cursor=not-a-cursor"):
        response = h.client.get(f"{API}/operations?{query}", headers=READ)
        assert response.status_code == 422, (query, response.json)
        assert response.json["errors"]["query"], query
    response = h.client.post(f"{API}/operations?wait=-1", headers=ADMIN,
                             json=dict(entrypoint=tasks.Echo.path, params={"text": "x"}))
    assert response.status_code == 422 and "wait" in response.json["errors"]["query"]


def test_operations_are_listed_newest_first_page_by_page_and_filtered(h):
    ids = [start(h, tasks.Echo.path, {"text": str(i)}).json["id"] for i in range(5)]
    ids.append(start(h, tasks.ThreeSteps.path, {"name": "n"}).json["id"])
    seen, cursor = [], None
    for _ in range(10):
        page = h.client.get(f"{API}/operations?limit=2" + (f"&cursor={cursor}" if cursor
                                                          else ""), headers=READ).json
        assert len(page["items"]) <= 2 and all("tasks" not in op for op in page["items"])
        seen += [op["id"] for op in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    listed = h.client.get(f"{API}/operations?entrypoint={tasks.ThreeSteps.path}",
                          headers=READ).json["items"]
    assert [op["id"] for op in listed] == [ids[-1]]
    assert len(h.client.get(f"{API}/operations?search=ThreeSt", headers=READ)
               .json["items"]) == 1
    assert h.client.get(f"{API}/operations?search={ids[0][:8]}", headers=READ
                        ).json["items"][0]["id"] == ids[0]
    h.drain()
    assert len(h.client.get(f"{API}/operations?status=SUCCESS", headers=READ)
               .json["items"]) == 6
    assert h.client.get(f"{API}/operations?status=RUNNING", headers=READ).json["items"] == []
    future = h.client.get(f"{API}/operations?created_after=2999-01-01T00:00:00Z",
                          headers=READ).json
    assert future == {"items": [], "next_cursor": None}


def test_controls_answer_409_with_the_reason_when_the_state_does_not_allow_them(h):
    op = start(h, tasks.ThreeSteps.path, {"name": "n"}).json
    url = op["url"]
    refused = h.client.post(f"{url}/recover", headers=ADMIN)
    assert refused.status_code == 409 and "only a FAILED one recovers" in refused.json["message"]
    refused = h.client.post(f"{url}/run-one", headers=ADMIN, json={"task": "Step-2"})
    assert refused.status_code == 409 and "cancel it first" in refused.json["message"]
    assert h.client.delete(url, headers=ADMIN).status_code == 409
    canceled = h.client.post(f"{url}/cancel", headers=ADMIN)
    assert canceled.status_code == 200
    assert canceled.json["operation"]["status"] == "CANCELED"
    assert h.client.post(f"{url}/cancel", headers=ADMIN).status_code == 409
    missing = h.client.post(f"{url}/run-from", headers=ADMIN, json={"task": "nope"})
    assert missing.status_code == 404 and "no task nope" in missing.json["message"]
    assert h.client.post(f"{url}/run-from", headers=ADMIN, json={}).status_code == 422


def test_recover_run_from_and_run_one_by_task_name(h):
    op = start(h, tasks.FailsInTheMiddle.path).json
    h.drain()
    url = op["url"]
    assert h.client.get(url, headers=READ).json["status"] == "FAILED"
    tasks.CALLS.clear()
    recovered = h.client.post(f"{url}/recover", headers=ADMIN)
    assert recovered.status_code == 200 and recovered.json["operation"]["status"] == "RUNNING"
    h.drain()
    assert tasks.CALLS == ["failing"]  # only what failed (and stopped again)
    tasks.CALLS.clear()
    response = h.client.post(f"{url}/run-from", headers=ADMIN, json={"task": "FailingStep"})
    assert response.status_code == 200, response.json
    h.drain()
    assert tasks.CALLS == ["failing"]
    tasks.CALLS.clear()
    response = h.client.post(f"{url}/run-one", headers=ADMIN, json={"task": "Step-2"})
    assert response.status_code == 200, response.json
    h.drain()
    assert tasks.CALLS == ["step2"]


def test_logs_and_attempts_of_a_task_by_name_or_id(h):
    op = start(h, tasks.FailsInTheMiddle.path).json
    h.drain()
    failing = next(t for t in h.client.get(op["url"], headers=READ).json["tasks"]
                   if t["name"] == "FailingStep")
    for ref in ("FailingStep", failing["id"]):
        attempts = h.client.get(f"{op['url']}/tasks/{ref}/attempts", headers=READ).json
        assert attempts["task"]["id"] == failing["id"]
        [attempt] = attempts["attempts"]
        assert attempt["status"] == "FAILED" and attempt["seconds"] >= 0
        assert "step refused its input" in attempt["error"]
        logs = h.client.get(f"{op['url']}/tasks/{ref}/logs", headers=READ).json
        assert logs["task"]["name"] == "FailingStep" and isinstance(logs["lines"], list)
    assert h.client.get(f"{op['url']}/tasks/nope/logs", headers=READ).status_code == 404
    assert h.client.get(f"{op['url']}/tasks/FailingStep/logs?attempt=2", headers=READ
                        ).json["lines"] == []


def test_delete_a_finished_operation(h):
    op = start(h, tasks.ThreeSteps.path, {"name": "n"}).json
    h.drain()
    assert h.client.delete(op["url"], headers=ADMIN).status_code == 204
    assert h.client.get(op["url"], headers=READ).status_code == 404
    assert h.client.delete(op["url"], headers=ADMIN).status_code == 404
    assert count_operations(h) == 0


def test_unknown_ids_are_404s(h):
    for path in ("/operations/nope", "/operations/nope/tasks/x/logs",
                 "/operations/nope/tasks/x/attempts"):
        assert h.client.get(API + path, headers=READ).status_code == 404, path
    for control in ("cancel", "recover"):
        assert h.client.post(f"{API}/operations/nope/{control}",
                             headers=ADMIN).status_code == 404


def test_entrypoints_say_what_can_be_started(h):
    found = {e["path"]: e for e in h.client.get(f"{API}/entrypoints", headers=READ).json}
    assert found[tasks.Echo.path]["kind"] == "task"
    assert found[tasks.Echo.path]["required_fields"] == ["text"]
    assert found[tasks.ThreeSteps.path]["kind"] == "operation"
    assert found[tasks.ThreeSteps.path]["required_fields"] == ["name"]


WRITES = [("post", "/operations", dict(entrypoint=tasks.Echo.path, params={"text": "x"})),
          ("post", "/operations/{id}/cancel", None),
          ("post", "/operations/{id}/recover", None),
          ("post", "/operations/{id}/run-from", {"task": "Step"}),
          ("post", "/operations/{id}/run-one", {"task": "Step"}),
          ("delete", "/operations/{id}", None),
          ("post", "/dead-letters/replay", {})]


@pytest.mark.parametrize("method, path, body", WRITES)
@pytest.mark.parametrize("headers, status", [
    ({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": "adm-token"}, 401),
    ({"Authorization": "Basic adm-token"}, 401), (READ, 403)])
def test_writes_need_an_admin_token_and_change_nothing_without_one(h, method, path, body,
                                                                   headers, status):
    op = start(h, tasks.ThreeSteps.path, {"name": "n"}).json
    h.drain()
    h.client.post(f"{op['url']}/run-one", headers=ADMIN, json={"task": "Step"})
    before = h.client.get(op["url"], headers=READ).json
    sent_before = len(h.broker.records("ops"))
    response = getattr(h.client, method)(API + path.format(id=op["id"]), headers=headers,
                                         json=body)
    assert response.status_code == status, response.json
    assert response.json["message"]
    if status == 401:  # says how to authenticate
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="kser"'
    assert h.client.get(op["url"], headers=READ).json == before
    assert count_operations(h) == 1 and len(h.broker.records("ops")) == sent_before


@pytest.mark.parametrize("path", ["/operations", "/operations/x", "/entrypoints",
                                  "/operations/x/tasks/y/logs", "/dead-letters"])
def test_reads_need_a_token(h, path):
    assert h.client.get(API + path).status_code == 401
    assert h.client.get(API + path, headers={"Authorization": "Bearer nope"}).status_code == 401


def test_probes_and_the_api_document_need_no_token(h):
    assert h.client.get(f"{API}/health").json == {"status": "ok"}
    ready = h.client.get(f"{API}/ready")
    assert ready.status_code == 200 and ready.json["checks"]["store"]["ok"], ready.json
    spec = h.client.get(f"{API}/openapi.json").json
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert f"{API}/operations/{{operation_id}}/run-from" in spec["paths"]
    docs = h.client.get(f"{API}/docs")
    assert docs.status_code == 200 and b"/kser-static/swagger-ui/" in docs.data
    assert b"cdn" not in docs.data.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert h.client.get(f"/kser-static/swagger-ui/{asset}").status_code == 200


def test_a_store_or_kafka_failing_is_a_503_to_retry(h, monkeypatch):
    from kafka.errors import KafkaTimeoutError
    from sqlalchemy.exc import OperationalError

    def store_down():
        raise OperationalError("SELECT 1", {}, OSError("connection refused"))

    monkeypatch.setattr(h.store, "transaction", store_down)
    for method, path, body in [("get", "/operations", None), ("get", "/operations/x", None),
                               ("post", "/operations", dict(entrypoint=tasks.Echo.path,
                                                            params={"text": "x"})),
                               ("post", "/operations/x/cancel", None)]:
        response = getattr(h.client, method)(API + path, headers=ADMIN, json=body)
        assert response.status_code == 503, (path, response.json)
        assert response.headers["Retry-After"] == "5"
        assert "the store is unreachable" in response.json["message"]
        assert "connection refused" in response.json["message"]

    def kafka_down(settings):
        raise KafkaTimeoutError("no broker answered")

    monkeypatch.setattr("kser.dlq.clients", kafka_down)
    response = h.client.get(f"{API}/dead-letters", headers=READ)
    assert response.status_code == 503 and "Kafka did not answer" in response.json["message"]


@pytest.mark.parametrize("key", [None, "k-1"])
def test_an_operation_started_while_kafka_is_down_is_stored_and_sent_later(h, monkeypatch, key):
    from kafka.errors import KafkaTimeoutError

    def kafka_down(*args, **kwargs):
        raise KafkaTimeoutError("no broker answered")

    with monkeypatch.context() as down:
        down.setattr(h.registry.sequencer.outbox, "_producer", kafka_down)
        response = h.client.post(f"{API}/operations", headers=ADMIN, json=dict(
            entrypoint=tasks.ThreeSteps.path, params={"name": "n"}, key=key))
        # not a 503: a client retrying would start it a second time
        assert response.status_code == 202, response.json
        op = response.json
        assert op["status"] == "RUNNING"
        assert h.messages("ops") == []  # its first message waits in the outbox
        if key:
            again = h.client.post(f"{API}/operations", headers=ADMIN, json=dict(
                entrypoint=tasks.ThreeSteps.path, params={"name": "n"}, key=key))
            assert again.json["id"] == op["id"]
    assert h.registry.sequencer.publish(op["id"]) == 1  # (what a worker's sweep does)
    h.drain()
    assert h.client.get(op["url"], headers=READ).json["status"] == "SUCCESS"


def test_ready_names_the_store_when_it_is_unreachable(h, monkeypatch):
    def broken():
        raise OSError("database gone")

    monkeypatch.setattr(h.store, "transaction", broken)
    ready = h.client.get(f"{API}/ready")
    assert ready.status_code == 503 and not ready.json["ready"]
    assert "database gone" in ready.json["checks"]["store"]["error"]


@pytest.mark.parametrize("tokens, auth, error", [
    ("", "token", "has no token"),
    ("admin", "token", "pair 1 is not 'role:token'"),
    ("admin:", "token", "pair 1 is not 'role:token'"),
    ("admin:x,root:y", "token", "pair 2 has the role 'root'"),
    ("admin:x", "none", "both set"),
    ("admin:x", "maybe", "'token' (the default) or 'none'"),
])
def test_token_settings_that_cannot_work_stop_the_api(tokens, auth, error):
    with pytest.raises(AuthConfigError, match=re.escape(error)) as raised:
        Tokens.from_settings(Settings(api_tokens=tokens, api_auth=auth))
    assert ":x" not in str(raised.value)  # a token is never repeated in an error


def test_an_open_api_must_be_asked_for_and_is_logged(caplog):
    tokens = Tokens.from_settings(Settings(api_tokens="", api_auth="none"))
    assert tokens.role_of(None) == "admin"
    assert "KSER_API_AUTH=none" in caplog.text


def test_a_read_token_reads_only_the_registry_s_dead_letters(h):
    response = h.client.get(f"{API}/dead-letters?topic=payments&wait=0.1", headers=READ)
    assert response.status_code == 404, response.json
    assert "'payments' is not a topic of this registry" in response.json["message"]


def test_a_key_kser_keeps_for_itself_is_a_422_naming_the_key(h):
    response = h.client.post(f"{API}/operations", headers=ADMIN, json=dict(
        entrypoint=tasks.ThreeSteps.path, params={"name": "n"},
        key="schedule:nightly:2026-12-07T02:00:00+00:00"))
    assert response.status_code == 422, response.json
    assert "kser keeps for its own keys" in json.dumps(response.json)
