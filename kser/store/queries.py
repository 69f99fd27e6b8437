"""The store's statements, named, in one place: each hot query's portable form
(SQLAlchemy, run on SQLite and PostgreSQL alike) and, where PostgreSQL does a task's hop
or a batch in fewer round trips, its PostgreSQL form beside it
(tests/integration/test_store_queries_pg.py checks that both give the same rows).
The transaction's methods (:mod:`kser.store.tx`) run them."""

from __future__ import annotations

from sqlalchemy import JSON, and_, bindparam, or_, select, update

from kser.status import FINAL_STATUSES, Status
from kser.store import schema

OP, TASK, ATTEMPT, BOX = (schema.operations.c, schema.tasks.c, schema.attempts.c,
                              schema.outbox.c)

# The statements of a task's hop, built once: SQLAlchemy then caches their compiled
# form, where building them per call cost more than running them (benchmarks/).
GET_OPERATION = select(schema.operations).where(OP.id == bindparam("b_id"))
GET_OPERATION_LOCKED = GET_OPERATION.with_for_update()
# (a task's end: its operation's state alone, without the JSON it would decode for nothing)
GET_OPERATION_STATE = (select(OP.id, OP.status, OP.topic, OP.initial_result)
                        .where(OP.id == bindparam("b_id")).with_for_update())
GET_TASK = select(schema.tasks).where(TASK.id == bindparam("b_id"))
DEP, UP_DEP = schema.task_dependencies.alias("dep"), schema.task_dependencies.alias("up_dep")
UP = schema.tasks.alias("up")
GET_TASK_TO_RUN = (select(schema.tasks, OP.status.label("operation_status"))
                    .join(schema.operations, OP.id == TASK.operation_id)
                    .where(TASK.id == bindparam("b_id")))


# the tasks that depend on a task (found by id from the dependencies; their status is
# checked by dependents(), as SQLite would otherwise look them up by status: a scan of
# every pending task), one row per upstream task of each, with that task's status
# (counted in Python: one join, where a count per status was a subquery each)
DEPENDENTS = (select(schema.tasks, UP.c.status.label("upstream_status"))
               .select_from(DEP)
               .join(schema.tasks, TASK.id == DEP.c.task_id)
               .join(UP_DEP, UP_DEP.c.task_id == DEP.c.task_id)
               .join(UP, UP.c.id == UP_DEP.c.depends_on)
               .where(DEP.c.depends_on == bindparam("b_id"))
               .order_by(TASK.position))
PENDING_WITH_UPSTREAM = (select(schema.tasks, UP.c.status.label("upstream_status"))
                          .outerjoin(UP_DEP, UP_DEP.c.task_id == TASK.id)
                          .outerjoin(UP, UP.c.id == UP_DEP.c.depends_on)
                          .where(and_(TASK.operation_id == bindparam("b_id"),
                                      TASK.status == Status.PENDING))
                          .order_by(TASK.position))
UPSTREAM = (select(TASK.id, TASK.name, TASK.position, TASK.status, TASK.result)
             .join(DEP, DEP.c.depends_on == TASK.id)
             .where(DEP.c.task_id == bindparam("b_id")).order_by(TASK.position))
# what decides an operation's outcome in the common case: its FAILED tasks, and its last
# tasks (those nothing depends on) with their results
# (the upstream tasks of the operation's own tasks: PostgreSQL would otherwise hash
# every dependency of the store, as it may for an OR'd NOT EXISTS)
SAME_OP = schema.tasks.alias("same_op")
FAILED_OR_LAST = (select(TASK.id, TASK.status, TASK.result)
                   .where(and_(TASK.operation_id == bindparam("b_id"),
                               or_(TASK.status == Status.FAILED,
                                   TASK.id.not_in(
                                       select(DEP.c.depends_on)
                                       .join(SAME_OP, SAME_OP.c.id == DEP.c.task_id)
                                       .where(SAME_OP.c.operation_id == bindparam("b_id"))))))
                   .order_by(TASK.position))
# (final statuses excluded, not unfinished ones matched: the operation's own tasks are
# read from its index, whatever the planner thinks of a status's frequency)
UNFINISHED = (select(TASK.id).where(and_(TASK.operation_id == bindparam("b_id"),
                                           *(TASK.status != status
                                             for status in sorted(FINAL_STATUSES))))
               .limit(1))
# the join's compare-and-set: of the transitions that find a task ready, one queues it
QUEUE = (update(schema.tasks)
          .where(and_(TASK.id == bindparam("b_id"), TASK.status == Status.PENDING,
                      or_(TASK.queued_attempt.is_(None),
                          TASK.queued_attempt <= TASK.attempt)))
          .values(queued_attempt=TASK.attempt + 1, message_digest=bindparam("b_digest")))
GET_TASKS = (select(schema.tasks).where(TASK.operation_id == bindparam("b_id"))
              .order_by(TASK.position))
DEPENDENCIES = (select(schema.task_dependencies.c.task_id,
                        schema.task_dependencies.c.depends_on)
                 .join(schema.tasks, TASK.id == schema.task_dependencies.c.task_id)
                 .where(TASK.operation_id == bindparam("b_id")))
CLAIM = (update(schema.tasks)
          .where(and_(TASK.id == bindparam("b_id"), TASK.attempt == bindparam("b_attempt"),
                      or_(TASK.status == Status.PENDING,
                          and_(TASK.status == Status.RUNNING,
                               or_(TASK.lease_expires_at < bindparam("b_now"),
                                   TASK.worker == bindparam("b_worker"))))))
          .values(status=Status.RUNNING, attempt=bindparam("b_next"), worker=bindparam("b_worker"),
                  lease_expires_at=bindparam("b_lease"), started_at=bindparam("b_now"),
                  finished_at=None))
TAKEN_OVER = (update(schema.attempts)
               .where(and_(ATTEMPT.task_id == bindparam("b_id"),
                           ATTEMPT.number == bindparam("b_attempt"),
                           ATTEMPT.status == Status.RUNNING))
               .values(status=Status.FAILED, finished_at=bindparam("b_now"),
                       error=bindparam("b_error")))
NEW_ATTEMPT = schema.attempts.insert().values(
    task_id=bindparam("b_id"), number=bindparam("b_next"), worker=bindparam("b_worker"),
    status=Status.RUNNING, started_at=bindparam("b_now"))
RENEW = (update(schema.tasks)
          .where(and_(TASK.id == bindparam("b_id"), TASK.attempt == bindparam("b_attempt"),
                      TASK.status == Status.RUNNING))
          .values(lease_expires_at=bindparam("b_lease")))
FINISH_TASK = (update(schema.tasks)
                .where(and_(TASK.id == bindparam("b_id"),
                            TASK.attempt == bindparam("b_attempt"),
                            TASK.status == Status.RUNNING))
                .values(status=bindparam("b_status"), result=bindparam("b_result"),
                        finished_at=bindparam("b_finished"), lease_expires_at=None))
FINISH_ATTEMPT = (update(schema.attempts)
                   .where(and_(ATTEMPT.task_id == bindparam("b_id"),
                               ATTEMPT.number == bindparam("b_attempt")))
                   .values(status=bindparam("b_status"), finished_at=bindparam("b_now"),
                           retcode=bindparam("b_retcode"), error=bindparam("b_error")))
ADD_OUTBOX = schema.outbox.insert().values(
    operation_id=bindparam("b_operation"), topic=bindparam("b_topic"), key=bindparam("b_key"),
    value=bindparam("b_value"), created_at=bindparam("b_now"), due_at=bindparam("b_due"),
    trace_context=bindparam("b_trace")
).returning(BOX.id)
MARK_SENT = (update(schema.outbox).where(BOX.id == bindparam("b_id"))
              .values(sent_at=bindparam("b_now")))


#: queue_with_message on PostgreSQL (psycopg's parameters): the compare-and-set of
#: QUEUE, and the outbox row of its message only if it queued the task
QUEUE_WITH_MESSAGE_PG = (
    "WITH queued AS (UPDATE kser_tasks SET queued_attempt = attempt + 1, "
    "message_digest = %(b_digest)s WHERE id = %(b_id)s AND status = 'PENDING' "
    "AND (queued_attempt IS NULL OR queued_attempt <= attempt) RETURNING id) "
    "INSERT INTO kser_outbox (operation_id, topic, key, value, created_at, due_at, "
    "trace_context) SELECT %(b_operation)s, %(b_topic)s, %(b_key)s, %(b_value)s, %(b_now)s, "
    "%(b_due)s, %(b_trace)s FROM queued RETURNING id")

#: claim_task on PostgreSQL: the compare-and-set of CLAIM, and the new attempt's row
#: only if it claimed the task, in one round trip; {taken_over} is TAKEN_OVER's CTE
#: when the task may be taken over (a data-modifying CTE runs whether or not used)
CLAIM_PG = (
    "WITH claimed AS (UPDATE kser_tasks SET status = 'RUNNING', attempt = %(b_next)s, "
    "worker = %(b_worker)s, lease_expires_at = %(b_lease)s, started_at = %(b_now)s, "
    "finished_at = NULL WHERE id = %(b_id)s AND attempt = %(b_attempt)s "
    "AND (status = 'PENDING' OR (status = 'RUNNING' AND (lease_expires_at < %(b_now)s "
    "OR worker = %(b_worker)s))) RETURNING id){taken_over} "
    "INSERT INTO kser_attempts (task_id, number, worker, status, started_at) "
    "SELECT id, %(b_next)s, %(b_worker)s, 'RUNNING', %(b_now)s FROM claimed RETURNING task_id")
CLAIM_PG_TAKING_OVER = CLAIM_PG.format(taken_over=(
    ", taken_over AS (UPDATE kser_attempts SET status = 'FAILED', finished_at = %(b_now)s, "
    "error = %(b_error)s WHERE task_id = %(b_id)s AND number = %(b_attempt)s "
    "AND status = 'RUNNING' AND EXISTS (SELECT 1 FROM claimed))"))
CLAIM_PG = CLAIM_PG.format(taken_over="")
#: finish_attempt on PostgreSQL: FINISH_TASK, and FINISH_ATTEMPT only if it finished
#: the task, in one round trip; the count of tasks finished (0: taken over meanwhile).
#: The attempt is named by its key, not joined to the CTE: a prepared statement's
#: generic plan, made while the table was small, would scan every attempt for the join
FINISH_PG = (
    "WITH finished AS (UPDATE kser_tasks SET status = %(b_task_status)s, "
    "result = %(b_result)s, finished_at = %(b_finished)s, lease_expires_at = NULL "
    "WHERE id = %(b_id)s AND attempt = %(b_attempt)s AND status = 'RUNNING' RETURNING id), "
    "attempt AS (UPDATE kser_attempts SET status = %(b_status)s, finished_at = %(b_now)s, "
    "retcode = %(b_retcode)s, error = %(b_error)s WHERE task_id = %(b_id)s "
    "AND number = %(b_attempt)s AND EXISTS (SELECT 1 FROM finished)) "
    "SELECT count(*) FROM finished")

# -- several tasks at once (a worker's batch), PostgreSQL: one statement for all of them,
# each row named by its key from arrays (unnest); SQLite runs the one-task statements in
# a loop (in process, a statement costs no round trip). Run by Tx._raw, never prepared.

#: tasks_to_run: tasks with their operation's status
TASKS_TO_RUN_PG = (
    "SELECT t.*, o.status AS operation_status FROM kser_tasks t "
    "JOIN kser_operations o ON o.id = t.operation_id WHERE t.id = ANY(%(b_ids)s)")
#: dependents_of: DEPENDENTS of several tasks, each row with the task it depends on
#: (``ended_id``), each task's dependents found from its key (LATERAL)
DEPENDENTS_OF_PG = (
    "SELECT d.*, ended.id AS ended_id FROM unnest(%(b_ids)s::varchar[]) AS ended(id), "
    "LATERAL (SELECT t.*, u.status AS upstream_status FROM kser_task_dependencies dep "
    "JOIN kser_tasks t ON t.id = dep.task_id "
    "JOIN kser_task_dependencies ud ON ud.task_id = dep.task_id "
    "JOIN kser_tasks u ON u.id = ud.depends_on WHERE dep.depends_on = ended.id) d "
    "ORDER BY d.position")
#: operation_states: locked in id order (two batches never wait for each other in a cycle)
OPERATION_STATES_PG = (
    "SELECT id, status, topic, initial_result FROM kser_operations "
    "WHERE id = ANY(%(b_ids)s) ORDER BY id FOR UPDATE")
#: claim_pending: CLAIM_PG for PENDING tasks, several at once
CLAIM_PENDING_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_attempts)s::int[]) "
    "AS v(id, attempt)), "
    "claimed AS (UPDATE kser_tasks t SET status = 'RUNNING', attempt = v.attempt + 1, "
    "worker = %(b_worker)s, lease_expires_at = %(b_lease)s, started_at = %(b_now)s, "
    "finished_at = NULL FROM v WHERE t.id = v.id AND t.attempt = v.attempt "
    "AND t.status = 'PENDING' RETURNING t.id, t.attempt) "
    "INSERT INTO kser_attempts (task_id, number, worker, status, started_at) "
    "SELECT id, attempt, %(b_worker)s, 'RUNNING', %(b_now)s FROM claimed RETURNING task_id")
#: finish_attempts: FINISH_PG, several at once
FINISH_MANY_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_attempts)s::int[], "
    "%(b_task_statuses)s::varchar[], %(b_results)s::text[], %(b_finished)s::float8[], "
    "%(b_statuses)s::varchar[], %(b_retcodes)s::int[], %(b_errors)s::text[]) "
    "AS v(id, attempt, task_status, result, finished_at, status, retcode, error)), "
    "finished AS (UPDATE kser_tasks t SET status = v.task_status, result = v.result::json, "
    "finished_at = v.finished_at, lease_expires_at = NULL FROM v WHERE t.id = v.id "
    "AND t.attempt = v.attempt AND t.status = 'RUNNING' RETURNING t.id), "
    "attempt AS (UPDATE kser_attempts a SET status = v.status, finished_at = %(b_now)s, "
    "retcode = v.retcode, error = v.error FROM v WHERE a.task_id = v.id "
    "AND a.number = v.attempt AND v.id IN (SELECT id FROM finished)) "
    "SELECT id FROM finished")
#: queue_many: QUEUE_WITH_MESSAGE_PG, several at once (the outbox rows named by key: a
#: task message's key is its task's id)
QUEUE_MANY_PG = (
    "WITH v AS (SELECT * FROM unnest(%(b_ids)s::varchar[], %(b_operations)s::varchar[], "
    "%(b_topics)s::varchar[], %(b_keys)s::bytea[], %(b_values)s::bytea[], "
    "%(b_dues)s::float8[], %(b_traces)s::text[], %(b_digests)s::varchar[]) "
    "AS v(id, operation_id, topic, key, value, due_at, trace_context, digest)), "
    "queued AS (UPDATE kser_tasks t SET queued_attempt = t.attempt + 1, "
    "message_digest = v.digest FROM v "
    "WHERE t.id = v.id AND t.status = 'PENDING' "
    "AND (t.queued_attempt IS NULL OR t.queued_attempt <= t.attempt) RETURNING t.id) "
    "INSERT INTO kser_outbox (operation_id, topic, key, value, created_at, due_at, "
    "trace_context) SELECT v.operation_id, v.topic, v.key, v.value, %(b_now)s, v.due_at, "
    "v.trace_context FROM v JOIN queued ON queued.id = v.id RETURNING id, key")
#: insert_tasks: an operation's tasks, and their dependencies, one statement each (the
#: same text whatever their number: no statement to build per operation)
TASK_COLUMNS = ("id", "operation_id", "position", "entrypoint", "topic", "status", "params",
                "metadata", "attempt", "name", "trigger_rule")
INSERT_TASKS_PG = (
    "INSERT INTO kser_tasks (id, operation_id, position, entrypoint, topic, status, params, "
    "metadata, attempt, name, trigger_rule) SELECT id, operation_id, position, entrypoint, "
    "topic, status, params::json, metadata::json, attempt, name, trigger_rule FROM "
    "unnest(%(b_id)s::varchar[], %(b_operation_id)s::varchar[], %(b_position)s::int[], "
    "%(b_entrypoint)s::varchar[], %(b_topic)s::varchar[], %(b_status)s::varchar[], "
    "%(b_params)s::text[], %(b_metadata)s::text[], %(b_attempt)s::int[], "
    "%(b_name)s::varchar[], %(b_trigger_rule)s::varchar[]) AS v(id, operation_id, position, "
    "entrypoint, topic, status, params, metadata, attempt, name, trigger_rule)")
INSERT_DEPENDENCIES_PG = (
    "INSERT INTO kser_task_dependencies (task_id, depends_on) SELECT * FROM "
    "unnest(%(b_ids)s::varchar[], %(b_depends)s::varchar[])")
#: renew_leases: RENEW of several attempts
RENEW_MANY_PG = (
    "UPDATE kser_tasks t SET lease_expires_at = %(b_lease)s "
    "FROM unnest(%(b_ids)s::varchar[], %(b_attempts)s::int[]) AS v(id, attempt) "
    "WHERE t.id = v.id AND t.attempt = v.attempt AND t.status = 'RUNNING' RETURNING t.id")
#: mark_sent: MARK_SENT of several outbox rows
MARK_SENT_MANY_PG = ("UPDATE kser_outbox SET sent_at = %(b_now)s WHERE id = ANY(%(b_ids)s) "
                     "RETURNING id")

#: the statements of a task's hop, which :meth:`Tx._read` and :meth:`Tx._execute` run on
#: the DB-API connection (each compiled once per dialect)
HOP = frozenset(map(id, (GET_OPERATION, GET_OPERATION_LOCKED, GET_OPERATION_STATE,
                          GET_TASK_TO_RUN,
                          DEPENDENTS, PENDING_WITH_UPSTREAM, UPSTREAM, UNFINISHED,
                          FAILED_OR_LAST,
                          QUEUE, CLAIM,
                          TAKEN_OVER, NEW_ATTEMPT, RENEW, FINISH_TASK, FINISH_ATTEMPT,
                          ADD_OUTBOX, MARK_SENT)))
#: columns the store keeps as JSON (decoded by hand on the hop's raw cursors)
JSON_COLUMNS = frozenset(column.name for table in schema.metadata.tables.values()
                          for column in table.columns if isinstance(column.type, JSON))
