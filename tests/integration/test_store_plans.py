"""PostgreSQL plans of the hop's own statements: each reaches its rows by their keys,
whatever the statistics say. Two did not, and cost grew with the store: the end of an
attempt joined the attempts to a CTE (a scan of every attempt once the planner took the
table for small), and the join's compare-and-set was planned on the leases index (a scan
of every PENDING task once the statistics said PENDING was rare)."""

import re
from typing import Any

import psycopg
import pytest

from kser.store import Store, queries
from tests.integration.test_migrations import new_database

TASKS = 3000


def fill(store: Store) -> None:
    """Statistics taken when every task had ended and no attempt existed, then
    PENDING and RUNNING tasks and their attempts: the planner misjudges both."""
    with store.engine.begin() as connection:
        run = connection.exec_driver_sql
        run("INSERT INTO kser_operations (id, entrypoint, status, params, metadata, topic, "
            "created_at, updated_at) VALUES ('op', 'a.Op', 'RUNNING', '{}', '{}', 't', 1, 1)")
        run("INSERT INTO kser_tasks (id, operation_id, position, name, entrypoint, status, "
            "params, metadata, attempt) SELECT 't' || n, 'op', n, 'task-' || n, 'a.T', "
            "'SUCCESS', '{}', '{}', 1 FROM generate_series(1, %(n)s) AS n", dict(n=TASKS))
        # other operations, and the tasks in a chain: the planner knows both tables big
        run("INSERT INTO kser_operations (id, entrypoint, status, params, metadata, topic, "
            "created_at, updated_at) SELECT 'other' || n, 'a.Op', 'SUCCESS', '{}', '{}', 't', "
            "1, 1 FROM generate_series(1, %(n)s) AS n", dict(n=TASKS))
        run("INSERT INTO kser_task_dependencies (task_id, depends_on) SELECT 't' || n, "
            "'t' || (n - 1) FROM generate_series(2, %(n)s) AS n", dict(n=TASKS))
        run("INSERT INTO kser_outbox (operation_id, topic, value, created_at, sent_at) "
            "SELECT 'op', 't', 'v'::bytea, 1, 1 FROM generate_series(1, %(n)s)", dict(n=TASKS))
        run("ANALYZE kser_outbox")
        run("ANALYZE kser_operations")
        run("ANALYZE kser_task_dependencies")
        run("ANALYZE kser_tasks")
        run("ANALYZE kser_attempts")
        run("UPDATE kser_tasks SET status = CASE WHEN position %% 2 = 0 THEN 'PENDING' "
            "ELSE 'RUNNING' END, attempt = 0")
        run("INSERT INTO kser_attempts (task_id, number, worker, status, started_at) "
            "SELECT id, 1, 'w', 'RUNNING', 1 FROM kser_tasks")


@pytest.fixture
def store(postgres):
    store = Store(new_database(postgres))
    yield store
    store.close()


def scans(plan: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(node type, relation, index) of every scan of a table in a JSON plan."""
    found = []
    if "Relation Name" in plan and "Scan" in plan["Node Type"]:
        index = plan.get("Index Name")
        if plan["Node Type"] == "Bitmap Heap Scan":  # (the index is its child's)
            index = next((child.get("Index Name") for child in plan.get("Plans", [])
                          if child["Node Type"] == "Bitmap Index Scan"), None)
        found.append((plan["Node Type"], plan["Relation Name"], index))
    for child in plan.get("Plans", []):
        found.extend(scans(child))
    return found


def explain(store: Store, sql: str, params: dict[str, Any], generic: bool,
            types: dict[str, str] | None = None) -> list:
    """The scans of ``sql``'s plan for ``params`` once the store is filled; ``generic``:
    the plan a prepared statement settles on (psycopg prepares the hop's statements
    after a few runs) and keeps, made while the tables were still empty."""
    with store.engine.connect() as connection:
        cursor = connection.connection.driver_connection.cursor()
        if not generic:
            fill(store)
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            return scans(cursor.fetchone()[0][0]["Plan"])
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        types = types or TYPES
        cursor.execute(f"PREPARE hop({', '.join(types[name] for name in names)}) AS " + re.sub(
            r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql))
        inline = psycopg.ClientCursor(cursor.connection)  # the values typed by hop's types
        execute = f"EXPLAIN (FORMAT JSON) EXECUTE hop({', '.join(['%s'] * len(names))})"
        inline.execute(execute, [params[name] for name in names])  # the plan is made
        cursor.connection.commit()
        fill(store)
        inline.execute(execute, [params[name] for name in names])  # and kept
        return scans(inline.fetchone()[0][0]["Plan"])


TYPES = dict(b_id="text", b_attempt="int", b_next="int", b_worker="text", b_lease="float8",
             b_now="float8", b_error="text", b_task_status="text", b_status="text",
             b_result="json", b_finished="float8", b_retcode="int", b_operation="text",
             b_topic="text", b_key="bytea", b_value="bytea", b_due="float8", b_trace="text",
             b_digest="text")
HOP = dict(b_id="t2", b_attempt=0, b_next=1, b_worker="w", b_lease=2.0, b_now=1.0,
           b_error="taken over", b_task_status="SUCCESS", b_status="SUCCESS",
           b_result="{}", b_finished=1.0, b_retcode=0, b_operation="op", b_topic="t",
           b_key=None, b_value=b"v", b_due=None, b_trace=None, b_digest=None)


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
@pytest.mark.parametrize("statement", ["QUEUE_WITH_MESSAGE_PG", "CLAIM_PG",
                                       "CLAIM_PG_TAKING_OVER", "FINISH_PG"])
def test_each_hop_statement_reaches_its_rows_by_their_keys(store, statement, generic):
    found = explain(store, getattr(queries, statement), HOP, generic)
    assert found, "no scan in the plan"
    keys = {"kser_tasks": "kser_tasks_pkey", "kser_attempts": "kser_attempts_pkey"}
    assert all(node != "Seq Scan" and index == keys[table]
               for node, table, index in found if table in keys), found


# the statements of a worker's batch: several tasks named by their keys from arrays
BATCH_TYPES = dict(b_ids="varchar[]", b_attempts="int[]", b_worker="text", b_lease="float8",
                   b_now="float8", b_task_statuses="varchar[]", b_results="text[]",
                   b_finished="float8[]", b_statuses="varchar[]", b_retcodes="int[]",
                   b_errors="text[]", b_operations="varchar[]", b_topics="varchar[]",
                   b_keys="bytea[]", b_values="bytea[]", b_dues="float8[]",
                   b_traces="text[]", b_digests="varchar[]")
BATCH = dict(b_ids=["t2", "t4"], b_attempts=[0, 0], b_worker="w", b_lease=2.0, b_now=1.0,
             b_task_statuses=["SUCCESS"] * 2, b_results=["{}"] * 2, b_finished=[1.0] * 2,
             b_statuses=["SUCCESS"] * 2, b_retcodes=[0, 0], b_errors=[None, None],
             b_operations=["op"] * 2, b_topics=["t"] * 2, b_keys=[b"t2", b"t4"],
             b_values=[b"v"] * 2, b_dues=[None, None], b_traces=[None, None],
             b_digests=[None, None])


@pytest.mark.parametrize("generic", [False], ids=["custom"])  # (never prepared: see Tx._raw)
@pytest.mark.parametrize("statement", ["TASKS_TO_RUN_PG", "OPERATION_STATES_PG",
                                       "CLAIM_PENDING_PG", "FINISH_MANY_PG",
                                       "QUEUE_MANY_PG", "DEPENDENTS_OF_PG",
                                       "MARK_SENT_MANY_PG", "RENEW_MANY_PG"])
def test_each_batch_statement_reaches_its_rows_by_their_keys(store, statement, generic):
    sql = getattr(queries, statement)
    params = {name: value for name, value in BATCH.items() if f"%({name})s" in sql}
    if statement == "MARK_SENT_MANY_PG":  # (outbox rows, named by their integer ids)
        params["b_ids"] = [2, 4]
    found = explain(store, sql, params, generic, BATCH_TYPES)
    assert found, "no scan in the plan"
    keys = {"kser_tasks": {"kser_tasks_pkey"}, "kser_attempts": {"kser_attempts_pkey"},
            "kser_operations": {"kser_operations_pkey"}, "kser_outbox": {"kser_outbox_pkey"},
            "kser_task_dependencies": {"kser_task_dependencies_pkey",
                                       "ix_kser_task_dependencies_depends_on"}}
    assert all(node != "Seq Scan" and index in keys[table]
               for node, table, index in found if table in keys), found
