"""kser.client.Client against the real API app in process (tests/wsgi.py: no socket):
every call, every typed error, paging; tests/integration runs it over HTTP."""

import re

import pytest
import requests
from sqlalchemy.exc import OperationalError

from kser import client as client_module
from kser.client import (
    Client,
    Conflict,
    Forbidden,
    InvalidParams,
    NotFound,
    ServerError,
    ServerUnreachable,
    ServiceUnavailable,
    Unauthorized,
    api_url,
)
from kser.web import create_app
from tests.unit import tasks
from tests.unit.test_api import h  # noqa: F401 (the fixture)
from tests.wsgi import BASE, session_for


@pytest.fixture
def app(h):  # noqa: F811
    return create_app(h.registry)


def client(app, token="adm-token"):
    return Client(BASE, token=token, session=session_for(app))


def test_start_then_get_an_operation_and_its_logs(h, app):  # noqa: F811
    kser = client(app)
    op = kser.start(tasks.WithFlaky.path)
    assert op["status"] == "RUNNING" and op["url"] == f"/api/v1/operations/{op['id']}"
    h.drain()
    op = kser.wait(op["id"], timeout=5)
    assert op["status"] == "FAILED"
    flaky = op["tasks"][1]
    assert [line["message"].split(": ")[-1] for line in kser.logs(op["id"], flaky["name"])] == [
        "attempt 1"]
    assert [a["status"] for a in kser.attempts(op["id"], flaky["id"])] == ["FAILED"]
    tasks.FLAKY["fail"] = False
    recovered = kser.recover(op["id"])
    assert recovered["operation"]["status"] == "RUNNING" and recovered["message"]
    h.drain()
    assert kser.get(op["id"])["status"] == "SUCCESS"
    assert [line["attempt"] for line in kser.logs(op["id"], flaky["name"], attempt=2)] == [2]
    assert kser.run_one(op["id"], "Step")["message"]  # (its status does not change)
    h.drain()
    assert tasks.CALLS[-1] == "step0"
    assert kser.run_from(op["id"], flaky["name"])["operation"]["status"] == "RUNNING"
    h.drain()
    assert kser.wait(op["id"], timeout=5)["status"] == "SUCCESS"
    kser.delete(op["id"])
    with pytest.raises(NotFound):
        kser.get(op["id"])


def test_a_key_starts_once_and_list_goes_through_every_page(h, app):  # noqa: F811
    kser = client(app)
    first = kser.start(tasks.ThreeSteps.path, {"name": "n"}, key="nightly")
    assert kser.start(tasks.ThreeSteps.path, {"name": "n"}, key="nightly")["id"] == first["id"]
    ids = [kser.start(tasks.Echo.path, {"text": str(i)})["id"] for i in range(4)]
    listed = [op["id"] for op in kser.list(page_size=2)]
    assert listed == [*ids[::-1], first["id"]]  # newest first, over three pages
    assert [op["id"] for op in kser.list(entrypoint=tasks.ThreeSteps.path)] == [first["id"]]
    h.drain()
    assert {op["status"] for op in kser.list(status="SUCCESS")} == {"SUCCESS"}
    assert len(list(kser.list(status="SUCCESS"))) == 5


def test_entrypoints_health_and_ready(app):
    kser = client(app, token="read-token")
    paths = {e["path"]: e for e in kser.entrypoints()}
    assert paths[tasks.ThreeSteps.path]["required_fields"] == ["name"]
    assert kser.health()["status"] == "ok"


def test_each_refusal_is_a_typed_error_that_says_what_to_do(h, app):  # noqa: F811
    kser = client(app)
    with pytest.raises(InvalidParams) as bad:
        kser.start("no.such.Entrypoint")
    assert bad.value.field == "entrypoint" and "GET /entrypoints" in str(bad.value)
    with pytest.raises(InvalidParams) as bad:
        kser.start(tasks.ThreeSteps.path)
    assert bad.value.field == "params.name" and bad.value.status == 422
    with pytest.raises(NotFound):
        kser.get("no-such-id")
    op = kser.start(tasks.ThreeSteps.path, {"name": "n"})
    with pytest.raises(Conflict) as refused:
        kser.recover(op["id"])
    assert "RUNNING" in str(refused.value)
    with pytest.raises(Forbidden):
        client(app, token="read-token").cancel(op["id"])
    for token in (None, "wrong"):
        with pytest.raises(Unauthorized) as unknown:
            client(app, token=token).get(op["id"])
        assert "KSER_API_TOKEN" in str(unknown.value)
    assert kser.get(op["id"])["status"] == "RUNNING"  # none of them changed anything


def test_a_store_down_is_service_unavailable_with_its_retry_delay(h, app, monkeypatch):  # noqa: F811
    def store_down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(h.store, "transaction", store_down)
    with pytest.raises(ServiceUnavailable) as down:
        client(app).get("any")
    assert down.value.status == 503 and down.value.retry_after and down.value.retry_after > 0


def test_no_answer_is_server_unreachable(monkeypatch):
    class Refusing(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            raise requests.ConnectionError("connection refused")

    session = requests.Session()
    session.mount(BASE, Refusing())
    with pytest.raises(ServerUnreachable) as unreachable:
        Client(BASE, session=session).get("x")
    assert "kser serve" in str(unreachable.value) and unreachable.value.status is None


def test_wait_raises_timeout_error_when_the_operation_goes_on(h, app, monkeypatch):  # noqa: F811
    monkeypatch.setattr(client_module, "POLL_INTERVAL", (0.01, 0.01))
    kser = client(app)
    op = kser.start(tasks.ThreeSteps.path, {"name": "n"})
    with pytest.raises(TimeoutError, match="still RUNNING"):
        kser.wait(op["id"], timeout=0.05)


@pytest.mark.parametrize(("given", "expected"), [
    ("http://h:8000", "http://h:8000/api/v1"), ("http://h:8000/", "http://h:8000/api/v1"),
    ("https://h/kser/api/v1/", "https://h/kser/api/v1")])
def test_a_url_naming_only_a_host_gets_the_api_prefix(given, expected):
    assert api_url(given) == expected


def test_a_url_that_is_not_http_is_refused_saying_what_to_give():
    with pytest.raises(ValueError, match="http://localhost:8000"):
        api_url("localhost:8000")


def test_an_answer_that_is_not_the_apis_json_is_a_server_error(app):
    session = session_for(app)
    with pytest.raises(ServerError, match=re.escape("is http://kser.test/ui the API's URL")):
        Client(f"{BASE}/ui", token="adm-token", session=session).get("x")  # the login page


def test_a_session_given_is_left_as_it_was(app):
    session = session_for(app)
    with Client(BASE, token="adm-token", session=session) as kser:
        assert kser.health()["status"] == "ok"
    assert "Authorization" not in session.headers  # its other requests carry no token
    assert session.adapters  # and it was not closed for its owner


def test_a_read_is_sent_again_on_a_connection_the_server_closed_a_post_never():
    retries = Client("http://127.0.0.1:9").session.get_adapter("http://127.0.0.1:9").max_retries
    assert retries.read == 2 and retries.is_retry("GET", 0) is False
    assert retries._is_method_retryable("GET") and not retries._is_method_retryable("POST")
