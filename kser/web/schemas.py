"""What the REST API takes and returns (marshmallow schemas, documented in its OpenAPI)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from kser.schemas import MAX_KEY_LENGTH
from kser.status import Status

STATUSES = [str(status) for status in Status]


class _Strict(Schema):
    class Meta:
        unknown = RAISE  # a misspelt field is an error naming it, not silently ignored


class _Args(Schema):
    class Meta:
        # an unknown query argument is an error too: a misspelt filter (?stauts=FAILED)
        # would otherwise list everything
        unknown = RAISE


class TaskSummarySchema(Schema):
    id = fields.String(required=True)
    name = fields.String(allow_none=True, metadata={"description": "unique in its operation"})
    entrypoint = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    attempt = fields.Integer(required=True, metadata={"description": "0 before its first run"})
    worker = fields.String(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    depends_on = fields.List(fields.String(), required=True,
                             metadata={"description": "ids of its upstream tasks"})
    trigger_rule = fields.String(allow_none=True)


class TaskSchema(TaskSummarySchema):
    result = fields.Dict(allow_none=True)


class OperationSummarySchema(Schema):
    id = fields.String(required=True)
    entrypoint = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    params = fields.Dict(required=True)
    result = fields.Dict(allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    finished_at = fields.DateTime(allow_none=True)
    parent_operation_id = fields.String(allow_none=True,
                                        metadata={"description": "(a sub-operation) its parent"})
    url = fields.String(required=True)


class OperationSchema(OperationSummarySchema):
    tasks = fields.List(fields.Nested(TaskSchema), required=True)


class OperationPageSchema(Schema):
    items = fields.List(fields.Nested(OperationSummarySchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True,
                                metadata={"description": "pass as ?cursor= for the next "
                                          "page; null on the last one"})


class ListArgsSchema(_Args):
    status = fields.String(validate=validate.OneOf(STATUSES))
    entrypoint = fields.String(validate=validate.Length(min=1, max=255))
    search = fields.String(validate=validate.Length(min=1, max=255),
                           metadata={"description": "a part of the id or the entrypoint"})
    created_after = fields.AwareDateTime(default_timezone=None)
    created_before = fields.AwareDateTime(default_timezone=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    cursor = fields.String(validate=validate.Length(min=1, max=500))


class StartSchema(_Strict):
    entrypoint = fields.String(required=True, validate=validate.Length(min=1, max=255),
                               metadata={"description": "see GET /entrypoints"})
    params = fields.Dict(keys=fields.String(), load_default=dict)
    key = fields.String(allow_none=True, validate=validate.Length(min=1, max=MAX_KEY_LENGTH),
                        metadata={"description": "idempotency key: a second start with it "
                                  "returns the first operation (not starting with schedule:, "
                                  "message: or kser:, which kser keeps for its own keys)"})


class WaitArgsSchema(_Args):
    wait = fields.Float(validate=validate.Range(min=0, max=3600),
                        metadata={"description": "seconds to wait for the operation's end"})


class TaskRefSchema(_Strict):
    task = fields.String(required=True, validate=validate.Length(min=1, max=255),
                         metadata={"description": "the task's name or id"})


class ControlSchema(Schema):
    message = fields.String(required=True)
    operation = fields.Nested(OperationSchema, required=True)


class LogArgsSchema(_Args):
    attempt = fields.Integer(validate=validate.Range(min=1, max=2**31 - 1))


class LogLineSchema(Schema):
    attempt = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    level = fields.String(required=True)
    message = fields.String(required=True)


class LogsSchema(Schema):
    task = fields.Nested(TaskSummarySchema, required=True)
    lines = fields.List(fields.Nested(LogLineSchema), required=True)


class AttemptSchema(Schema):
    number = fields.Integer(required=True)
    worker = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    started_at = fields.DateTime(required=True)
    finished_at = fields.DateTime(allow_none=True)
    seconds = fields.Float(allow_none=True, metadata={"description": "how long it ran"})
    retcode = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)


class AttemptsSchema(Schema):
    task = fields.Nested(TaskSummarySchema, required=True)
    attempts = fields.List(fields.Nested(AttemptSchema), required=True)


class EntrypointSchema(Schema):
    path = fields.String(required=True, metadata={"description": "what POST /operations takes"})
    kind = fields.String(required=True, validate=validate.OneOf(["operation", "task"]))
    doc = fields.String(allow_none=True)
    required_fields = fields.List(fields.String(), required=True)


class ScheduleSchema(Schema):
    name = fields.String(required=True)
    entrypoint = fields.String(required=True)
    cron = fields.String(required=True)
    timezone = fields.String(required=True)
    catchup = fields.String(required=True, validate=validate.OneOf(["skip", "run_once"]))
    next_runs = fields.List(fields.DateTime(), required=True, metadata={
        "description": "the next fire times, from now"})
    active = fields.Boolean(required=True, metadata={
        "description": "a scheduler ran it within the last 2 minutes (else: a schedule "
                       "removed, or no scheduler running)"})
    last_run = fields.DateTime(allow_none=True, metadata={"description": "the last launch"})
    last_operation_id = fields.String(allow_none=True)
    handled_until = fields.DateTime(allow_none=True, metadata={
        "description": "every fire until then was launched or skipped"})
    scheduler = fields.String(allow_none=True, metadata={"description": "who wrote last"})
    updated_at = fields.DateTime(required=True)


class _DeadLetterFields(Schema):
    topic = fields.String(validate=validate.Length(min=1, max=249),
                          metadata={"description": "the source topic (default KSER_TOPIC)"})
    wait = fields.Float(load_default=2.0, validate=validate.Range(min=0.1, max=60),
                        metadata={"description": "seconds without a new record that end "
                                  "the dead-letter topic"})


class DeadLetterArgsSchema(_DeadLetterFields, _Args):
    pass


class ReplaySchema(_DeadLetterFields, _Strict):
    pass


class DeadLetterSchema(Schema):
    where = fields.String(required=True, metadata={"description": "topic[partition]@offset, "
                                                   "or store #id"})
    source_topic = fields.String(allow_none=True)
    source_partition = fields.String(allow_none=True)
    source_offset = fields.String(allow_none=True)
    error = fields.String(required=True)
    preview = fields.String(required=True)


class DeadLettersSchema(Schema):
    topic = fields.String(required=True)
    dead_letters = fields.List(fields.Nested(DeadLetterSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadySchema(Schema):
    ready = fields.Boolean(required=True)
    checks = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True,
                         metadata={"description": "store and broker: ok, and the error"})
