"""``kser ops`` against the real API app in process (tests/wsgi.py): what each command
prints, and the exit status a script branches on (0 done, 1 failed or refused, 2 usage
or connection error, 3 time ran out)."""

import json

import pytest
from click.testing import CliRunner

from kser import ops_cli
from kser.cli import main
from kser.client import Client
from kser.web import create_app
from tests.unit import tasks
from tests.unit.test_api import h  # noqa: F401 (the fixture)
from tests.wsgi import BASE, session_for


@pytest.fixture
def ops(h, monkeypatch):  # noqa: F811
    app = create_app(h.registry)
    monkeypatch.setattr(ops_cli, "_client", lambda url, token: Client(
        url, token=token, session=session_for(app)))

    def run(*args, token="adm-token"):
        return CliRunner().invoke(main, ["ops", *args, "--url", BASE,
                                         *(["--token", token] if token else [])])
    return run


def test_start_show_and_wait_for_an_operation(h, ops):  # noqa: F811
    started = ops("start", tasks.ThreeSteps.path, "-p", "name=n")
    assert started.exit_code == 0, started.output
    op_id = started.output.strip()
    assert ops("wait", op_id, "--timeout", "0.1").exit_code == 3  # nothing ran it yet
    h.drain()
    waited = ops("wait", op_id, "--timeout", "5")
    assert waited.exit_code == 0 and waited.output.strip() == f"{op_id} SUCCESS"
    shown = ops("show", op_id)
    assert shown.exit_code == 0
    for text in ("SUCCESS", "Step-2", "Step-3", "step 2", tasks.ThreeSteps.path):
        assert text in shown.output
    as_json = json.loads(ops("show", op_id, "--json").output)
    assert [t["name"] for t in as_json["tasks"]] == ["Step", "Step-2", "Step-3"]
    listed = ops("ls")
    assert op_id in listed.output and "SUCCESS" in listed.output
    assert [op["id"] for op in json.loads(ops("ls", "--json").output)] == [op_id]


def test_a_failed_operation_exits_1_and_recovers(h, ops):  # noqa: F811
    op_id = ops("start", tasks.WithFlaky.path).output.strip()
    h.drain()
    assert ops("wait", op_id).exit_code == 1
    logs = ops("logs", op_id, "FlakyStep")
    assert logs.exit_code == 0 and "[attempt 1]" in logs.output and "attempt 1" in logs.output
    tasks.FLAKY["fail"] = False
    recovered = ops("recover", op_id)
    assert recovered.exit_code == 0 and op_id in recovered.output
    refused = ops("recover", op_id)
    assert refused.exit_code == 1 and "RUNNING" in refused.output
    h.drain()
    watched = ops("watch", op_id, "--interval", "0.1")
    assert watched.exit_code == 0 and op_id[:8] in watched.output
    assert ops("run-one", op_id, "FlakyStep").exit_code == 0
    h.drain()
    assert ops("run-from", op_id, "Step").exit_code == 0
    h.drain()
    assert ops("wait", op_id, "--json").exit_code == 0


def test_cancel_and_the_refusals_exit_statuses(h, ops):  # noqa: F811
    op_id = ops("start", tasks.ThreeSteps.path, "--params", '{"name": "n"}').output.strip()
    assert ops("cancel", op_id, token="read-token").exit_code == 2  # 403: not this token
    assert ops("show", op_id, token=None).exit_code == 2  # 401
    canceled = ops("cancel", op_id)
    assert canceled.exit_code == 0, canceled.output
    assert ops("wait", op_id).exit_code == 1  # CANCELED
    assert ops("show", "no-such-id").exit_code == 1  # 404
    missing = ops("start", tasks.ThreeSteps.path)
    assert missing.exit_code == 2 and "params.name" in missing.output
    assert ops("start", tasks.ThreeSteps.path, "--params", "{not json").exit_code == 2
    assert ops("start", tasks.ThreeSteps.path, "-p", "novalue").exit_code == 2


def test_entrypoints_and_an_unreachable_api(ops):
    listed = ops("entrypoints", token="read-token")
    assert listed.exit_code == 0 and tasks.ThreeSteps.path in listed.output
    unreachable = CliRunner().invoke(main, ["ops", "ls", "--url", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 2 and "cannot reach the kser API" in unreachable.output


def test_start_wait_prints_the_ended_operation_and_exits_from_its_status(h, ops, monkeypatch):  # noqa: F811
    from kser import client as client_module

    monkeypatch.setattr(client_module, "POLL_INTERVAL", (0.01, 0.01))
    timed_out = ops("start", tasks.ThreeSteps.path, "-p", "name=n", "--wait", "0.05")
    assert timed_out.exit_code == 3 and "RUNNING" in timed_out.output


def test_values_are_shown_as_they_are_never_as_markup(h, ops):  # noqa: F811
    op_id = ops("start", tasks.ThreeSteps.path, "-p", "name=[/tmp/x] [bold]daily").output.strip()
    h.drain()
    shown = ops("show", op_id)
    assert shown.exit_code == 0, shown.output
    assert "[/tmp/x] [bold]daily" in shown.output


def test_ls_and_the_api_show_the_schedules_next_runs(h, ops):  # noqa: F811
    from datetime import datetime

    from kser.sequencing.schedules import Schedule, Scheduler

    assert "SCHEDULE" not in ops("ls").output  # (none yet: no table)
    nightly = Schedule("nightly", "30 2 * * *", tasks.ThreeSteps.path, {"name": "n"},
                       timezone="Europe/Paris")
    Scheduler(h.registry, [nightly], name="sched-1").tick()
    listed = ops("ls")
    assert listed.exit_code == 0, listed.output
    assert "nightly" in listed.output and "30 2 * * * (Europe/Paris)" in listed.output
    [shown] = json.loads(ops("schedules", "--json").output)
    runs = [datetime.fromisoformat(run) for run in shown["next_runs"]]
    assert len(runs) == 3 and runs == sorted(runs) and runs[0] > datetime.now(runs[0].tzinfo)
    assert {run.astimezone(nightly.zone).strftime("%H:%M") for run in runs} == {"02:30"}
    assert shown["active"] is True
    assert (shown["scheduler"], shown["catchup"], shown["last_run"]) == ("sched-1", "skip",
                                                                         None)
