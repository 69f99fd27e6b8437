"""The web UI (kser.web.ui) with Flask's test client on the memory transport and SQLite:
login with a token, CSRF on every form, what each page shows (the graph's nodes carry
data-task and data-status), the controls for admins only, the start forms
(tests/browser drives the same pages in a real Chromium)."""

import base64
import re

import pytest

from kser.web import create_app
from tests.unit import tasks
from tests.unit.test_api import h  # noqa: F401 (the fixture)


def csrf(page):
    return re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)


class Browser:
    """A test client that logs in with a token, as a person would."""

    def __init__(self, app, token=None):
        self.client = app.test_client()
        if token:
            login = self.client.get("/ui/login")
            answer = self.client.post("/ui/login", data=dict(token=token, csrf=csrf(login),
                                                             next="/ui/"))
            assert answer.status_code == 302, answer.get_data(as_text=True)

    def get(self, path):
        return self.client.get(path)

    def post(self, path, page_with_form="/ui/", **data):
        token = csrf(self.client.get(page_with_form))
        return self.client.post(path, data=dict(csrf=token, **data))


@pytest.fixture
def app(h):  # noqa: F811
    return create_app(h.registry)


def text(answer):
    return answer.get_data(as_text=True)


def test_without_a_session_every_page_asks_for_a_token(app):
    browser = Browser(app)
    for path in ("/ui/", "/ui/entrypoints", "/ui/operations/x"):
        answer = browser.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith(
            "/ui/login?next=")
    login = browser.get("/ui/login")
    refused = browser.client.post("/ui/login", data=dict(token="wrong", csrf=csrf(login)))
    assert refused.status_code == 401 and "not one of KSER_API_TOKENS" in text(refused)
    no_csrf = browser.client.post("/ui/login", data=dict(token="adm-token"))
    assert no_csrf.status_code == 400


def test_the_session_cookie_keeps_no_token_and_is_http_only_and_strict(app):
    browser = Browser(app)
    login = browser.get("/ui/login")
    answer = browser.client.post("/ui/login", data=dict(token="adm-token", csrf=csrf(login)))
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "adm-token" not in cookie
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    data = app.session_interface.get_signing_serializer(app).loads(value)
    assert "token_digest" in data and "adm-token" not in str(data)


def test_an_operation_page_shows_its_graph_timeline_results_and_logs(h, app):  # noqa: F811
    op = tasks.WithFlaky().send()
    h.drain()
    browser = Browser(app, "read-token")
    listing = text(browser.get("/ui/"))
    assert f'data-operation="{op.uuid}" data-status="FAILED"' in listing
    assert 'data-count="FAILED">1<' in listing
    page = text(browser.get(f"/ui/operations/{op.uuid}"))
    nodes = re.findall(r'class="node" data-task="([^"]+)" data-status="([^"]+)"', page)
    assert nodes == [("Step", "SUCCESS"), ("FlakyStep", "FAILED"), ("Step-2", "FAILED")]
    assert page.count("marker-end=") == 2  # the two edges of the chain
    bars = re.findall(r'<g data-task="([^"]+)" data-attempt="(\d+)" data-status="([^"]+)"', page)
    assert bars == [("Step", "1", "SUCCESS"), ("FlakyStep", "1", "FAILED")]
    assert "flaky step failed" in page and "[attempt 1]" in page
    assert 'data-control="recover"' not in page  # read token: no control
    assert "hx-trigger" not in page  # nothing runs: no refresh


def test_admin_controls_are_confirmed_csrf_checked_and_applied(h, app):  # noqa: F811
    op = tasks.WithFlaky().send()
    h.drain()
    reader = Browser(app, "read-token")
    refused = reader.post(f"/ui/operations/{op.uuid}/recover")
    assert refused.status_code == 403
    admin = Browser(app, "adm-token")
    page = text(admin.get(f"/ui/operations/{op.uuid}"))
    assert 'data-control="recover"' in page and "return confirm(" in page
    no_csrf = admin.client.post(f"/ui/operations/{op.uuid}/recover")
    assert no_csrf.status_code == 400
    assert h.operation(op.uuid)[0].status == "FAILED"  # neither changed anything
    tasks.FLAKY["fail"] = False
    done = admin.post(f"/ui/operations/{op.uuid}/recover")
    assert done.status_code == 302
    page = text(admin.get(f"/ui/operations/{op.uuid}"))
    assert "recovered" in page.lower() and "hx-trigger" in page  # it runs: refreshes
    h.drain()
    again = admin.post(f"/ui/operations/{op.uuid}/run-one", task="Step")
    assert again.status_code == 302
    assert admin.post(f"/ui/operations/{op.uuid}/recover").status_code == 302
    assert 'class="flash error"' in text(admin.get(f"/ui/operations/{op.uuid}"))  # 409


def test_the_start_form_starts_or_says_what_is_wrong(h, app):  # noqa: F811
    admin = Browser(app, "adm-token")
    page = text(admin.get("/ui/entrypoints"))
    assert f'data-entrypoint="{tasks.ThreeSteps.path}"' in page
    assert 'name="param.name" required' in page
    bad = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                     entrypoint=tasks.ThreeSteps.path, params="[1]")
    assert bad.status_code == 422 and "not a JSON object" in text(bad)
    missing = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                         entrypoint=tasks.ThreeSteps.path)
    assert missing.status_code == 422 and "params.name" in text(missing)
    started = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                         entrypoint=tasks.ThreeSteps.path, **{"param.name": "n"})
    assert started.status_code == 302
    op_id = started.headers["Location"].rsplit("/", 1)[-1]
    h.drain()
    assert h.operation(op_id)[0].status == "SUCCESS"
    assert h.operation(op_id)[0].params == {"name": "n"}


def test_what_a_hostile_message_stored_is_shown_escaped(h, app):  # noqa: F811
    op = tasks.ThreeSteps(params={"name": "<script>alert(1)</script>"}).send()
    h.drain()
    page = text(Browser(app, "read-token").get(f"/ui/operations/{op.uuid}"))
    assert "<script>alert(1)" not in page
    assert "\\u003cscript\\u003ealert(1)" in page  # the params, as escaped JSON


def test_the_list_pages_to_older_operations(h, app, monkeypatch):  # noqa: F811
    from kser.web import ui

    monkeypatch.setattr(ui, "PAGE", 2)
    ids = [tasks.ThreeSteps(params={"name": str(i)}).send().uuid for i in range(3)]
    browser = Browser(app, "read-token")
    first = text(browser.get("/ui/"))
    assert re.findall(r'<tr data-operation="([^"]+)"', first) == ids[:0:-1]
    older = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
    second = text(browser.get(older))
    assert re.findall(r'<tr data-operation="([^"]+)"', second) == ids[:1]
    assert 'rel="next"' not in second


@pytest.mark.parametrize("target", ["//evil.example/", "/\t/evil.example", "https://evil.example",
                                    "/ui/\\\\evil", "/api/v1/operations"])
def test_login_goes_back_to_pages_of_the_ui_only(app, target):
    browser = Browser(app)
    login = browser.get("/ui/login")
    answer = browser.client.post("/ui/login", data=dict(token="adm-token", csrf=csrf(login),
                                                        next=target))
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/"


def test_crafted_input_is_refused_not_a_500(h, app, monkeypatch):  # noqa: F811
    from sqlalchemy.exc import DataError

    browser = Browser(app)
    assert browser.client.post("/ui/login", data=dict(token="x", csrf="é")).status_code == 400
    admin = Browser(app, "adm-token")
    huge = base64.urlsafe_b64encode(b'[1' + b"0" * 420 + b', "x"]').decode()  # no float
    assert admin.get(f"/ui/?cursor={huge}").status_code == 422
    assert app.test_client().get(f"/api/v1/operations?cursor={huge}",
                                 headers={"Authorization": "Bearer adm-token"}).status_code == 422
    nested = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                        entrypoint=tasks.ThreeSteps.path, params="[" * 5000)
    assert nested.status_code == 422 and "not a JSON object" in text(nested)
    infinite = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                          entrypoint=tasks.ThreeSteps.path, params='{"x": NaN}')
    assert infinite.status_code == 422 and "NaN, which is not finite" in text(infinite)
    long_key = admin.post("/ui/entrypoints/start", "/ui/entrypoints",
                          entrypoint=tasks.ThreeSteps.path, key="k" * 256,
                          **{"param.name": "n"})
    assert long_key.status_code == 422 and "200 characters" in text(long_key)

    def refused(*args, **kwargs):
        raise DataError("SELECT", {}, ValueError("NUL characters are not allowed"))

    monkeypatch.setattr(h.store, "transaction", refused)
    answer = admin.get("/ui/?search=%00")
    assert answer.status_code == 422 and "NUL" in text(answer)


def test_refusals_are_pages_saying_why(h, app):  # noqa: F811
    op = tasks.ThreeSteps(params={"name": "n"}).send()
    reader = Browser(app, "read-token")
    refused = reader.post(f"/ui/operations/{op.uuid}/cancel")
    assert refused.status_code == 403 and refused.mimetype == "text/html"
    assert "controls need an &#39;admin&#39; one" in text(refused)
    missing = reader.get("/ui/operations/no-such-id")
    assert missing.status_code == 404 and "no operation no-such-id" in text(missing)
    bad_cursor = reader.get("/ui/?cursor=x")
    assert bad_cursor.status_code == 422 and "cursor is not one this API gave" in text(bad_cursor)
