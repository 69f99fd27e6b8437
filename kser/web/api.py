"""The REST API of the control plane (``/api/v1``): start, list, watch, control and repair
operations, read task logs and attempts, list and replay dead letters.

Built on flask-smorest: every route's arguments and answers are marshmallow schemas
(:mod:`kser.web.schemas`), which both validate them and document them in the OpenAPI
document (``/api/v1/openapi.json``). Bad input is a 422 naming the field, an unknown id
a 404, a control the operation's state does not allow a 409 saying why.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from cdumay_error.types import ValidationError
from flask import Response, current_app, request, url_for
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from sqlalchemy.exc import DataError, SQLAlchemyError

from kser.errors import KserError, RedoError, StoreError, kafka_client_errors, safe_text
from kser.schemas import load_json
from kser.sequencing.engine.controls import ControlRefusedError, Controls
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.status import FINAL_STATUSES, Status
from kser.store import OperationRow, Tx
from kser.web import schemas
from kser.web.auth import ADMIN, Tokens
from kser.web.views import (
    attempt_view,
    dead_letter_view,
    log_view,
    operation_view,
    schedule_view,
    task_view,
)

logger = logging.getLogger(__name__)

operations = Blueprint("operations", __name__, description="Start, watch and control "
                       "operations; read their tasks' logs and attempts")
entrypoints = Blueprint("entrypoints", __name__, description="What can be started")
dead_letters = Blueprint("dead_letters", __name__,
                         description="Records workers could not handle, and their replay")
health = Blueprint("health", __name__, description="Liveness and readiness (no token)")
schedules = Blueprint("schedules", __name__,
                      description="Cron schedules (kser scheduler) and their next runs")
monitoring = Blueprint("monitoring", __name__,
                       description="Prometheus metrics of the store (a read token)")

#: arguments read from the query string, validated by their schema's own ``unknown``
#: (RAISE: a misspelt argument is a 422 naming it; webargs would ignore it by default)
QUERY: dict[str, Any] = dict(location="query", unknown=None)
#: routes anyone may call (probes); everything else needs a token
PUBLIC_ENDPOINTS = frozenset({"health.Health", "health.Ready"})


class TaskRun(Operation):
    """A task started alone through the API (``POST /operations`` with a task's
    entrypoint): run as an operation of that one task, so it is stored, watched and
    controlled like any operation."""


def registry() -> OperationRegistry:
    found: OperationRegistry = current_app.extensions["kser"]
    return found


def tokens() -> Tokens:
    found: Tokens = current_app.extensions["kser.tokens"]
    return found


def authorize() -> None:
    """Before every API request: a valid token with the role the method needs (reads
    ``read`` or ``admin``, the rest ``admin``); 401 without one, 403 with too little."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return
    role = tokens().role_of(request.headers.get("Authorization"))
    if role is None:
        abort(401, message="a valid token is needed: send 'Authorization: Bearer <token>' "
              "(tokens are set by KSER_API_TOKENS on the server)",
              headers={"WWW-Authenticate": 'Bearer realm="kser"'})
    if request.method not in ("GET", "HEAD") and role != ADMIN:
        abort(403, message=f"this token has the role {role!r}, and {request.method} "
              f"{request.path} needs 'admin'")


def unavailable(exc: Exception) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Any route: the store or Kafka failing is a 503 saying which, to retry later."""
    if isinstance(exc, SQLAlchemyError | StoreError):
        what = ("the store is unreachable", "check KSER_STORE_URL and the database")
    else:
        what = ("Kafka did not answer", "check KSER_BOOTSTRAP_SERVERS and the brokers")
    logger.warning("kser API: %s: %s", what[0], safe_text(exc, 500))
    return (dict(code=503, status="Service Unavailable",
                 message=f"{what[0]} ({safe_text(exc, 300)}): try again, and {what[1]}"),
            503, {"Retry-After": "5"})


def refused_by_store(exc: Exception) -> tuple[dict[str, Any], int]:
    """A value the store cannot hold (a NUL character in a text, a number out of its
    range): the request's fault, a 422, not an outage."""
    return (dict(code=422, status="Unprocessable Entity",
                 message=f"the store refused a value of this request: "
                         f"{safe_text(getattr(exc, 'orig', None) or exc, 300)}"), 422)


#: what makes a route answer 503 (the store or Kafka failing)
UNAVAILABLE = (SQLAlchemyError, StoreError, *kafka_client_errors())

def bounded_body() -> None:
    """Refuse, with a 422 saying what to change, a JSON body kser's decoders could not
    carry (nested deeper than kser.schemas.MAX_JSON_DEPTH, numbers not finite): Flask's
    own decoder would fail on it with a 500 (a RecursionError), or take it."""
    if request.method in ("POST", "PUT", "PATCH") and request.is_json:
        try:
            load_json(request.get_data(cache=True), "the request's body")
        except ValidationError as exc:
            abort(422, message=safe_text(exc.message, 1000))


for _blueprint in (operations, entrypoints, dead_letters, schedules, monitoring):
    _blueprint.before_request(authorize)
    _blueprint.before_request(bounded_body)
for _blueprint in (operations, entrypoints, dead_letters, health, schedules, monitoring):
    for _error in UNAVAILABLE:
        _blueprint.register_error_handler(_error, unavailable)
    _blueprint.register_error_handler(DataError, refused_by_store)


# -- helpers --------------------------------------------------------------------------

def transaction(work: Callable[[Tx], Any]) -> Any:
    """``work`` in one store transaction (an exception, an abort too, rolls it back)."""
    with registry().store.transaction() as tx:
        return work(tx)


def operation_url(operation_id: str) -> str:
    return url_for("operations.Operation", operation_id=operation_id, _external=False)


def full_operation(tx: Tx, operation_id: str) -> dict[str, Any]:
    op = tx.get_operation(operation_id)
    if op is None:
        abort(404, message=f"no operation {operation_id} in the store (purged, deleted, or "
              "never started here)")
    assert op is not None  # (abort raises)
    return operation_view(op, operation_url(op.id), tx.get_tasks(op.id),
                          tx.dependencies(op.id))


def read_operation(operation_id: str) -> dict[str, Any]:
    view: dict[str, Any] = transaction(lambda tx: full_operation(tx, operation_id))
    return view


def find_task(tx: Tx, operation_id: str, task: str) -> Any:
    op = tx.get_operation(operation_id)
    if op is None:
        abort(404, message=f"no operation {operation_id} in the store")
    assert op is not None  # (abort raises)
    try:
        return Controls.get_task(tx, op, task)
    except ControlRefusedError as exc:
        abort(exc.retcode, message=exc.message)


def encode_cursor(op: OperationRow) -> str:
    raw = json.dumps([op.created_at, op.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, operation_id = json.loads(raw)
        if (not isinstance(created_at, int | float) or not isinstance(operation_id, str)
                or not math.isfinite(float(created_at))):
            raise ValueError("not [created_at, id]")
        return float(created_at), operation_id
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error,
            UnicodeDecodeError):
        abort(422, message="cursor is not one this API gave: pass next_cursor of the "
              "previous page as it was", errors={"query": {"cursor": ["not a cursor of "
                                                                      "this API"]}})
        raise  # (abort raises)


def invalid_params(message: str, field: str = "params") -> None:
    abort(422, message=message, errors={"json": {field: [message]}})


def epoch(value: Any) -> float | None:
    return None if value is None else value.timestamp()


# -- operations -----------------------------------------------------------------------

class StartRefusedError(KserError):
    """What ``POST /operations`` (or the UI's form) was given cannot start: ``field``
    names what is wrong (``entrypoint``, ``params``, ``params.<name>``, ``key``)."""

    def __init__(self, message: str, field: str = "params") -> None:
        super().__init__(message)
        self.message, self.field = message, field


def start_operation(entrypoint: str, params: dict[str, Any], key: str | None = None) -> str:
    """Build and submit the operation (or the task alone) ``entrypoint`` names; its id
    (with a ``key`` given before, the first operation's).

    :raises StartRefusedError: an unknown entrypoint, params its build refuses, a key used
        by another entrypoint
    """
    found = registry().controller.ENTRYPOINTS.get(entrypoint)
    if found is None or not issubclass(found, Task):
        raise StartRefusedError(f"no entrypoint {entrypoint!r} in this registry: GET "
                           "/entrypoints lists what can be started" if found is None else
                           f"{entrypoint} is not a Task or an Operation: it cannot be run "
                           "by the sequencer", "entrypoint")
    try:
        if issubclass(found, Operation):
            operation: Operation = found(params=params)
            operation.build(**operation.params)
        else:
            operation = TaskRun(params=dict(entrypoint=found.path, params=params),
                                tasks=[found(params=params)])
        operation.check_required_params()
    except ValidationError as exc:
        extra = getattr(exc, "extra", None) or {}
        raise StartRefusedError(safe_text(exc.message, 1000), f"params.{extra['param']}"
                           if extra.get("param") else "params") from None
    except Exception as exc:  # its build_tasks refused these params
        raise StartRefusedError(f"{entrypoint} could not be built with these params: "
                           f"{type(exc).__name__}: {safe_text(exc, 1000)}") from None
    if key is not None:
        operation.metadata.setdefault("kser", {})["idempotency_key"] = key
    sequencer = registry().sequencer
    try:
        result = sequencer.submit(operation, sequencer.settings.topic)
    except ValidationError as exc:  # a key refused, or params too large to be sent
        field = "key" if (getattr(exc, "extra", None) or {}).get("reason") == "key" else "params"
        raise StartRefusedError(safe_text(exc.message, 1000), field) from None
    except RedoError as exc:
        # stored, with its first messages in the outbox: a worker's sweep sends them once
        # Kafka answers (a 503 would have the client start it a second time)
        logger.warning("kser API: operation stored, its first messages wait in the "
                       "outbox: %s", safe_text(exc, 300))
        if key is None:
            return operation.uuid
        found = transaction(lambda tx: tx.operation_by_key(str(key)))
        return str(found.id if found is not None else operation.uuid)
    return str(result.uuid)


@operations.route("/operations")
class Operations(MethodView):

    @operations.arguments(schemas.ListArgsSchema, **QUERY)
    @operations.response(200, schemas.OperationPageSchema)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """List operations, newest first, page by page

        Filters: ``status``, ``entrypoint``, ``search`` (a part of the id or the
        entrypoint), ``created_after`` / ``created_before`` (ISO 8601 with a time zone).
        The answer's ``next_cursor`` (null on the last page) gives the next page."""
        limit = args["limit"]
        after = decode_cursor(args["cursor"]) if "cursor" in args else None
        rows: list[OperationRow] = transaction(lambda tx: tx.list_operations(
            status=args.get("status"), entrypoint=args.get("entrypoint"),
            search=args.get("search"), created_after=epoch(args.get("created_after")),
            created_before=epoch(args.get("created_before")), after=after,
            limit=limit + 1))
        page = rows[:limit]
        return dict(items=[operation_view(op, operation_url(op.id)) for op in page],
                    next_cursor=encode_cursor(page[-1]) if len(rows) > limit else None)

    @operations.arguments(schemas.StartSchema)
    @operations.arguments(schemas.WaitArgsSchema, **QUERY, as_kwargs=True)
    @operations.response(202, schemas.OperationSchema,
                         description="Started (or, with a key, started before): running")
    @operations.alt_response(200, schema=schemas.OperationSchema,
                             description="It ended (within ?wait=, or before, with a key)")
    def post(self, body: dict[str, Any], wait: float | None = None) -> Any:
        """Start an operation (or a task alone)

        ``entrypoint`` is an operation's or a task's path (see ``GET /entrypoints``);
        ``key`` an idempotency key: a second start with it returns the first operation.
        ``?wait=SECONDS`` blocks until the operation ends (200) or the time runs out
        (202, still running)."""
        try:
            operation_id = start_operation(body["entrypoint"], body["params"], body.get("key"))
        except StartRefusedError as exc:
            invalid_params(exc.message, exc.field)
            raise AssertionError from exc  # (abort raises)
        if wait is not None:
            try:
                registry().wait(operation_id, timeout=wait)
            except TimeoutError:
                pass
        view = read_operation(operation_id)
        status = 202 if view["status"] in (Status.RUNNING, Status.PENDING) else 200
        return view, status, {"Location": view["url"]}


@operations.route("/operations/<operation_id>", endpoint="Operation")
class OperationView(MethodView):

    @operations.response(200, schemas.OperationSchema)
    def get(self, operation_id: str) -> dict[str, Any]:
        """An operation with its tasks

        Each task: its status, attempt, worker, times, result and the ids it depends on."""
        return read_operation(operation_id)

    @operations.response(204)
    def delete(self, operation_id: str) -> None:
        """Delete a finished operation

        With its tasks, logs, attempts and sub-operations; 409 while it runs."""
        def delete(tx: Tx) -> None:
            op = tx.get_operation(operation_id, lock=True)
            if op is None:
                abort(404, message=f"no operation {operation_id} in the store")
            assert op is not None
            if op.status not in FINAL_STATUSES:
                abort(409, message=f"operation {operation_id} is {op.status}: only a "
                      "finished one is deleted (cancel it first)")
            if op.parent_operation_id is not None:
                parent = tx.get_operation(op.parent_operation_id)
                if parent is not None:
                    abort(409, message=f"operation {operation_id} is a sub-operation of "
                          f"{parent.id}: delete that one")
            children = tx.descendant_operations(operation_id)
            tx.delete_operations([child.id for child in reversed(children)] + [operation_id])
        transaction(delete)


def _control(operation_id: str, call: Callable[[], Any]) -> dict[str, Any]:
    result = call()
    if result.retcode >= 300:
        abort(result.retcode if result.retcode in (404, 409) else 409,
              message=safe_text(result.stderr, 1000))
    return dict(message=result.stdout, operation=read_operation(operation_id))


@operations.route("/operations/<operation_id>/cancel", methods=["POST"])
@operations.response(200, schemas.ControlSchema)
def cancel(operation_id: str) -> dict[str, Any]:
    """Cancel a running operation

    Its pending tasks are CANCELED; running ones stop at their next checkpoint (or
    finish, with nothing after them). 409 if it already ended."""
    return _control(operation_id, lambda: registry().cancel(operation_id))


@operations.route("/operations/<operation_id>/recover", methods=["POST"])
@operations.response(200, schemas.ControlSchema)
def recover(operation_id: str) -> dict[str, Any]:
    """Recover a FAILED operation

    Its failed and canceled tasks, and what depends on them, run again; the others keep
    their results. 409 unless it FAILED."""
    return _control(operation_id, lambda: registry().recover(operation_id))


@operations.route("/operations/<operation_id>/run-from", methods=["POST"])
@operations.arguments(schemas.TaskRefSchema)
@operations.response(200, schemas.ControlSchema)
def run_from(body: dict[str, Any], operation_id: str) -> dict[str, Any]:
    """Run an ended operation again from a task

    The task (its name or id) and everything after it run again. 409 while it runs."""
    return _control(operation_id, lambda: registry().run_from(operation_id, body["task"]))


@operations.route("/operations/<operation_id>/run-one", methods=["POST"])
@operations.arguments(schemas.TaskRefSchema)
@operations.response(200, schemas.ControlSchema)
def run_one(body: dict[str, Any], operation_id: str) -> dict[str, Any]:
    """Run one task of an ended operation again

    With the results its upstream tasks left; nothing runs after it. 409 while the
    operation runs."""
    return _control(operation_id, lambda: registry().run_one(operation_id, body["task"]))


@operations.route("/operations/<operation_id>/tasks/<task>/logs")
@operations.arguments(schemas.LogArgsSchema, **QUERY, as_kwargs=True)
@operations.response(200, schemas.LogsSchema)
def logs(operation_id: str, task: str, attempt: int | None = None) -> dict[str, Any]:
    """A task's log lines

    ``{task}`` is its name or id; ``?attempt=N`` keeps that attempt's lines."""
    def read(tx: Tx) -> dict[str, Any]:
        row = find_task(tx, operation_id, task)
        lines = [line for line in tx.get_logs(row.id)
                 if attempt is None or line.attempt == attempt]
        deps = tx.dependencies(operation_id).get(row.id, set())
        return dict(task=task_view(row, sorted(deps)), lines=[log_view(line) for line in lines])
    found: dict[str, Any] = transaction(read)
    return found


@operations.route("/operations/<operation_id>/tasks/<task>/attempts")
@operations.response(200, schemas.AttemptsSchema)
def attempts(operation_id: str, task: str) -> dict[str, Any]:
    """A task's attempts

    Which worker ran each, when, for how long, and how it ended."""
    def read(tx: Tx) -> dict[str, Any]:
        row = find_task(tx, operation_id, task)
        deps = tx.dependencies(operation_id).get(row.id, set())
        return dict(task=task_view(row, sorted(deps)),
                    attempts=[attempt_view(a) for a in tx.get_attempts(row.id)])
    found: dict[str, Any] = transaction(read)
    return found


# -- entrypoints ----------------------------------------------------------------------

def entrypoint_list() -> list[dict[str, Any]]:
    found = []
    for path, cls in sorted(registry().controller.ENTRYPOINTS.items()):
        if not issubclass(cls, Task):
            continue
        found.append(dict(path=path,
                          kind="operation" if issubclass(cls, Operation) else "task",
                          doc=inspect.getdoc(cls), required_fields=list(cls.REQUIRED_FIELDS)))
    return found


@entrypoints.route("/entrypoints")
@entrypoints.response(200, schemas.EntrypointSchema(many=True))
def list_entrypoints() -> list[dict[str, Any]]:
    """What can be started

    Each operation and task of the registry: its path (``POST /operations`` takes it),
    its docstring and its required params."""
    return entrypoint_list()


# -- dead letters ---------------------------------------------------------------------

def _dead_letter_tools(topic: str | None) -> tuple[Any, Any, str]:
    from kser.dlq import clients

    settings = registry().settings
    classes = registry().controller.ENTRYPOINTS.values()
    known = {settings.topic, *(getattr(cls, "TOPIC", None) for cls in classes),
             *(notify.get("topic") for cls in classes
               if isinstance(notify := getattr(cls, "ON_EXIT_NOTIFY", None), dict))} - {None}
    if topic is not None and topic not in known:  # (another application's dead letters)
        abort(404, message=f"{safe_text(topic, 200)!r} is not a topic of this registry "
                           f"(its topics: {', '.join(sorted(map(str, known)))})")
    make_consumer, make_producer = clients(settings)
    return make_consumer, make_producer, topic or settings.topic


@dead_letters.route("/dead-letters")
@dead_letters.arguments(schemas.DeadLetterArgsSchema, **QUERY, as_kwargs=True)
@dead_letters.response(200, schemas.DeadLettersSchema)
def list_dead_letters(wait: float, topic: str | None = None) -> dict[str, Any]:
    """The dead letters of a topic

    Those of its dead-letter topic (read to its end: ``wait`` seconds without a new
    record), then those kept in the store; nothing is consumed or marked."""
    from kser.dlq import list_dead_letters as read

    make_consumer, _, topic = _dead_letter_tools(topic)
    letters = read(make_consumer, registry().settings.dlq_for(topic), wait,
                   registry().store, topic)
    return dict(topic=topic, dead_letters=[dead_letter_view(letter) for letter in letters])


@dead_letters.route("/dead-letters/replay", methods=["POST"])
@dead_letters.arguments(schemas.ReplaySchema)
@dead_letters.response(200, schemas.DeadLettersSchema)
def replay_dead_letters(body: dict[str, Any]) -> dict[str, Any]:
    """Send dead letters back to their topic

    Those not replayed yet (``kser dlq replay``): once their cause is fixed, they run."""
    from kser.dlq import replay

    make_consumer, make_producer, topic = _dead_letter_tools(body.get("topic"))
    producer = make_producer()
    try:
        letters = replay(make_consumer, producer, registry().settings.dlq_for(topic), topic,
                         body["wait"], registry().store)
    finally:
        producer.close()
    return dict(topic=topic, dead_letters=[dead_letter_view(letter) for letter in letters])


# -- probes ---------------------------------------------------------------------------

@health.route("/health")
class Health(MethodView):
    @health.doc(security=[])
    @health.response(200, schemas.HealthSchema)
    def get(self) -> dict[str, Any]:
        """Liveness: the server answers (no token)"""
        return dict(status="ok")


def check_store() -> dict[str, Any]:
    with registry().store.transaction() as tx:
        tx.connection.exec_driver_sql("SELECT 1")
    return {}


def check_broker() -> dict[str, Any]:
    """The cluster answers (a missing topic is no outage: kser creates it on first use)."""
    topic = registry().settings.topic
    producer = registry()._get_producer()
    try:
        admin = producer._new_admin()
    except NotImplementedError:
        return {}
    with admin:
        return dict(topic=topic, topic_exists=topic in admin.existing([topic]))


@health.route("/ready")
class Ready(MethodView):
    @health.doc(security=[])
    @health.response(200, schemas.ReadySchema)
    @health.alt_response(503, schema=schemas.ReadySchema, description="Not ready")
    def get(self) -> Any:
        """Readiness: the store and the broker answer (no token)

        Each is named in the answer with its error, if any."""
        checks: dict[str, dict[str, Any]] = {}
        probes: tuple[tuple[str, Callable[[], dict[str, Any]]], ...] = (
            ("store", check_store), ("broker", check_broker))
        for name, check in probes:
            started = time.monotonic()
            try:
                checks[name] = dict(ok=True, **check())
            except Exception as exc:
                checks[name] = dict(ok=False, error=f"{type(exc).__name__}: "
                                    f"{safe_text(exc, 300)}")
            checks[name]["seconds"] = round(time.monotonic() - started, 3)
        ready = all(check["ok"] for check in checks.values())
        return dict(ready=ready, checks=checks), 200 if ready else 503


# -- schedules ------------------------------------------------------------------------

#: next fire times listed per schedule
NEXT_RUNS = 3
#: a schedule no scheduler wrote for this long is not active, seconds (a scheduler
#: writes each of its schedules every 30 s at least)
ACTIVE_WITHIN = 120.0


@schedules.route("/schedules")
@schedules.response(200, schemas.ScheduleSchema(many=True))
def list_schedules() -> list[dict[str, Any]]:
    """Cron schedules and their next runs

    What the schedulers (``kser scheduler``) wrote: each schedule's cron, time zone and
    catch-up policy, its last launch and its next fire times."""
    from kser.sequencing.schedules import Schedule

    rows = transaction(lambda tx: tx.list_schedules())
    now, found = time.time(), []
    for row in rows:
        try:
            schedule = Schedule(row.name, row.cron, row.entrypoint, timezone=row.timezone,
                                catchup=row.catchup)
            runs = schedule.fires(now, now + 400 * 86400, most=NEXT_RUNS)
        except ValueError:  # (a row this kser cannot read: shown without its next runs)
            runs = []
        found.append(schedule_view(row, runs, now - row.updated_at <= ACTIVE_WITHIN))
    return found


# -- metrics --------------------------------------------------------------------------

@monitoring.route("/metrics")
@monitoring.doc(responses={"200": {
    "description": "The store's gauges in Prometheus' text format: kser_operations by "
                   "status, kser_outbox_waiting, kser_outbox_scheduled",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
@monitoring.alt_response(501, description="prometheus-client is not installed on the "
                         "API server")
def prometheus_metrics() -> Any:
    """The store's gauges, for Prometheus (the workers serve theirs: --metrics-port)"""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        abort(501, message="metrics need prometheus-client on the API server: pip install "
              "'kser[prometheus]'")
    from kser.metrics import StoreCollector

    served = current_app.extensions.get("kser.metrics")
    if served is None:  # (one per app: its store collector reads at most every 5 s)
        served = current_app.extensions["kser.metrics"] = CollectorRegistry(auto_describe=False)
        sequencer = registry().sequencer
        served.register(StoreCollector(lambda: sequencer.store, raise_errors=True))
    return Response(generate_latest(served), mimetype=CONTENT_TYPE_LATEST)


BLUEPRINTS = (operations, entrypoints, dead_letters, schedules, health, monitoring)
