"""Operations in: an operation message (or ``Operation.send()``/``launch()`` in a
producer) is built, every ``REQUIRED_FIELDS`` checked, and in **one transaction** the
operation, its tasks with their dependencies, and the message of each ready task (the
outbox) are stored; the outbox is then produced."""

from __future__ import annotations

from typing import Any, cast

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser import tracing
from kser.entry import Entrypoint
from kser.errors import OperationGoneError, UndeliverableError
from kser.schemas import KSER_METADATA_KEY, KserKey, Message, check_idempotency_key
from kser.sequencing.engine.context import Context
from kser.sequencing.engine.transitions import Transitions
from kser.sequencing.operation import Operation
from kser.status import Status


class Submitter:
    """Stores and starts the operations of one engine."""

    def __init__(self, ctx: Context, transitions: Transitions) -> None:
        self.ctx, self.transitions = ctx, transitions

    def submit_message(self, entrypoint: type[Entrypoint], kmsg: Message,
                       topic: str | None) -> Result:
        """An operation message: its operation submitted. A key it requests is put in a
        namespace of its own (``message:``): a topic writer cannot take a key of the
        API's, a producer's or a schedule's."""
        operation = cast(Operation, entrypoint.from_Message(kmsg))
        requested = kmsg.kser_metadata.get("idempotency_key")
        if requested is not None:  # (checked on decode)
            operation.metadata = {**operation.metadata, KSER_METADATA_KEY: {
                **kmsg.kser_metadata, "idempotency_key": KserKey(f"message:{requested}")}}
        return self.submit(operation, topic or self.ctx.settings.topic, kmsg.trace_parent)

    def submit(self, operation: Operation, topic: str, trace_parent: Any = None) -> Result:
        """Build (if needed), validate, store and start ``operation``; send its first tasks.

        :param trace_parent: the trace context of its message's record (default: the
            current one)
        :raises ValidationError: a required parameter is missing (nothing is stored)
        """
        with tracing.span(f"start {type(operation).path}", trace_parent,
                          {"kser.entrypoint": type(operation).path,
                           "kser.operation_id": str(operation.uuid)}):
            return self._submit(operation, topic)

    def _submit(self, operation: Operation, topic: str) -> Result:
        if not operation._built:
            operation.build(**operation.params)
        operation.check_required_params()
        key = operation._own().get("idempotency_key")
        if key is not None:
            check_idempotency_key(key)
        operation.exit_notify_settings(), operation.ttl_settings()  # (refused before a write)
        existing = operation.uuid
        with self.ctx.transaction() as tx:
            op_row, created = self.transitions.insert(tx, operation, topic, key)
            if created and tx.get_task(operation.uuid) is not None:  # (rolled back)
                raise UndeliverableError(
                    f"Operation {operation.uuid} has the id of a stored task: forged (a "
                    "task's id names its sub-operation), it starts nothing",
                    extra=dict(uuid=operation.uuid))
            queued = tx.queued
            if not created:
                found = tx.get_operation(operation.uuid)
                if found is None and key is not None:  # sent before with the same key
                    found = tx.operation_by_key(str(key))
                    if found is not None and found.entrypoint != op_row["entrypoint"]:
                        raise ValidationError(
                            f"The key {key!r} was given to operation {found.id}, a "
                            f"{found.entrypoint}: a key names one operation; give this "
                            f"{op_row['entrypoint']} another",
                            extra=dict(uuid=operation.uuid, reason="key"))
                if found is None:
                    raise OperationGoneError(f"operation {operation.uuid} is not in the "
                                             "store any more (purged or deleted meanwhile)")
                if found.entrypoint != op_row["entrypoint"]:
                    raise UndeliverableError(
                        f"Operation {operation.uuid} is a {found.entrypoint} in the store, "
                        f"but this message names {op_row['entrypoint']}: forged or corrupt, "
                        "it runs nothing", extra=dict(uuid=operation.uuid))
                existing = found.id
        if created:
            operation._set_status(Status.RUNNING)
        # (what it queued is sent as it was queued; a duplicate re-sends what is unsent)
        self.ctx.publish(existing, queued if created else None)
        if existing != operation.uuid:
            return Result(uuid=existing, stdout=f"Operation {existing} was sent with the key "
                          f"{key!r} before: not started again")
        if not created:
            return Result(uuid=operation.uuid, stdout=f"Operation {operation.uuid} already "
                          "submitted: unsent messages re-sent")
        return Result(uuid=operation.uuid, stdout=f"Operation {type(operation).path}"
                      f"[{operation.uuid}] started with {len(operation.tasks)} task(s)")
