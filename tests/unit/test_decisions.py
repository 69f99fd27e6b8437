"""The engine's pure decisions (kser.sequencing.engine.decisions), read as tables: typed rows in,
what happens out. No store, no broker, no clock."""

from dataclasses import replace

import pytest
from cdumay_result import Result

from kser.sequencing.engine.decisions import (
    UPSTREAM_FAILED,
    Mode,
    Verdict,
    attempt_end,
    candidate,
    child_end,
    next_poke,
    outcome_of_graph,
    outcome_of_last,
    verdict,
)
from kser.sequencing.rules import Decision
from kser.sequencing.shapes import Sensor
from kser.sequencing.task import Task, TaskCanceled
from kser.status import Status
from kser.store import OperationRow, TaskRow

NOW = 1_000_000.0
ME, OTHER = "me:1", "other:2"


def task(**changes):
    row = TaskRow(id="t", operation_id="op", position=0, entrypoint="app.Step", topic=None,
                  status=Status.PENDING, params={}, metadata={}, result=None, attempt=0,
                  worker=None, lease_expires_at=None, started_at=None, finished_at=None,
                  resent_at=None, operation_status=Status.RUNNING, name="step",
                  trigger_rule=None, queued_attempt=1, pokes=0)
    return replace(row, **changes)


# -- what a task message does, given its task as stored ---------------------------------

VERDICTS = [
    # (the stored task, what the message says: entrypoint, mode, queued) -> verdict
    ("a pending task, sent by kser", {}, ("app.Step", None, [1, 0]), Verdict.RUN),
    ("another entrypoint", {}, ("app.Other", None, [1, 0]), Verdict.REFUSE),
    ("a finished task", dict(status=Status.SUCCESS), ("app.Step", None, [1, 0]), Verdict.DONE),
    ("a copy of an earlier queueing", {}, ("app.Step", None, [0, 0]), Verdict.DONE),
    ("an ended operation", dict(operation_status=Status.CANCELED),
     ("app.Step", None, [1, 0]), Verdict.REFUSE),
    ("never queued (early)", dict(queued_attempt=None), ("app.Step", None, None),
     Verdict.REFUSE),
    ("running on a live worker", dict(status=Status.RUNNING, worker=OTHER,
                                      lease_expires_at=NOW + 30), ("app.Step", None, [1, 0]),
     Verdict.WAIT),
    ("its worker's lease expired", dict(status=Status.RUNNING, worker=OTHER,
                                        lease_expires_at=NOW - 1), ("app.Step", None, [1, 0]),
     Verdict.RUN),
    ("interrupted here (this worker's name)", dict(status=Status.RUNNING, worker=ME,
                                                   lease_expires_at=NOW + 30),
     ("app.Step", None, [1, 0]), Verdict.RUN),
    ("a sub-operation's task", dict(status=Status.RUNNING, lease_expires_at=None),
     ("app.Step", None, [1, 0]), Verdict.CHILD),
    ("run_one on an ended operation", dict(operation_status=Status.FAILED),
     ("app.Step", Mode.ONE, [1, 0]), Verdict.RUN),
    ("run_one on a running operation", {}, ("app.Step", Mode.ONE, [1, 0]), Verdict.REFUSE),
    ("run_one not saying its queueing", dict(operation_status=Status.FAILED),
     ("app.Step", Mode.ONE, None), Verdict.REFUSE),
]


@pytest.mark.parametrize(("case", "stored", "message", "expected"), VERDICTS,
                         ids=[row[0] for row in VERDICTS])
def test_verdict_table(case, stored, message, expected):
    entrypoint, mode, queued = message
    found, why = verdict(task(**stored), entrypoint, mode, NOW, ME, queued)
    assert found is expected
    assert bool(why) == (expected is Verdict.REFUSE)  # a refusal always says why


# -- a PENDING task when one of its upstream tasks ended -------------------------------

CANDIDATES = [
    # (rule, upstream count, succeeded, failed, skipped) -> decision, retcode of its end
    (None, 2, 2, 0, 0, Decision.RUN, None),
    (None, 2, 1, 0, 0, Decision.WAIT, None),
    (None, 2, 1, 1, 0, Decision.FAIL, UPSTREAM_FAILED),
    (None, 2, 1, 0, 1, Decision.SKIP, 0),
    ("all_done", 2, 1, 1, 0, Decision.RUN, None),
    ("one_success", 3, 1, 0, 0, Decision.RUN, None),
    ("all_failed", 2, 1, 1, 0, Decision.SKIP, 0),
    ("none_failed", 2, 1, 0, 1, Decision.RUN, None),
]


@pytest.mark.parametrize(("rule", "count", "ok", "failed", "skipped", "expected", "retcode"),
                         CANDIDATES)
def test_candidate_table(rule, count, ok, failed, skipped, expected, retcode):
    row = task(trigger_rule=rule, upstream_count=count, upstream_succeeded=ok,
               upstream_failed=failed, upstream_skipped=skipped)
    decision, ends_with = candidate(row)
    assert decision is expected
    assert (None if ends_with is None else ends_with.retcode) == retcode


def test_a_task_a_branch_did_not_choose_is_skipped_saying_what_it_chose():
    decision, ends_with = candidate(task(upstream_count=1, upstream_succeeded=1), True,
                                    ["left"])
    assert decision is Decision.SKIP and "it chose left" in ends_with.stdout


# -- what an operation none of whose tasks is left to run becomes -----------------------

def test_outcome_of_last_merges_the_last_results_or_defers_to_the_graph():
    rows = [dict(status=Status.SUCCESS, result=dict(retcode=0, retval={"a": 1})),
            dict(status=Status.SUCCESS, result=dict(retcode=0, retval={"b": 2}))]
    status, result = outcome_of_last(rows, None)
    assert status is Status.SUCCESS and result["retval"] == {"a": 1, "b": 2}
    assert outcome_of_last([], {"retcode": 0, "retval": {"sent": 1}})[1]["retval"] == \
        {"sent": 1}
    assert outcome_of_last([dict(status=Status.FAILED, result=None)], None) is None


GRAPHS = [
    # (statuses and attempts of a -> b -> c) -> status of the operation
    ("all succeeded", [("SUCCESS", 1), ("SUCCESS", 1), ("SUCCESS", 1)], Status.SUCCESS),
    ("a failure nothing accepted", [("SUCCESS", 1), ("FAILED", 1), ("FAILED", 0)],
     Status.FAILED),
    ("a failure a later task ran after (all_done)", [("SUCCESS", 1), ("FAILED", 1),
                                                     ("SUCCESS", 1)], Status.SUCCESS),
    ("a failure accepted, then skipped", [("FAILED", 1), ("SKIPPED", 1), ("SUCCESS", 1)],
     Status.SUCCESS),
]


@pytest.mark.parametrize(("case", "states", "expected"), GRAPHS, ids=[g[0] for g in GRAPHS])
def test_outcome_of_graph_table(case, states, expected):
    tasks = {name: task(id=name, position=i, status=Status(status), attempt=attempt,
                        result=dict(retcode=0 if status == "SUCCESS" else 500, uuid=name))
             for i, (name, (status, attempt)) in enumerate(zip("abc", states, strict=True))}
    status, result = outcome_of_graph(tasks, {"b": {"a"}, "c": {"b"}}, None)
    assert status is expected
    if expected is Status.FAILED:
        assert result["uuid"] == "b"  # the first failure that ran


# -- how an attempt ends, from what its body left --------------------------------------

class Step(Task):
    MAX_RETRIES = 2


class Poll(Sensor):
    TIMEOUT, POKE_INTERVAL = 60, 5


class Body:
    """What a body leaves on its instance (the attributes the engine reads)."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


ENDS = [
    # (entrypoint, what the body left, its retcode, attempt, mode) -> status, retried
    ("a success", Step, {}, 0, 1, None, Status.SUCCESS, False),
    ("a failure with retries left", Step, {}, 500, 1, None, Status.FAILED, True),
    ("a failure, retries spent", Step, {}, 500, 3, None, Status.FAILED, False),
    ("a run_one failure is never retried", Step, {}, 500, 1, Mode.ONE, Status.FAILED, False),
    ("a skip", Step, dict(skipped="not today"), 0, 1, None, Status.SKIPPED, False),
    ("a cancel is never retried", Step, dict(exception=TaskCanceled()), 499, 1, None,
     Status.CANCELED, False),
]


@pytest.mark.parametrize(("case", "cls", "left", "retcode", "attempt", "mode", "status",
                          "retried"), ENDS, ids=[e[0] for e in ENDS])
def test_attempt_end_table(case, cls, left, retcode, attempt, mode, status, retried):
    end = attempt_end(cls, task(), Body(**left), Result(uuid="t", retcode=retcode),
                      forwarded=None, attempt=attempt, mode=mode, since=NOW, now=NOW)
    assert end.status is status and (end.retry_in is not None) == retried


def test_a_result_the_store_cannot_hold_fails_and_is_not_retried():
    end = attempt_end(Step, task(), Body(), Result(uuid="t", retcode=2**40), forwarded=None,
                      attempt=1, mode=None, since=NOW, now=NOW)
    assert end.status is Status.FAILED and end.retry_in is None
    assert "does not fit 32 bits" in end.result.stderr


def test_a_branch_choosing_a_task_not_after_it_fails():
    end = attempt_end(Step, task(), Body(followed=["nope"]), Result(uuid="t"),
                      forwarded=None, attempt=1, mode=None, since=NOW, now=NOW,
                      branch_names=["left", "right"])
    assert end.status is Status.FAILED and end.result.retcode == 400
    assert "(left, right)" in end.result.stderr


def test_an_unmet_sensor_pokes_again_until_its_timeout():
    waiting = Body(waiting=True)
    end = attempt_end(Poll, task(), waiting, Result(uuid="t"), forwarded=None, attempt=1,
                      mode=None, since=NOW, now=NOW + 10)
    assert end.poke == (NOW, NOW + 15) and end.status is Status.SUCCESS
    late = attempt_end(Poll, task(waiting_since=NOW), waiting, Result(uuid="t"),
                       forwarded=None, attempt=1, mode=None, since=NOW, now=NOW + 61)
    assert late.poke is None and late.status is Status.FAILED and late.retry_in is None
    assert late.result.retcode == 504


def test_the_last_poke_is_due_at_the_timeout_not_after():
    (since, due), _ = next_poke(Poll, task(), NOW, Result(uuid="t"), NOW + 58)
    assert (since, due) == (NOW, NOW + 60)


# -- a sub-operation's end --------------------------------------------------------------

def child(**changes):
    row = OperationRow(id="t", entrypoint="app.Child", status=Status.SUCCESS, params={},
                       metadata={}, result=dict(retcode=0, stdout="done"), topic="ops",
                       exit_notify=None, ttl_strategy=None, created_at=NOW, updated_at=NOW,
                       finished_at=NOW, parent_task_id="t", parent_operation_id="op")
    return replace(row, **changes)


WAITING = dict(status=Status.RUNNING, lease_expires_at=None)

CHILD_ENDS = [
    ("succeeded", child(), WAITING, (Status.SUCCESS, 0)),
    ("canceled", child(status=Status.CANCELED, result=dict(retcode=0)), WAITING,
     (Status.FAILED, 500)),
    ("still running", child(status=Status.RUNNING), WAITING, None),
    ("not this task's child", child(parent_operation_id="elsewhere"), WAITING, None),
    ("the task does not wait for it", child(), dict(status=Status.SUCCESS), None),
    ("no child at all", None, WAITING, None),
]


@pytest.mark.parametrize(("case", "child_row", "stored", "expected"), CHILD_ENDS,
                         ids=[c[0] for c in CHILD_ENDS])
def test_child_end_table(case, child_row, stored, expected):
    found = child_end(child_row, task(**stored))
    assert (None if found is None else (found[1], found[0].retcode)) == expected
