"""kser.tasks: PythonTask, ShellTask (HttpTask against a real server: tests/integration)."""

import sys
import time

import pytest
from cdumay_error.types import ValidationError

from kser.schemas import Message
from kser.sequencing import Operation
from kser.tasks import PythonTask, ShellTask
from tests.unit import tasks
from tests.unit.test_sequencing import Harness

registry = tasks.registry
CALLED: list[tuple] = []


def add(a, b, scale=1):
    CALLED.append((a, b, scale))
    return {"sum": (a + b) * scale}


def answer():
    return 42


@registry.subscribe
class Builtins(Operation):
    def build_tasks(self, **kwargs):
        return [PythonTask(add, 2, 3, scale=10, name="add"),
                PythonTask(answer, name="answer"),
                ShellTask([sys.executable, "-c", "import sys; print('out'); "
                           "print('err', file=sys.stderr)"], name="shell")]


@registry.subscribe
class FailingShell(Operation):
    def build_tasks(self, **kwargs):
        return [ShellTask([sys.executable, "-c", kwargs["code"]], timeout=kwargs.get("timeout"),
                          name="shell")]


@pytest.fixture
def h(memory_broker_name, tmp_path, monkeypatch):
    CALLED.clear()
    harness = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    yield harness
    harness.store.close()


def test_built_in_tasks_run_in_an_operation_with_what_the_store_says(h):
    op = Builtins().send()
    h.drain()
    row, task_rows = h.operation(op.uuid)
    assert row.status == "SUCCESS", row.result
    assert CALLED == [(2, 3, 10)]
    assert task_rows[0].params == {"function": "tests.unit.test_builtin_tasks:add",
                                   "args": [2, 3], "kwargs": {"scale": 10}}
    assert task_rows[0].result["retval"]["sum"] == 50
    assert task_rows[1].result["retval"]["return"] == 42
    shell = task_rows[2].result
    assert shell["stdout"] == "out\n" and shell["stderr"] == "err\n"
    assert shell["retval"]["exit_code"] == 0


def test_a_command_that_fails_or_overruns_fails_its_task_and_is_killed(h):
    op = FailingShell(params={"code": "import sys; print('bad', file=sys.stderr); "
                                      "sys.exit(3)"}).send()
    h.drain()
    row, _ = h.operation(op.uuid)
    assert row.status == "FAILED" and row.result["retcode"] == 500
    assert row.result["retval"]["exit_code"] == 3
    assert " exited with 3: bad" in row.result["stderr"]

    started = time.monotonic()
    # the command starts a child that would outlive it; both are killed at the timeout
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(30)']); time.sleep(30)")
    op = FailingShell(params={"code": code, "timeout": 0.5}).send()
    h.drain()
    assert time.monotonic() - started < 10
    row, _ = h.operation(op.uuid)
    assert row.status == "FAILED" and row.result["retcode"] == 504
    assert "killed after its 0.5 s timeout" in row.result["stderr"]


def test_a_built_in_task_sent_alone_runs_nothing(h):
    from kser.memory.producer import Producer

    Producer({"broker": h.broker.name}).send("ops", Message(
        "lone", ShellTask.path, params={"command": ["touch", "/tmp/kser-should-not-exist"]}))
    h.drain()
    (letter,) = h.broker.records("ops.dlq")
    assert b"is not registered on this consumer" in dict(letter.headers)["kser-error"]


def test_a_built_in_task_run_outside_an_operation_refuses(h):
    result = ShellTask(["true"]).execute()
    assert result.retcode == 400
    assert "runs only as a task of an operation" in result.stderr


def test_python_task_needs_an_importable_function_and_shell_task_an_argv_list():
    with pytest.raises(ValidationError, match="not a lambda, a nested function or __main__"):
        PythonTask(lambda: 1)
    with pytest.raises(ValidationError, match=r"a command is an argv list, e\.g\. "
                       r"\['ls', '-l'\]; pass shell=True"):
        ShellTask("ls -l")
    assert ShellTask("ls -l | wc -l", shell=True).params["shell"] is True
