"""Cron schedules: fire times in a time zone across DST, the catch-up policies after
downtime, launches keyed by schedule and fire time (two schedulers never launch a fire
twice), what kser_schedules keeps, the file format and every refusal. (Two real
`kser scheduler` processes on Kafka and PostgreSQL: tests/acceptance/test_schedules.py.)"""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cdumay_error.types import ValidationError

from kser.schemas import KserKey
from kser.sequencing.schedules import Schedule, Scheduler, _iso, load_schedules
from kser.store import Store
from tests.unit import tasks
from tests.unit.test_sequencing import h  # noqa: F401 (the fixture)

THREE = "tests.unit.tasks.ThreeSteps"
ROOT = Path(__file__).resolve().parents[2]


def at(text, zone="UTC"):
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def launched(h):  # noqa: F811
    """{idempotency key: operation id} of every operation in the store."""
    with h.store.transaction() as tx:
        rows = tx.list_operations(limit=1000)
    return {row.idempotency_key: row.id for row in rows}


def state(h, name):  # noqa: F811
    with h.store.transaction() as tx:
        return tx.schedule_states([name])[name]


def test_fire_times_follow_the_time_zone_across_both_dst_changes():
    nightly = Schedule("nightly", "30 2 * * *", THREE, timezone="Europe/Paris")
    spring = nightly.fires(at("2026-03-27 12:00"), at("2026-03-30 12:00"))
    assert [datetime.fromtimestamp(f, UTC).isoformat() for f in spring] == [
        "2026-03-28T01:30:00+00:00",   # 02:30 CET
        "2026-03-29T01:00:00+00:00",   # 02:30 does not exist that night: at 03:00 CEST
        "2026-03-30T00:30:00+00:00"]   # 02:30 CEST
    autumn = nightly.fires(at("2026-10-24 12:00"), at("2026-10-26 12:00"))
    assert [datetime.fromtimestamp(f, UTC).isoformat() for f in autumn] == [
        "2026-10-25T00:30:00+00:00",   # 02:30 happens twice that night: once
        "2026-10-26T01:30:00+00:00"]
    assert nightly.key(spring[1]) == "schedule:nightly:2026-03-29T01:00:00+00:00"
    assert nightly.latest(spring[1]) == spring[1]  # (at or before: itself)
    every_two = Schedule("fast", "*/2 * * * * *", THREE)  # (6 fields: seconds first)
    assert every_two.fires(at("2026-01-01 00:00:00"), at("2026-01-01 00:00:07")) == [
        at("2026-01-01 00:00:02"), at("2026-01-01 00:00:04"), at("2026-01-01 00:00:06")]


@pytest.mark.parametrize("fields, error", [
    (dict(cron="61 * * * *"), r"'61 \* \* \* \*' is not a cron expression \(Bad minute\)"),
    (dict(cron="every day"), "is not a cron expression"),
    (dict(timezone="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
    (dict(catchup="all"), "catchup 'all' is not one of skip, run_once"),
    (dict(name=""), "1 to 150 printable characters"),
    (dict(name="a\nb"), "1 to 150 printable characters"),
    (dict(params=[1]), "params must be a table"),
    (dict(params={"when": datetime.now()}), "params cannot be sent as JSON"),
    (dict(params={"x": float("nan")}), "params cannot be sent as JSON"),
    (dict(cron=["* * * * *"]), "cron must be a non-empty string"),
    (dict(entrypoint=["x"]), "entrypoint must be a non-empty string"),
    (dict(timezone=5), "timezone must be a non-empty string"),
    (dict(topic=5), "topic must be a string, not int"),
    (dict(topic=""), "is not a Kafka topic name"),
    (dict(topic="t" * 250), "is not a Kafka topic name"),
    (dict(topic="a/b"), "is not a Kafka topic name"),
    # cronsim reads a 6-field expression without Debian's DST rules: at set hours in a
    # zone with DST, a fire would run twice in autumn and never in spring
    (dict(cron="0 30 2 * * *", timezone="Europe/Paris"), "not DST-safe in Europe/Paris"),
])
def test_a_schedule_that_cannot_work_is_refused_saying_why(fields, error):
    with pytest.raises(ValueError, match=error):
        Schedule(**{"name": "s", "cron": "* * * * *", "entrypoint": THREE, **fields})


def test_6_fields_are_taken_where_dst_cannot_touch_them():
    for cron, zone in [("0 30 2 * * *", "UTC"), ("0 30 2 * * *", "Asia/Kolkata"),
                       ("*/10 * * * * *", "Europe/Paris"), ("0 0 * * * *", "Europe/Paris")]:
        Schedule("s", cron, THREE, timezone=zone)


@pytest.mark.parametrize("zone, cron, asked, expected", [
    # from a time inside the repeated hour (the second 02:00-03:00 of Paris, 25 October
    # 2026), cronsim's first answer is the fire an hour before: the next is a day on
    ("Europe/Paris", "30 2 * * *", "2026-10-25 01:10", "2026-10-26 01:30"),
    ("Europe/Paris", "15 1-3 * * *", "2026-10-25 01:20", "2026-10-25 02:15"),
    ("America/New_York", "30 1 * * *", "2026-11-01 06:10", "2026-11-02 06:30"),
])
def test_the_next_fire_is_after_the_time_asked_even_in_a_repeated_hour(
        zone, cron, asked, expected):
    schedule = Schedule("s", cron, THREE, timezone=zone)
    assert schedule.next_fire(at(asked)) == at(expected)
    assert schedule.fires(at(asked), at(expected)) == [at(expected)]


@pytest.mark.parametrize("zone, cron, until", [
    ("Europe/Paris", "30 2 * * *", "2026-10-25 04:11"),
    ("Europe/Paris", "30 2 * * *", "2026-03-29 06:00"),
    ("Pacific/Chatham", "*/7 2 * * *", "2026-04-05 15:00"),
    ("Pacific/Chatham", "*/7 2 * * *", "2026-09-27 15:00"),
    ("Australia/Lord_Howe", "0 2 * * *", "2026-10-04 18:00"),
    ("America/New_York", "0 2 * * *", "2026-03-08 12:00"),
])
def test_the_latest_fire_is_the_last_one_a_forward_search_gives(zone, cron, until):
    # (cronsim's reverse search gives the first of a repeated time, or a time its forward
    # search never gives: a run_once catch-up launched a stale fire, and a skip one
    # failed for hours)
    schedule = Schedule("s", cron, THREE, timezone=zone)
    for hours in (1, 2, 3, 5, 24, 49, 24 * 9):
        start = at(until) - hours * 3600
        forward = schedule.fires(start - 40 * 86400, at(until), most=None)
        assert schedule.latest(at(until)) == forward[-1], hours
        within = [f for f in forward if f > start]
        assert schedule.latest(at(until), after=start) == (within[-1] if within else None)
        until_before = forward[-1] - 1
        assert schedule.latest(until_before) == forward[-2]


def test_catching_up_across_a_dst_change_takes_the_latest_fire_and_fails_nothing(
        h, caplog):  # noqa: F811
    nightly = Schedule("nightly", "30 2 * * *", THREE, {"name": "n"},
                       timezone="Europe/Paris", catchup="run_once")
    chatham = Schedule("chatham", "*/7 2 * * *", THREE, {"name": "n"},
                       timezone="Pacific/Chatham")  # (its DST change is at 02:45/03:45)
    clock = Clock(at("2026-04-04 13:26"))
    scheduler = Scheduler(h.registry, [chatham], clock=clock)
    scheduler.tick()
    clock.now = at("2026-04-04 17:20")  # down ~4 h, back after the DST night
    while clock.now < at("2026-04-05 16:00"):
        scheduler.tick()
        assert scheduler.failures == []
        clock.now += 30
    assert sorted(launched(h)) == [f"schedule:chatham:{_iso(f)}" for f in chatham.fires(
        at("2026-04-05 00:00"), at("2026-04-05 16:00"), most=None)]
    assert len(launched(h)) == 9 and "failed" not in caplog.text
    clock.now = at("2026-10-23 12:00")
    scheduler = Scheduler(h.registry, [nightly], clock=clock)
    scheduler.tick()
    clock.now = at("2026-10-25 04:12")  # down 40 h: missed the 24th's and the 25th's
    scheduler.tick()
    assert "schedule:nightly:2026-10-25T00:30:00+00:00" in launched(h)  # (the latest)
    assert "schedule:nightly:2026-10-24T00:30:00+00:00" not in launched(h)
    assert state(h, "nightly").next_fire_at == at("2026-10-26 01:30")


def test_a_schedule_lacking_a_param_its_operation_requires_is_refused_at_start(
        h, monkeypatch):  # noqa: F811
    with pytest.raises(ValueError, match=re.escape(
            f"schedule 'x': Missing parameter: name (required by {THREE}): every launch "
            "would be refused")):
        Scheduler(h.registry, [Schedule("x", "* * * * *", THREE, {"other": 1})])

    class Defaults(tasks.ThreeSteps):  # (its postinit gives the param a default: taken)
        def postinit(self):
            self.params.setdefault("name", "default")

    monkeypatch.setitem(h.registry.controller.ENTRYPOINTS, Defaults.path, Defaults)
    Scheduler(h.registry, [Schedule("y", "* * * * *", Defaults.path, {"other": 1})])


def test_each_fire_is_launched_once_whatever_the_schedulers(h):  # noqa: F811
    clock = Clock(at("2026-11-23 10:00:30"))
    every_minute = Schedule("every-minute", "* * * * *", THREE, {"name": "n"})
    first = Scheduler(h.registry, [every_minute], name="a", clock=clock)
    second = Scheduler(h.registry, [every_minute], name="b", clock=clock)
    first.tick()  # (a new schedule starts from now: nothing before it is due)
    assert launched(h) == {}
    for minute in range(1, 6):
        clock.now = at(f"2026-11-23 10:0{minute}:05")
        (first if minute % 2 else second).tick()
        (second if minute % 2 else first).tick()
    keys = launched(h)
    assert sorted(keys) == [f"schedule:every-minute:2026-11-23T10:0{m}:00+00:00"
                            for m in range(1, 6)]
    # a scheduler that read the state before another launched (they ran at once): the
    # fire's key finds the operation launched, nothing starts twice
    done, _ = second._pass(every_minute, at("2026-11-23 10:04:30"), clock.now)
    assert done.launched == [(at("2026-11-23 10:05:00"),
                              keys["schedule:every-minute:2026-11-23T10:05:00+00:00"])]
    assert launched(h) == keys
    row = state(h, "every-minute")
    assert row.handled_until == clock.now and row.last_fire_at == at("2026-11-23 10:05:00")
    assert row.next_fire_at == at("2026-11-23 10:06:00")
    assert row.last_operation_id == keys["schedule:every-minute:2026-11-23T10:05:00+00:00"]
    with h.store.transaction() as tx:
        operation = tx.get_operation(row.last_operation_id)
    assert operation.metadata["schedule"] == {"name": "every-minute",
                                              "fire": "2026-11-23T10:05:00+00:00"}
    assert operation.params == {"name": "n"}


@pytest.mark.parametrize("catchup, expected", [
    ("skip", ["schedule:s:2026-11-23T15:00:00+00:00"]),
    ("run_once", ["schedule:s:2026-11-23T14:00:00+00:00",
                  "schedule:s:2026-11-23T15:00:00+00:00"]),
])
def test_fires_missed_while_no_scheduler_ran_follow_the_catchup_policy(
        h, catchup, expected, caplog):  # noqa: F811
    hourly = Schedule("s", "0 * * * *", THREE, {"name": "n"}, catchup=catchup)
    clock = Clock(at("2026-11-23 09:30:00"))
    scheduler = Scheduler(h.registry, [hourly], clock=clock)
    scheduler.tick()
    clock.now = at("2026-11-23 14:30:00")  # down from 09:30 to 14:30: 5 fires missed
    scheduler.tick()
    clock.now = at("2026-11-23 15:00:20")  # back: the next fire is on time
    scheduler.tick()
    assert sorted(launched(h)) == expected
    if catchup == "skip":
        assert ("schedule s missed 5 fire(s) from 2026-11-23T10:00:00+00:00 to "
                "2026-11-23T14:00:00+00:00 (no scheduler ran, or their launch kept failing): "
                "skipped") in caplog.text


def test_a_fire_whose_launch_failed_is_tried_again(h, monkeypatch):  # noqa: F811
    from cdumay_result import Result

    every_minute = Schedule("m", "* * * * *", THREE, {"name": "n"})
    clock = Clock(at("2026-11-23 10:00:30"))
    scheduler = Scheduler(h.registry, [every_minute], clock=clock)
    scheduler.tick()
    clock.now = at("2026-11-23 10:01:10")
    with monkeypatch.context() as patched:
        patched.setattr(tasks.ThreeSteps, "launch",
                        lambda self, topic=None, key=None: Result(retcode=503,
                                                                  stderr="store away"))
        scheduler.tick()
    assert launched(h) == {} and state(h, "m").handled_until < at("2026-11-23 10:01:00")
    clock.now = at("2026-11-23 10:01:20")  # (within its grace: still on time)
    scheduler.tick()
    assert list(launched(h)) == ["schedule:m:2026-11-23T10:01:00+00:00"]


def test_the_registry_declares_schedules_and_refuses_a_name_twice():
    from kser.sequencing.operation import Operation
    from kser.sequencing.registry import OperationRegistry

    registry = OperationRegistry()

    @registry.schedule("30 2 * * *", params={"day": "yesterday"}, timezone="Europe/Paris",
                       catchup="run_once")
    class Nightly(Operation):
        pass

    assert Nightly.registry is registry
    [nightly] = registry.schedules
    assert (nightly.name, nightly.entrypoint, nightly.params, nightly.catchup) == (
        Nightly.path, Nightly.path, {"day": "yesterday"}, "run_once")
    with pytest.raises(ValueError, match=r"a schedule is named .* already"):
        registry.schedule("0 * * * *")(Nightly)
    registry.schedule("0 * * * *", name="hourly")(Nightly)
    assert [s.name for s in registry.schedules] == [Nightly.path, "hourly"]
    with pytest.raises(ValueError, match=r"'no\.Such' is not registered in this registry"):
        Scheduler(registry, [Schedule("x", "* * * * *", "no.Such")])
    with pytest.raises(ValueError, match="names must be unique: x given twice"):
        Scheduler(registry, [Schedule("x", "* * * * *", Nightly.path)] * 2)


def test_a_schedules_file_is_read_and_its_mistakes_named(tmp_path):
    good = tmp_path / "schedules.toml"
    good.write_text('[[schedule]]\nname = "nightly"\ncron = "30 2 * * *"\n'
                    f'entrypoint = "{THREE}"\ntimezone = "Europe/Paris"\n'
                    'catchup = "run_once"\nparams = {name = "n"}\n')
    [nightly] = load_schedules(good)
    assert (nightly.timezone, nightly.params) == ("Europe/Paris", {"name": "n"})
    for text, error in [
            ('[[schedule]]\nname = "x"\ncron = "* * * * *"\n', "schedule 1 lacks entrypoint"),
            ('[[schedule]]\nname = "x"\ncron = "* * * * *"\nentrypoint = "e"\nevery = 1\n',
             "schedule 1 has unknown keys every"),
            ('[[schedule]]\nname = "x"\ncron = "* * *"\nentrypoint = "e"\n',
             "is not a cron expression"),
            ("[job]\n", "only \\[\\[schedule\\]\\] tables are expected"),
            ("schedule = [1, 2]\n", "schedule 1 is a int, not a \\[\\[schedule\\]\\] table"),
            ("schedule = [[1]]\n", "schedule 1 is a list"),
            ('[[schedule]]\nname = "x"\ncron = "* * * * *"\nentrypoint = ["e"]\n',
             "entrypoint must be a non-empty string"),
            ("not toml = = 1", "schedules.toml: "),
    ]:
        good.write_text(text)
        with pytest.raises(ValueError, match=error):
            load_schedules(good)
    with pytest.raises(ValueError, match="No such file"):
        load_schedules(tmp_path / "missing.toml")


def test_kser_scheduler_once_writes_the_next_runs_and_refuses_what_cannot_run(tmp_path):
    schedules = tmp_path / "s.toml"
    schedules.write_text(f'[[schedule]]\nname = "nightly"\ncron = "30 2 * * *"\n'
                         f'entrypoint = "{THREE}"\nparams = {{name = "n"}}\n')
    env = {**os.environ, "KSER_STORE_URL": f"sqlite:///{tmp_path}/s.db",
           "PYTHONPATH": str(ROOT)}

    def scheduler(*args):
        return subprocess.run([sys.executable, "-m", "kser.cli", "scheduler",
                               "tests.unit.tasks:registry", "--transport", "memory", *args],
                              capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)

    done = scheduler("--schedules", str(schedules), "--once")
    assert done.returncode == 0, done.stderr
    store = Store(f"sqlite:///{tmp_path}/s.db")
    with store.transaction() as tx:
        [row] = tx.list_schedules()
    store.close()
    assert row.name == "nightly" and row.next_fire_at > row.handled_until
    schedules.write_text('[[schedule]]\nname = "x"\ncron = "* * * * *"\n'
                         'entrypoint = "no.Such"\n')
    refused = scheduler("--schedules", str(schedules))
    assert refused.returncode == 1
    assert "schedule 'x': 'no.Such' is not registered in this registry" in refused.stderr
    empty = scheduler()
    assert empty.returncode == 1 and "no schedule: declare some" in empty.stderr


@pytest.mark.parametrize("cron, repeated", [
    ("30 * * * *", ["2026-10-25T00:30:00+00:00", "2026-10-25T01:30:00+00:00"]),
    ("*/20 * * * *", ["2026-10-25T00:00:00+00:00", "2026-10-25T00:20:00+00:00",
                      "2026-10-25T00:40:00+00:00", "2026-10-25T01:00:00+00:00",
                      "2026-10-25T01:20:00+00:00", "2026-10-25T01:40:00+00:00"]),
])
def test_a_wildcard_hour_runs_in_both_of_the_repeated_hours(h, cron, repeated):  # noqa: F811
    """Europe/Paris repeats 02:00-03:00 on 2026-10-25 (00:00-02:00 UTC); a scheduler
    passing every 20 s launches each fire of both, once."""
    schedule = Schedule("s", cron, THREE, {"name": "n"}, timezone="Europe/Paris")
    clock = Clock(at("2026-10-24 23:50:00"))
    scheduler = Scheduler(h.registry, [schedule], clock=clock)
    while clock.now < at("2026-10-25 02:05:00"):
        scheduler.tick()
        clock.now += 20
    fired = sorted(key.split(":", 2)[2] for key in launched(h))
    assert [f for f in fired if f < "2026-10-25T02:00"] == repeated
    if cron == "30 * * * *":  # (the latest fire before 01:45 UTC: the second 02:30)
        assert schedule.latest(at("2026-10-25 01:45:00")) == at("2026-10-25 01:30:00")


def test_a_clock_ahead_does_not_block_a_schedule_and_one_failing_schedule_no_other(
        h, monkeypatch, caplog):  # noqa: F811
    every_minute = Schedule("m", "* * * * *", THREE, {"name": "n"})
    broken = Schedule("broken", "* * * * *", "tests.unit.tasks.WithFlaky")
    real = at("2026-11-23 10:00:30")
    Scheduler(h.registry, [every_minute], name="ahead", clock=Clock(real + 2 * 86400)).tick()
    clock = Clock(real)
    scheduler = Scheduler(h.registry, [broken, every_minute], clock=clock)

    def refuse(*args, **kwargs):
        raise RuntimeError("this operation cannot be built")

    monkeypatch.setattr(tasks.WithFlaky, "__init__", refuse)
    scheduler.tick()
    assert "handled from now (is a scheduler's clock wrong?)" in caplog.text
    clock.now = at("2026-11-23 10:01:10")
    scheduler.tick()
    assert list(launched(h)) == ["schedule:m:2026-11-23T10:01:00+00:00"]
    assert scheduler.failures == ["broken"]
    assert "schedule broken failed (RuntimeError: this operation cannot be built)" in (
        caplog.text)


def test_a_key_held_by_another_entrypoint_is_no_launch(h, caplog):  # noqa: F811
    every_minute = Schedule("m", "* * * * *", THREE, {"name": "n"})
    # (a store where an older kser let a producer take a schedule's key)
    tasks.Routed(params={}).send(key=KserKey("schedule:m:2026-11-23T10:01:00+00:00"))
    clock = Clock(at("2026-11-23 10:00:30"))
    scheduler = Scheduler(h.registry, [every_minute], clock=clock)
    scheduler.tick()
    clock.now = at("2026-11-23 10:01:10")
    scheduler.tick()
    assert scheduler.failures == ["m"]
    assert "its key schedule:m:2026-11-23T10:01:00+00:00 names operation" in caplog.text
    assert state(h, "m").last_operation_id is None


def test_no_producer_may_take_a_schedule_s_key(h):  # noqa: F811
    with pytest.raises(ValidationError, match="kser keeps for its own keys"):
        tasks.Routed(params={}).send(key="schedule:m:2026-11-23T10:01:00+00:00")
    result = tasks.Routed(params={}).launch(key="message:x")
    assert result.retcode == 400 and "kser keeps for its own keys" in result.stderr
