"""The web UI of the control plane (``/ui``): server-rendered pages, htmx for the parts
that refresh themselves (a few lines of script keep opened logs open across a refresh,
forms ask for confirmation), nothing from a CDN.

- ``/ui/``: operations, counts by status, filters and search; refreshes while any runs.
- ``/ui/operations/<id>``: its task graph (SVG, a node per task coloured by status),
  the timeline of its attempts, each task's result and log, and (admin) cancel,
  recover, run-from and run-one, each confirmed first.
- ``/ui/entrypoints``: what can be started, each with a form.

The same tokens as the API: the UI asks for one once and keeps its digest (not the
token) in Flask's signed session cookie, ``HttpOnly`` and ``SameSite=Strict``; every
form carries the session's CSRF token. Pages read the store directly, in the process
serving them, through the same functions as the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from cdumay_error.types import ValidationError
from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from kser.schemas import MAX_KEY_LENGTH, load_json
from kser.status import FINAL_STATUSES, Status
from kser.web import api
from kser.web.auth import ADMIN, READ
from kser.web.drawing import NODE_HEIGHT, NODE_WIDTH, graph, timeline
from kser.web.views import attempt_view, log_view, operation_view

F = TypeVar("F", bound=Callable[..., Any])

ui = Blueprint("ui", __name__, template_folder="templates", url_prefix="/ui")

#: seconds between two refreshes of a page while something runs
REFRESH_SECONDS = 2
#: operations per page of the list
PAGE = 50
#: fill colour of each status (the graph, the timeline and the badges)
COLOURS = {"SUCCESS": "#2e9d57", "FAILED": "#d64545", "CANCELED": "#c99a14",
           "RUNNING": "#2f7fd1", "PENDING": "#9aa3ad", "SKIPPED": "#c4c9cf"}


def init_ui(app: Flask) -> None:
    """Mount the UI in ``app`` (the API must be mounted: it holds the registry and
    tokens). The session cookie is made ``SameSite=Strict`` (and ``HttpOnly``, Flask's
    default); without a ``SECRET_KEY`` of the app's, one is derived from the tokens,
    the same in every server process (changing the tokens ends every session)."""
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if not app.secret_key:
        registry = app.extensions["kser"]
        seed = f"kser-ui\0{registry.settings.api_tokens}\0{registry.settings.store_url}"
        app.secret_key = hashlib.sha256(seed.encode()).hexdigest()
    app.register_blueprint(ui)


def error_page(exc: HTTPException) -> tuple[str, int]:
    """A refusal of the UI's (400, 403, 404...) as a page saying why (the app's own
    handler, flask-smorest's, would answer JSON)."""
    code = exc.code or 500
    data = getattr(exc, "data", None)  # (flask-smorest's abort keeps its message there)
    message = (data.get("message") if isinstance(data, dict) else None) or exc.description
    return render_template("kser/error.html", code=code, name=exc.name,
                           message=message), code


def _as_page(answer: tuple[dict[str, Any], int, Any] | tuple[dict[str, Any], int]) -> Any:
    body, code = answer[0], answer[1]
    headers = answer[2] if len(answer) > 2 else {}
    page = render_template("kser/error.html", code=code, name=body.get("status", ""),
                           message=body.get("message", ""))
    return page, code, headers


for _error in api.UNAVAILABLE:  # a store or Kafka failing: a 503, as the API's
    ui.register_error_handler(_error, lambda exc: _as_page(api.unavailable(exc)))
ui.register_error_handler(DataError, lambda exc: _as_page(api.refused_by_store(exc)))
ui.register_error_handler(HTTPException, error_page)


# -- who is asking ----------------------------------------------------------------------

def _digest(token: str) -> str:
    """What the session keeps of a token: an HMAC keyed with the app's secret key (the
    signed cookie is readable; a plain hash of a weak token could be brute-forced)."""
    key = str(current_app.secret_key).encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def current_role() -> str | None:
    """The role of the session's token (None: not logged in, or the token was removed
    from KSER_API_TOKENS since)."""
    tokens = api.tokens()
    if tokens.open:
        return ADMIN
    digest = session.get("token_digest")
    if not isinstance(digest, str):
        return None
    found = None
    for role, token in tokens.tokens:
        if hmac.compare_digest(_digest(token), digest) and found != ADMIN:
            found = role
    return found


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    token: str = session["csrf"]
    return token


def _check_csrf() -> None:
    sent = request.form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent.encode(), str(session.get("csrf", "")).encode()):
        abort(400, "the form's CSRF token is missing or stale: reload the page and retry")


def login_required(role: str = READ) -> Callable[[F], F]:
    """Pages for ``role`` (admin: also read): to the login page without a session, 403
    with too little; POSTs must carry the CSRF token."""
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            have = current_role()
            if have is None:
                return redirect(url_for("ui.login", next=request.full_path))
            if role == ADMIN and have != ADMIN:
                abort(403, "this token is 'read': controls need an 'admin' one")
            if request.method == "POST":
                _check_csrf()
            return view(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate


@ui.app_template_global("csrf_token")
def _csrf_global() -> str:
    return csrf_token()


@ui.context_processor
def _context() -> dict[str, Any]:
    return dict(role=current_role(), colours=COLOURS, open_auth=api.tokens().open,
                refresh_seconds=REFRESH_SECONDS)


@ui.app_template_filter("when")
def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@ui.app_template_filter("took")
def _took(start: Any, end: Any = None) -> str:
    if start is None:
        return "-"
    seconds = ((end.timestamp() if end else time.time()) - start.timestamp())
    text = f"{seconds:.2f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return text if end else f"{text}…"


@ui.app_template_filter("pretty")
def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


# -- pages ------------------------------------------------------------------------------

@ui.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Ask for a token once; keep its digest in the session."""
    target = request.values.get("next") or ""
    # back to a page of the UI only (no open redirect: werkzeug drops control
    # characters from a Location, turning "/\t/evil" into "//evil")
    if (not target.startswith("/ui/") or "\\" in target
            or any(ord(c) < 32 or ord(c) == 127 for c in target)):
        target = url_for("ui.operations")
    error = None
    if request.method == "POST":
        _check_csrf()
        token = request.form.get("token", "").strip()
        if api.tokens().role_of_token(token) is None:
            error = "this token is not one of KSER_API_TOKENS"
        else:
            session.clear()
            session["token_digest"] = _digest(token)
            csrf_token()
            return redirect(target)
    return render_template("kser/login.html", error=error, next=target), 401 if error else 200


@ui.route("/logout", methods=["POST"])
def logout() -> Response:
    _check_csrf()
    session.clear()
    return redirect(url_for("ui.login"))


@ui.route("/")
@login_required()
def operations() -> Any:
    """Operations, newest first, with counts by status and filters."""
    status = request.args.get("status") or None
    if status not in (None, *(str(s) for s in Status)):
        status = None
    search = (request.args.get("search") or "").strip() or None
    entrypoint = request.args.get("entrypoint") or None

    after = api.decode_cursor(request.args["cursor"]) if request.args.get("cursor") else None

    def read(tx: Any) -> tuple[list[Any], dict[str, int]]:
        return (tx.list_operations(status=status, search=search, entrypoint=entrypoint,
                                   after=after, limit=PAGE + 1), tx.count_operations())
    rows, counts = api.transaction(read)
    ops = [operation_view(op, url_for("ui.operation", operation_id=op.id))
           for op in rows[:PAGE]]
    older = (url_for("ui.operations", status=status, search=search, entrypoint=entrypoint,
                     cursor=api.encode_cursor(rows[PAGE - 1])) if len(rows) > PAGE else None)
    running = counts.get(Status.RUNNING, 0) > 0
    template = ("kser/_operations.html" if request.headers.get("HX-Request")
                else "kser/operations.html")
    return render_template(template, operations=ops, counts=counts, status=status,
                           search=search or "", entrypoint=entrypoint or "",
                           statuses=list(COLOURS), running=running, older=older)


def _operation_page(operation_id: str) -> dict[str, Any]:
    def read(tx: Any) -> dict[str, Any]:
        op = api.full_operation(tx, operation_id)
        attempts: list[tuple[str, dict[str, Any]]] = []
        logs: dict[str, list[dict[str, Any]]] = {}
        for task in op["tasks"]:
            attempts += [(task["name"], attempt_view(a)) for a in tx.get_attempts(task["id"])]
            logs[task["id"]] = [log_view(line) for line in tx.get_logs(task["id"])]
        return dict(op=op, attempts=attempts, logs=logs)
    page: dict[str, Any] = api.transaction(read)
    op = page["op"]
    page["names"] = {task["id"]: task["name"] for task in op["tasks"]}
    page["graph"] = graph(op["tasks"])
    page["timeline"] = timeline(page["attempts"], time.time())
    page["running"] = op["status"] not in FINAL_STATUSES
    page["node_width"], page["node_height"] = NODE_WIDTH, NODE_HEIGHT
    return page


@ui.route("/operations/<operation_id>")
@login_required()
def operation(operation_id: str) -> Any:
    """One operation: graph, timeline, tasks with results and logs, controls."""
    try:
        page = _operation_page(operation_id)
    except Exception as exc:  # the API's 404 (flask-smorest's abort) as the UI's
        if getattr(exc, "code", None) == 404:
            abort(404, f"no operation {operation_id} in the store")
        raise
    template = ("kser/_operation.html" if request.headers.get("HX-Request")
                else "kser/operation.html")
    return render_template(template, **page)


def _json(text: str) -> Any:
    """``text`` as JSON, refusing NaN and infinities (the store's JSON has none) and
    nesting kser cannot carry (see :func:`kser.schemas.load_json`).

    :raises ValueError: saying what to change
    """
    try:
        return load_json(text, "the params")
    except ValidationError as exc:
        raise ValueError(exc.message) from None


CONTROLS = {"cancel": "cancel", "recover": "recover", "run-from": "run_from",
            "run-one": "run_one"}


@ui.route("/operations/<operation_id>/<control>", methods=["POST"])
@login_required(ADMIN)
def control(operation_id: str, control: str) -> Response:
    """Cancel, recover, run-from or run-one (the last two with the form's task)."""
    if control not in CONTROLS:
        abort(404)
    registry = api.registry()
    method = getattr(registry, CONTROLS[control])
    # run-from and run-one take the form's task (its name or id)
    args = (request.form.get("task", ""),) if control in ("run-from", "run-one") else ()
    result = method(operation_id, *args)
    flash(result.stderr or result.stdout, "error" if result.retcode >= 300 else "info")
    return redirect(url_for("ui.operation", operation_id=operation_id))


@ui.route("/entrypoints")
@login_required()
def entrypoints() -> str:
    """What can be started, each with a form (admin)."""
    return render_template("kser/entrypoints.html", entrypoints=api.entrypoint_list(),
                           errors={}, values={})


@ui.route("/entrypoints/start", methods=["POST"])
@login_required(ADMIN)
def start() -> Any:
    """Start an entrypoint from its form: its required fields, and more params as JSON."""
    entrypoint = request.form.get("entrypoint", "")
    values = {k[len("param."):]: v for k, v in request.form.items() if k.startswith("param.")}
    extra = request.form.get("params", "").strip()
    params: dict[str, Any] = {}
    error = None
    key = request.form.get("key") or None
    if extra:
        try:
            loaded = _json(extra)
            if not isinstance(loaded, dict):
                raise ValueError("not an object")
            params.update(loaded)
        except ValueError as exc:
            error = f"more params: not a JSON object ({exc})"
    for name, value in values.items():  # a field's text, as JSON when it is JSON
        try:
            params[name] = _json(value)
        except ValueError:
            params[name] = value
    if key is not None and len(key) > MAX_KEY_LENGTH:
        error = f"key: {MAX_KEY_LENGTH} characters at most"
    if error is None:
        try:
            operation_id = api.start_operation(entrypoint, params, key)
            return redirect(url_for("ui.operation", operation_id=operation_id))
        except api.StartRefusedError as exc:
            error = f"{exc.field}: {exc.message}"
    return render_template("kser/entrypoints.html", entrypoints=api.entrypoint_list(),
                           errors={entrypoint: error},
                           values={entrypoint: dict(values, params=extra)}), 422
