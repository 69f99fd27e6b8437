"""Shapes of operations on the in-process transport: parallel groups, DAGs, joins, trigger
rules, branches, skips, names, and the controls on them."""

import itertools
import time

import pytest
from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.controller import UndeliverableError
from kser.sequencing import Branch, Operation, Parallel, Sensor, SkipTask, Task, TriggerRule
from kser.sequencing.rules import Decision, decide
from kser.status import Status
from tests.unit import tasks
from tests.unit.test_sequencing import Harness, run_until_final

registry = tasks.registry
RUNS: list[str] = []
#: names of tasks that fail while listed here
FAILING: set[str] = set()
SEEN: dict[str, dict] = {}


@registry.subscribe
class Work(Task):
    """Records its name, returns retval {its name: True} (a task's result accumulates
    what it received: Result + keeps every key); fails while its name is in FAILING."""

    def run(self):
        RUNS.append(self.name)
        SEEN[self.name] = dict(received=sorted(self.result.retval or {}),
                               upstream={name: (r.retcode, sorted(r.retval or {}))
                                         for name, r in self.upstream_results.items()})
        if self.name in FAILING:
            return Result(uuid=self.uuid, retcode=500, stderr=f"{self.name} failed")
        return Result(uuid=self.uuid, stdout=self.name, retval={self.name: True})


@registry.subscribe
class Skipper(Task):
    def run(self):
        RUNS.append(self.name)
        raise SkipTask("nothing to do today")


@registry.subscribe
class Pick(Branch):
    def choose(self):
        RUNS.append(self.name)
        return self.params["pick"]


@registry.subscribe
class Fanned(Operation):
    """a >> Parallel(b1, b2, b3) >> c >> Parallel(d1, d2) >> e (the acceptance shape)."""

    def build_tasks(self, **kwargs):
        return [Work(name="a"), Parallel(Work(name="b1"), Work(name="b2"), Work(name="b3")),
                Work(name="c"), Parallel(Work(name="d1"), [Work(name="d2"), Work(name="d3")]),
                Work(name="e")]


@registry.subscribe
class Diamond(Operation):
    def build_tasks(self, **kwargs):
        a, b, c, d = (Work(name=n) for n in "abcd")
        a >> [b, c] >> d
        return [a, b, c, d]


@registry.subscribe
class Ruled(Operation):
    """Two upstream tasks (x, y; failing per FAILING) and a task with params["rule"]."""

    def build_tasks(self, **kwargs):
        x, y = Work(name="x"), Work(name="y")
        last = Work(name="last", trigger_rule=kwargs["rule"])
        [x, y] >> last
        return [x, y, last]


@registry.subscribe
class Branching(Operation):
    def build_tasks(self, **kwargs):
        pick = Pick(name="pick", params={"pick": kwargs["pick"]})
        left, right = Work(name="left"), Work(name="right")
        after_right = Work(name="after_right")
        join = Work(name="join", trigger_rule="none_failed_min_one_success")
        pick >> [left, right]
        right >> after_right
        [left, after_right] >> join
        return [pick, left, right, after_right, join]


@registry.subscribe
class Skipping(Operation):
    def build_tasks(self, **kwargs):
        return [Work(name="first"), Skipper(name="skipper"), Work(name="then"),
                Work(name="anyway", trigger_rule="all_done")]


# met from a time on ("after"), or from a number of unmet pokes on ("at_poke"): the
# tests that count pokes use the count, which no slow machine can get past
READY: dict = {"after": float("inf"), "at_poke": None}


@registry.subscribe
class WaitReady(Sensor):
    POKE_INTERVAL = 0.05
    TIMEOUT = 60.0  # the timeout test lowers it; the others must never reach it

    def poke(self):
        RUNS.append(f"poke{self.pokes}")
        if READY["at_poke"] is not None:
            return self.pokes >= READY["at_poke"]
        return time.time() >= READY["after"]


@registry.subscribe
class Waiting(Operation):
    def build_tasks(self, **kwargs):
        return [WaitReady(name="wait"), Work(name="then")]


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    RUNS.clear()
    FAILING.clear()
    SEEN.clear()
    READY["at_poke"] = None
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    # the next poke or retry is sent by the tests' own forced sweeps, never by one a
    # slow drain happens to make on its way
    monkeypatch.setattr(harness.registry.settings, "sweep_interval", 3600.0)
    yield harness
    harness.store.close()


def statuses(h, op_id):
    row, task_rows = h.operation(op_id)
    return row.status, {t.name: t.status for t in task_rows}


# -- trigger rules -----------------------------------------------------------------------

S, F, K, P = "success", "failed", "skipped", "pending"
# rule -> the decision for each mix of two upstream states (Airflow's meanings)
RULES = {
    "all_success": {(S, S): "run", (S, F): "fail", (F, F): "fail", (S, K): "skip",
                    (K, K): "skip", (S, P): "wait", (F, P): "fail", (K, P): "skip"},
    "all_failed": {(S, S): "skip", (S, F): "skip", (F, F): "run", (S, K): "skip",
                   (K, K): "skip", (S, P): "skip", (F, P): "wait", (K, P): "skip"},
    "all_done": {(S, S): "run", (S, F): "run", (F, F): "run", (S, K): "run",
                 (K, K): "run", (S, P): "wait", (F, P): "wait", (K, P): "wait"},
    "one_success": {(S, S): "run", (S, F): "run", (F, F): "fail", (S, K): "run",
                    (K, K): "skip", (S, P): "run", (F, P): "wait", (K, P): "wait"},
    "one_failed": {(S, S): "skip", (S, F): "run", (F, F): "run", (S, K): "skip",
                   (K, K): "skip", (S, P): "wait", (F, P): "run", (K, P): "wait"},
    "one_done": {(S, S): "run", (S, F): "run", (F, F): "run", (S, K): "run",
                 (K, K): "skip", (S, P): "run", (F, P): "run", (K, P): "wait"},
    "none_failed": {(S, S): "run", (S, F): "fail", (F, F): "fail", (S, K): "run",
                    (K, K): "run", (S, P): "wait", (F, P): "fail", (K, P): "wait"},
    "none_failed_min_one_success": {(S, S): "run", (S, F): "fail", (F, F): "fail",
                                    (S, K): "run", (K, K): "skip", (S, P): "wait",
                                    (F, P): "fail", (K, P): "wait"},
    "none_skipped": {(S, S): "run", (S, F): "run", (F, F): "run", (S, K): "skip",
                     (K, K): "skip", (S, P): "wait", (F, P): "wait", (K, P): "skip"},
    "always": {mix: "run" for mix in itertools.product((S, F, K, P), repeat=2)},
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_trigger_rule_decides_as_airflow_does_for_each_mix_of_upstream_states(rule):
    assert set(RULES) == {r.value for r in TriggerRule}
    for mix, expected in RULES[rule].items():
        counts = {state: mix.count(state) for state in (S, F, K)}
        decision = decide(rule, 2, counts[S], counts[F], counts[K])
        assert decision == Decision(expected), (rule, mix)
    assert decide(rule, 0, 0, 0, 0) is Decision.RUN  # no upstream: runs at once


def test_an_unknown_trigger_rule_is_refused_naming_the_known_ones():
    with pytest.raises(ValidationError, match=r"Unknown trigger rule 'sometimes'.*all_success"):
        Work(trigger_rule="sometimes")


@pytest.mark.parametrize("rule,failing,expected", [
    ("all_success", {"x"}, ("FAILED", "FAILED", False)),
    ("all_done", {"x"}, ("SUCCESS", "SUCCESS", True)),
    ("one_failed", set(), ("SUCCESS", "SKIPPED", False)),
    ("one_failed", {"y"}, ("SUCCESS", "SUCCESS", True)),
    ("all_failed", {"x", "y"}, ("SUCCESS", "SUCCESS", True)),
    ("none_failed", {"x"}, ("FAILED", "FAILED", False)),
    ("one_success", {"x"}, ("SUCCESS", "SUCCESS", True)),
])
def test_a_rule_runs_or_ends_its_task_and_decides_the_operations_status(h, rule, failing,
                                                                         expected):
    FAILING.update(failing)
    op = Ruled(params={"rule": rule}).send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert (op_status, by_name["last"], "last" in RUNS) == expected
    assert sorted(RUNS) == sorted(["x", "y", *(["last"] if expected[2] else [])])


# -- shapes --------------------------------------------------------------------------------

def test_parallel_groups_run_between_joins_that_run_once_with_every_upstream_result(h):
    op = Fanned().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "SUCCESS" and set(by_name.values()) == {Status.SUCCESS}
    assert sorted(RUNS) == sorted(["a", "b1", "b2", "b3", "c", "d1", "d2", "d3", "e"])
    order = {name: RUNS.index(name) for name in RUNS}
    assert order["a"] < min(order[b] for b in ("b1", "b2", "b3")) < order["c"]
    assert max(order[b] for b in ("b1", "b2", "b3")) < order["c"]
    assert order["d2"] < order["d3"] < order["e"] and order["d1"] < order["e"]
    # a join receives its upstream results merged, and each by name
    assert SEEN["c"]["received"] == ["a", "b1", "b2", "b3"]
    assert SEEN["c"]["upstream"] == {f"b{i}": (0, ["a", f"b{i}"]) for i in (1, 2, 3)}
    assert SEEN["d3"]["upstream"] == {"d2": (0, SEEN["d3"]["received"])}
    assert SEEN["e"]["received"] == ["a", "b1", "b2", "b3", "c", "d1", "d2", "d3"]
    row, _ = h.operation(op.uuid)
    assert sorted(row.result["retval"]) == ["a", "b1", "b2", "b3", "c", "d1", "d2", "d3", "e"]


def test_a_dag_wired_with_shift_operators_runs_its_diamond(h):
    op = Diamond().send()
    assert [t.name for t in op.tasks] == ["a", "b", "c", "d"]
    assert [u.name for u in op.tasks[3].upstream] == ["b", "c"]
    h.drain()
    assert statuses(h, op.uuid)[0] == "SUCCESS"
    assert RUNS[0] == "a" and RUNS[-1] == "d" and sorted(RUNS[1:3]) == ["b", "c"]
    with h.store.transaction() as tx:
        deps = tx.dependencies(op.uuid)
    ids = {t.name: t.uuid for t in op.tasks}
    assert deps[ids["d"]] == {ids["b"], ids["c"]} and deps[ids["b"]] == {ids["a"]}


def test_a_failed_branch_lets_the_others_finish_then_fails_the_operation(h):
    FAILING.add("b2")
    op = Fanned().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "FAILED"
    assert by_name["b1"] == by_name["b3"] == "SUCCESS" and by_name["b2"] == "FAILED"
    assert all(by_name[n] == "FAILED" for n in ("c", "d1", "d2", "d3", "e"))
    assert "c" not in RUNS
    row, _ = h.operation(op.uuid)
    assert row.result["stderr"] == "b2 failed"


def test_a_branch_follows_the_chosen_task_and_skips_the_others(h):
    op = Branching(params={"pick": "left"}).send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "SUCCESS"
    assert by_name == {"pick": "SUCCESS", "left": "SUCCESS", "right": "SKIPPED",
                       "after_right": "SKIPPED", "join": "SUCCESS"}
    assert RUNS == ["pick", "left", "join"]
    _, task_rows = h.operation(op.uuid)
    right = next(t for t in task_rows if t.name == "right")
    assert right.result["stdout"].startswith("not chosen by the branch before it")


def test_a_branch_choosing_an_unknown_task_fails_saying_which_it_may_choose(h):
    op = Branching(params={"pick": "middle"}).send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "FAILED" and by_name["pick"] == "FAILED"
    _, task_rows = h.operation(op.uuid)
    assert "chose 'middle', which is not among the tasks right after it (left, right)" in (
        task_rows[0].result["stderr"])


def test_skip_task_skips_it_and_what_needs_it_while_all_done_runs(h):
    op = Skipping().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "SUCCESS"
    assert by_name == {"first": "SUCCESS", "skipper": "SKIPPED", "then": "SKIPPED",
                       "anyway": "SUCCESS"}
    assert RUNS == ["first", "skipper", "anyway"]
    _, task_rows = h.operation(op.uuid)
    assert task_rows[1].result["stdout"] == "skipped: nothing to do today"
    assert h.attempts(task_rows[1].id)[0].status == "SKIPPED"


# -- building -------------------------------------------------------------------------------

def test_tasks_are_named_after_their_class_unless_named_and_names_are_unique():
    class Twice(Operation):
        def build_tasks(self, **kwargs):
            return [Work(), Work(), Work(name="Work-2"), Work(name="load")]

    op = Twice().build()
    assert [t.name for t in op.tasks] == ["Work", "Work-3", "Work-2", "load"]

    class Clash(Operation):
        def build_tasks(self, **kwargs):
            return [Work(name="same"), Work(name="same")]

    with pytest.raises(ValidationError, match=r"Two tasks of .* are named 'same'"):
        Clash().build()


def test_a_cycle_is_refused_naming_its_tasks():
    class Loop(Operation):
        def build_tasks(self, **kwargs):
            a, b, c = Work(name="a"), Work(name="b"), Work(name="c")
            a >> b >> c >> a
            return [a, b, c]

    with pytest.raises(ValidationError, match=r"form a cycle: (a >> b >> c >> a|b >> c >> a >> b"
                       r"|c >> a >> b >> c); a task cannot wait for itself"):
        Loop().build()


def test_a_dependency_on_a_task_the_operation_lacks_is_refused():
    class Partial(Operation):
        def build_tasks(self, **kwargs):
            outside, inside = Work(name="outside"), Work(name="inside")
            outside >> inside
            return [inside]

    with pytest.raises(ValidationError, match="depends on outside, which is not in the "
                       "operation"):
        Partial().build()


def test_parallel_and_shift_wiring_do_not_mix():
    class Mixed(Operation):
        def build_tasks(self, **kwargs):
            a, b = Work(name="a"), Work(name="b")
            a >> b
            return [a, b, Parallel(Work(name="c"))]

    with pytest.raises(ValidationError, match="mixes Parallel"):
        Mixed().build()


# -- controls on shapes ---------------------------------------------------------------------

def test_recover_reruns_only_the_failed_branch_and_what_depends_on_it(h):
    FAILING.add("b2")
    op = Fanned().send()
    h.drain()
    FAILING.clear()
    RUNS.clear()
    assert h.registry.recover(op.uuid).retcode == 0
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "SUCCESS" and set(by_name.values()) == {Status.SUCCESS}
    assert sorted(RUNS) == sorted(["b2", "c", "d1", "d2", "d3", "e"])


def test_run_from_and_run_one_take_a_task_name(h):
    op = Diamond().send()
    h.drain()
    RUNS.clear()
    assert h.registry.run_from(op.uuid, "b").retcode == 0
    h.drain()
    assert sorted(RUNS) == ["b", "d"]
    RUNS.clear()
    assert h.registry.run_one(op.uuid, "c").retcode == 0
    h.drain()
    assert RUNS == ["c"]
    assert statuses(h, op.uuid)[0] == "SUCCESS"


def test_the_join_is_queued_once_whoever_finds_it_ready(h):
    """The compare-and-set itself: a second transition finding the task ready (another
    worker's, the same instant) queues nothing."""
    op = Diamond()
    op.launch()
    with h.store.transaction() as tx:
        d = next(t for t in tx.get_tasks(op.uuid) if t.name == "d")
        assert tx.queue_task(d.id) is True
        assert tx.queue_task(d.id) is False
        assert tx.get_task(d.id).queued_attempt == 1


# -- sensors ------------------------------------------------------------------------------

def test_a_sensor_pokes_until_its_condition_holds_without_using_attempts(h):
    READY["at_poke"] = 3
    op = Waiting().send()
    row = run_until_final(h, op.uuid)
    assert row.status == "SUCCESS"
    pokes = [r for r in RUNS if r.startswith("poke")]
    assert pokes == ["poke0", "poke1", "poke2", "poke3"]
    assert RUNS[-1] == "then"
    _, task_rows = h.operation(op.uuid)
    sensor = task_rows[0]
    assert sensor.attempt == 1 and sensor.pokes == len(pokes) - 1  # the met one is no poke
    assert [a.status for a in h.attempts(sensor.id)] == ["SUCCESS"]
    assert sensor.result["stdout"] == f"wait: condition met at poke {len(pokes)}"


def test_a_sensor_fails_once_its_timeout_passed_and_is_not_retried(h, monkeypatch):
    READY["after"] = float("inf")
    monkeypatch.setattr(WaitReady, "TIMEOUT", 0.3)
    monkeypatch.setattr(WaitReady, "MAX_RETRIES", 3)
    op = Waiting().send()
    row = run_until_final(h, op.uuid)
    assert row.status == "FAILED"
    assert row.result["retcode"] == 504
    assert row.result["stderr"].startswith("Sensor wait timed out: its condition was not met "
                                           "within 0.3 s (")
    _, task_rows = h.operation(op.uuid)
    assert [a.status for a in h.attempts(task_rows[0].id)] == ["FAILED"]
    assert "then" not in RUNS


def test_between_pokes_a_sensor_holds_no_consumer_thread(h):
    """One consumer, one task thread: while the sensor waits, other operations run."""
    READY["at_poke"] = 2
    waiting = Waiting().send()
    others = [Diamond().send() for _ in range(5)]
    run_until_final(h, waiting.uuid)
    assert all(statuses(h, op.uuid)[0] == "SUCCESS" for op in others)
    first_poke, met = RUNS.index("poke0"), max(i for i, r in enumerate(RUNS)
                                                if r.startswith("poke"))
    # the other operations' 20 tasks all ran before the poke that found the condition
    # met (the third), most of them between two pokes
    assert sum(1 for r in RUNS[:met] if not r.startswith("poke")) == 20
    assert sum(1 for r in RUNS[first_poke:met] if not r.startswith("poke")) >= 10


# -- synchronous runs, idempotent submission -------------------------------------------------

def test_a_second_send_with_the_same_key_returns_the_first_operation(h):
    first = Diamond().send(key="nightly-2026-11-22")
    again = Diamond().send(key="nightly-2026-11-22")
    assert again.uuid == first.uuid and isinstance(again, Diamond)
    h.drain()
    assert RUNS.count("a") == 1  # started once
    with h.store.transaction() as tx:
        assert tx.operation_by_key("nightly-2026-11-22").id == first.uuid
    assert Diamond().send(key="other").uuid != first.uuid
    with pytest.raises(ValidationError, match=r"was given to operation .*, a "
                       r"tests.unit.test_shapes.Diamond: a key names one operation"):
        Skipping().send(key="nightly-2026-11-22")


def test_wait_returns_the_final_result_or_raises_timeout_error(h):
    op = Diamond().send()
    with pytest.raises(TimeoutError, match=r"is still RUNNING after 0.2 s: it goes on"):
        h.registry.wait(op.uuid, timeout=0.2)
    h.drain()
    result = h.registry.wait(op.uuid, timeout=1)
    assert result.retcode == 0 and sorted(result.retval) == ["a", "b", "c", "d"]
    FAILING.add("x")
    failed = Ruled(params={"rule": "all_success"}).send()
    h.drain()
    assert h.registry.wait(failed.uuid).retcode == 500
    assert h.registry.wait("no-such-operation").retcode == 404


def test_run_sync_sends_and_waits_for_the_result(h):
    import threading

    from kser.memory.consumer import Consumer

    worker = Consumer({"broker": h.broker.name, "group_id": "workers"}, ["ops"])
    worker.controller = h.registry.controller
    thread = threading.Thread(target=worker.run, kwargs=dict(until_idle=False))
    thread.start()
    try:
        result = Diamond.run_sync(timeout=20)
    finally:
        worker.stop()
        thread.join(30)
    assert result.retcode == 0 and sorted(result.retval) == ["a", "b", "c", "d"]


# -- sub-operations -------------------------------------------------------------------------

@registry.subscribe
class Inner(Operation):
    def build_tasks(self, **kwargs):
        return [Work(name="x"), Work(name="y")]


@registry.subscribe
class Outer(Operation):
    def build_tasks(self, **kwargs):
        return [Work(name="a"), Inner(name="inner"), Work(name="b")]


def test_an_operation_among_the_tasks_runs_as_a_child_operation(h):
    op = Outer().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "SUCCESS" and set(by_name.values()) == {Status.SUCCESS}
    assert RUNS == ["a", "x", "y", "b"]
    _, task_rows = h.operation(op.uuid)
    inner_task = task_rows[1]
    child, child_tasks = h.operation(inner_task.id)  # the child's id is its task's
    assert child.status == "SUCCESS" and child.entrypoint == Inner.path
    assert (child.parent_task_id, child.parent_operation_id) == (inner_task.id, op.uuid)
    assert [t.name for t in child_tasks] == ["x", "y"]
    assert SEEN["x"]["received"] == ["a"]  # the child's first task got what came before
    assert SEEN["b"]["received"] == ["a", "x", "y"]  # and what follows, the child's result
    assert inner_task.attempt == 1


def test_a_failed_child_fails_its_parent_and_recovering_the_parent_recovers_the_child(h):
    FAILING.add("y")
    op = Outer().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "FAILED" and by_name == {"a": "SUCCESS", "inner": "FAILED",
                                                 "b": "FAILED"}
    _, task_rows = h.operation(op.uuid)
    assert h.operation(task_rows[1].id)[0].status == "FAILED"
    FAILING.clear()
    RUNS.clear()
    assert h.registry.recover(op.uuid).retcode == 0
    h.drain()
    assert statuses(h, op.uuid)[0] == "SUCCESS"
    assert RUNS == ["y", "b"]  # x kept its result: the child was recovered, not re-run
    assert h.operation(task_rows[1].id)[0].status == "SUCCESS"


@registry.subscribe
class WaitingChild(Operation):
    def build_tasks(self, **kwargs):
        return [WaitReady(name="wait"), Work(name="z")]


@registry.subscribe
class OuterWaiting(Operation):
    def build_tasks(self, **kwargs):
        return [Work(name="a"), WaitingChild(name="child"), Work(name="b")]


def test_canceling_the_parent_cancels_its_running_child(h):
    READY["after"] = float("inf")
    op = OuterWaiting().send()
    h.drain()  # a ran, the child started, its sensor's first poke found nothing
    _, task_rows = h.operation(op.uuid)
    child_id = task_rows[1].id
    assert task_rows[1].status == "RUNNING" and task_rows[1].lease_expires_at is None
    assert h.operation(child_id)[0].status == "RUNNING"
    assert h.registry.cancel(op.uuid).retcode == 0
    assert h.operation(child_id)[0].status == "CANCELED"
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "CANCELED" and by_name == {"a": "SUCCESS", "child": "CANCELED",
                                                   "b": "CANCELED"}
    READY["after"] = 0
    h.registry.sequencer.sweep(force=True)  # the next poke, due: refused, the child ended
    h.drain()
    assert "z" not in RUNS and "b" not in RUNS


# -- cancel checkpoints -------------------------------------------------------------------

@registry.subscribe
class Long(Task):
    def run(self):
        RUNS.append(self.name)
        for step in range(100):
            if step == 3:  # meanwhile, someone cancels its operation
                registry.cancel(self.operation_id)
            self.checkpoint(every=0)
            RUNS.append(f"{self.name} step {step}")
        return Result(uuid=self.uuid)


@registry.subscribe
class LongBranches(Operation):
    def build_tasks(self, **kwargs):
        return [Parallel(Long(name="long"), Work(name="other")), Work(name="after")]


def test_cancel_stops_a_running_task_at_its_next_checkpoint(h):
    op = LongBranches().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "CANCELED"
    assert by_name["long"] == "CANCELED" and by_name["after"] == "CANCELED"
    assert "long step 3" not in RUNS and "long step 2" in RUNS and "after" not in RUNS
    _, task_rows = h.operation(op.uuid)
    long_task = next(t for t in task_rows if t.name == "long")
    assert [a.status for a in h.attempts(long_task.id)] == ["CANCELED"]
    assert "stopped at a checkpoint" in long_task.result["stderr"]


# -- what a review found --------------------------------------------------------------------

def test_copies_of_a_sensors_poke_message_never_start_a_second_chain_of_pokes(h):
    READY["at_poke"] = 3
    op = Waiting().send()
    h.drain()  # the first poke: unmet; the next one waits in the outbox
    with h.store.transaction() as tx:
        (row,) = [r for r in tx.unsent(op.uuid)]
    for _ in range(2):  # two sweeps sent it at once, and a broker redelivered it
        h.broker.produce("ops", row.value, row.key)
    h.registry.sequencer.sweep(force=True)
    row = run_until_final(h, op.uuid)
    assert row.status == "SUCCESS"
    _, task_rows = h.operation(op.uuid)
    pokes = [r for r in RUNS if r.startswith("poke")]
    assert len(pokes) == task_rows[0].pokes + 1  # every poke counted: one chain
    assert pokes == [f"poke{i}" for i in range(len(pokes))]


@registry.subscribe
class CancelsItsOperation(Task):
    def run(self):
        RUNS.append(self.name)
        registry.cancel(self.operation_id)
        return Result(uuid=self.uuid, stdout="canceled my operation")


@registry.subscribe
class CanceledDiamond(Operation):
    def build_tasks(self, **kwargs):
        a, b, c, d = CancelsItsOperation(name="a"), *(Work(name=n) for n in "bcd")
        a >> [b, c] >> d
        return [a, b, c, d]


def test_run_from_after_a_cancel_ends_the_operation_instead_of_waiting_forever(h):
    op = CanceledDiamond().send()
    h.drain()  # a ran and canceled the operation: b, c and d are CANCELED
    assert statuses(h, op.uuid)[1] == {"a": "SUCCESS", "b": "CANCELED", "c": "CANCELED",
                                       "d": "CANCELED"}
    assert h.registry.run_from(op.uuid, "b").retcode == 0
    row = run_until_final(h, op.uuid)
    op_status, by_name = statuses(h, op.uuid)
    # d waits for b and c; c was canceled and never runs: d cannot run either
    assert op_status == "FAILED" and by_name["b"] == "SUCCESS" and by_name["d"] == "FAILED"
    assert row.status == "FAILED"


def test_a_long_chain_failing_at_its_start_ends_without_recursion(h):
    class Long(Operation):
        def build_tasks(self, **kwargs):
            return [Work(name=f"w{i}") for i in range(600)]

    registry.subscribe(Long)
    FAILING.add("w0")
    op = Long().send()
    h.drain()
    op_status, by_name = statuses(h, op.uuid)
    assert op_status == "FAILED" and list(by_name.values()).count("FAILED") == 600


def test_a_forged_child_ended_message_or_a_planted_child_changes_nothing(h):
    from kser.memory.producer import Producer
    from kser.schemas import Message

    READY["after"] = float("inf")
    op = OuterWaiting().send()
    h.drain()
    _, task_rows = h.operation(op.uuid)
    a_task, child_task = task_rows[0], task_rows[1]
    producer = Producer({"broker": h.broker.name})
    for task in (a_task, child_task):  # the child has not ended: nothing may end its task
        producer.send("ops", Message(task.id, task.entrypoint, metadata={"kser": dict(
            operation_id=op.uuid, task_id=task.id, mode="child_ended")}))
    h.drain()
    _, by_name = statuses(h, op.uuid)
    assert by_name["child"] == "RUNNING" and by_name["b"] == "PENDING"

    # an operation sent with the id of a task is refused: it would take its child's place
    planted = OuterWaiting().send()
    _, planted_tasks = h.operation(planted.uuid)
    with pytest.raises(UndeliverableError, match="has the id of a stored task"):
        Inner(uuid=planted_tasks[1].id).send()
    # one an older kser stored so: the task fails saying why, and is not claimed for ever
    squatted = OuterWaiting().send()
    _, squatted_tasks = h.operation(squatted.uuid)
    with h.store.transaction() as tx:
        now = time.time()
        tx.insert_operation(dict(id=squatted_tasks[1].id, entrypoint=Inner.path,
                                 status="RUNNING", params={}, metadata={}, topic="ops",
                                 created_at=now, updated_at=now))
    h.drain()
    assert h.operation(planted_tasks[1].id)[0].entrypoint == WaitingChild.path
    _, by_name = statuses(h, squatted.uuid)
    assert by_name["child"] == "FAILED" and "b" not in RUNS  # nothing followed it
    _, tasks_after = h.operation(squatted.uuid)
    assert "not this task's sub-operation holds its id" in tasks_after[1].result["stderr"]


def test_a_lost_child_ended_message_is_sent_again_by_a_sweep(h, monkeypatch):
    op = Outer().send()
    # the child's end is stored, but its message to the parent's task is lost
    sequencer = h.registry.sequencer
    sequencer.transitions.queue_child_ended = lambda tx, child, result: None
    try:
        h.drain()
    finally:
        del sequencer.transitions.queue_child_ended
    _, task_rows = h.operation(op.uuid)
    assert h.operation(task_rows[1].id)[0].status == "SUCCESS"
    assert statuses(h, op.uuid)[1]["inner"] == "RUNNING"
    monkeypatch.setattr(h.registry.settings, "task_lease", 0.0)
    time.sleep(0.01)
    h.registry.sequencer.sweep(force=True)
    h.drain()
    assert statuses(h, op.uuid)[0] == "SUCCESS"
