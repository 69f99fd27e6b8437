"""Each hot query's two forms agree: the same transitions, through the store's queries,
on SQLite (the portable statements, one task at a time) and on a real PostgreSQL (its
own statements: one round trip per hop step, arrays for a batch) give the same rows and
the same answers (kser/store/queries.py keeps both forms side by side)."""

from typing import Any

import pytest

from kser.status import Status
from kser.store import Store, TaskRow

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0
LEASE = NOW + 60
#: a join: a, then b and c, then d (b and c its upstream tasks)
GRAPH = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def _task(row: TaskRow | None) -> Any:
    if row is None:
        return None
    return (row.id, str(row.status), row.attempt, row.worker, row.queued_attempt,
            row.result, row.message_digest, row.operation_status and str(row.operation_status),
            row.upstream_count, row.upstream_succeeded, row.upstream_failed,
            row.upstream_skipped)


def _tables(store: Store) -> Any:
    with store.transaction() as tx:
        run = tx.connection.exec_driver_sql
        tasks = run("SELECT id, status, attempt, worker, queued_attempt, message_digest, "
                    "lease_expires_at, finished_at FROM kser_tasks ORDER BY id").all()
        attempts = run("SELECT task_id, number, worker, status, retcode, error "
                       "FROM kser_attempts ORDER BY task_id, number").all()
        outbox = run("SELECT operation_id, topic, key, value, due_at, trace_context, "
                     "sent_at IS NULL FROM kser_outbox ORDER BY key, id").all()
    return ([tuple(row) for row in tasks], [tuple(row) for row in attempts],
            [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
             for row in outbox])


def _scenario(store: Store) -> list[Any]:
    """The same transitions a hop and a batch make, each answer and table kept."""
    seen: list[Any] = []
    with store.transaction() as tx:
        tx.insert_operation(dict(
            id="op", entrypoint="app.Join", status=Status.RUNNING, params={}, metadata={},
            result=None, topic="ops", initial_result={"retcode": 0, "retval": {"x": 1}},
            exit_notify=None, ttl_strategy=None, created_at=NOW, updated_at=NOW,
            idempotency_key=None, parent_task_id=None, parent_operation_id=None))
        tx.insert_tasks([dict(id=name, operation_id="op", position=i, name=name,
                              trigger_rule="all_success", entrypoint="app.Step", topic=None,
                              status=Status.PENDING, params={}, metadata={}, attempt=0)
                         for i, name in enumerate(GRAPH)],
                        [(name, up) for name, ups in GRAPH.items() for up in ups])
        # a hop's compare-and-set: the second of two transitions finding a ready queues nothing
        seen.append([tx.queue_with_message("a", "op", "ops", b"a", b"msg-a", None, "tc", "d-a")
                     for _ in range(2)])
        seen.append(sorted(tx.operation_states(["op"]).items()).__repr__())
    seen.append(_tables(store))
    with store.transaction() as tx:  # a hop's claim, a stale claim, the task to run
        seen.append(_task(tx.get_task_to_run("a")))
        seen.append([tx.claim_task("a", 0, "w1", LEASE, NOW, taking_over=False),
                     tx.claim_task("a", 0, "w2", LEASE, NOW, taking_over=False)])
        seen.append(tx.renew_lease("a", 1, LEASE + 1))
        seen.append(sorted(tx.renew_leases([("a", 1), ("b", 7)], LEASE + 2)))  # b: no
        seen.append(sorted(tx.renew_leases([("a", 1)], LEASE + 3)))
    seen.append(_tables(store))
    with store.transaction() as tx:  # a hop's end; a stale end changes nothing
        seen.append([tx.finish_attempt("a", 1, Status.SUCCESS, {"retcode": 0}, NOW + 1, None),
                     tx.finish_attempt("a", 1, Status.FAILED, {"retcode": 1}, NOW + 2, "x")])
        seen.append([_task(row) for row in tx.dependents("a")])
        with tx.deferred_queue():  # a batch's queueing: one statement on PostgreSQL
            seen.append([tx.queue_with_message(name, "op", "ops", name.encode(),
                                               f"msg-{name}".encode(), None, None, f"d-{name}")
                         for name in ("b", "c", "b")])
        seen.append(sorted(tx.not_queued))
    seen.append(_tables(store))
    with store.transaction() as tx:  # a batch's reads and claims
        seen.append(sorted((k, _task(v)) for k, v in tx.tasks_to_run(["b", "c", "zz"]).items()))
        seen.append(sorted(tx.claim_pending([("b", 0), ("c", 0), ("d", 5)], "w1", LEASE, NOW)))
    seen.append(_tables(store))
    with store.transaction() as tx:  # a batch's ends, one of them stale
        seen.append(sorted(tx.finish_attempts([
            ("b", 1, Status.SUCCESS, {"retcode": 0, "retval": {"b": 1}}, None, Status.SUCCESS),
            ("c", 1, Status.FAILED, {"retcode": 500}, "boom", Status.PENDING),
            ("d", 3, Status.SUCCESS, {"retcode": 0}, None, Status.SUCCESS)], NOW + 3)))
        seen.append(sorted((k, [_task(t) for t in v])
                           for k, v in tx.dependents_of(["b", "c"]).items()))
    seen.append(_tables(store))
    with store.transaction() as tx:  # a takeover: the dead worker's attempt FAILED
        seen.append(tx.queue_with_message("c", "op", "ops", b"c", b"msg-c2", NOW + 5, None,
                                          "d-c2"))
        seen.append(tx.claim_task("c", 1, "w2", LEASE, NOW + 6, taking_over=False))
        seen.append(tx.claim_task("c", 2, "w3", NOW + 100, NOW + 90, taking_over=True))
        seen.append(sorted((row["id"], str(row["status"])) for row in tx.failed_or_last("op")))
        seen.append(tx.unfinished("op"))
    seen.append(_tables(store))
    with store.transaction() as tx:  # acknowledged rows marked sent: one, then several
        unsent = [row.id for row in tx.unsent("op")]
        tx.mark_sent(unsent[:1])
        tx.mark_sent(unsent[1:])
        seen.append(len(unsent))
    seen.append(_tables(store))
    return seen


def test_the_portable_and_the_postgresql_forms_give_the_same_rows(tmp_path, pg_url):
    sqlite, postgresql = Store(f"sqlite:///{tmp_path}/s.db"), Store(pg_url)
    try:
        portable, native = _scenario(sqlite), _scenario(postgresql)
    finally:
        sqlite.close(), postgresql.close()
    assert postgresql.url.startswith("postgresql")
    for step, (left, right) in enumerate(zip(portable, native, strict=True)):
        assert left == right, f"step {step}"
    # (the scenario is not vacuous: each compare-and-set refused its second caller, a
    # batch's stale end was refused, a takeover failed the dead worker's attempt)
    assert portable[0] == [True, False] and portable[4] == [True, False]
    assert portable[11] == [True, True, False] and portable[17] == ["b", "c"]
    assert portable[6:8] == [["a"], ["a"]]  # (renewed together: "b" was not running)
    assert portable[-2] == 4  # (each marked: the last tables show none unsent)
    tasks, attempts, outbox = portable[-1]
    assert all(not row[-1] for row in outbox)
    assert [row[2] for row in outbox] == [b"a", b"b", b"c", b"c"]
    taken = [a for a in attempts if a[:2] == ("c", 2)]
    assert taken[0][3] == "FAILED" and taken[0][5].startswith("lease expired")
    assert ("c", "RUNNING", 3, "w3") == tasks[2][:4]


def test_an_operation_of_1207_tasks_is_stored_whole_by_one_statement_each(pg_url):
    store, count = Store(pg_url), 1207
    try:
        with store.transaction() as tx:
            tx.insert_operation(dict(
                id="big", entrypoint="app.Big", status=Status.RUNNING, params={}, metadata={},
                result=None, topic="ops", initial_result=None, exit_notify=None,
                ttl_strategy=None, created_at=NOW, updated_at=NOW, idempotency_key=None,
                parent_task_id=None, parent_operation_id=None))
            tx.insert_tasks([dict(id=f"big-{i}", operation_id="big", position=i,
                                  name=f"s{i}", trigger_rule="all_success",
                                  entrypoint="app.Step", topic=None, status=Status.PENDING,
                                  params={"i": i}, metadata={}, attempt=0)
                             for i in range(count)],
                            [(f"big-{i}", f"big-{i - 1}") for i in range(1, count)])
        with store.transaction() as tx:
            tasks = tx.get_tasks("big")
            assert [t["params"]["i"] for t in tasks] == list(range(count))
            links = tx.connection.exec_driver_sql(
                "SELECT count(*) FROM kser_task_dependencies WHERE task_id LIKE 'big-%%'"
            ).scalar()
            assert links == count - 1
    finally:
        store.close()
