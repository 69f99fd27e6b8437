"""The hook chain around a body (kser.middleware): each behaviour once, in order, for a
lone task and an operation's task alike."""

from contextlib import contextmanager

import pytest
from cdumay_result import Result

from kser import logs, middleware
from kser.pace import Pace
from kser.status import Status


class Recording(middleware.Middleware):
    def __init__(self, name, seen):
        self.name, self.seen = name, seen

    def enter(self, call):
        self.seen.append(f"enter {self.name}")
        return self.name

    def exit(self, call, token, error):
        self.seen.append(f"leave {token} ({call.status}, {type(error).__name__})")


def test_the_chain_runs_its_middleware_outside_in_around_the_body():
    seen = []
    chain = middleware.Chain([Recording("a", seen), Recording("b", seen)])
    call = middleware.Call(entrypoint="app.T", task_id="t", worker="w")

    def body():
        seen.append("body")
        call.ended(Status.SUCCESS, Result(uuid="t"))
        return 42

    assert chain.run(call, body) == 42
    assert seen == ["enter a", "enter b", "body", "leave b (SUCCESS, NoneType)",
                    "leave a (SUCCESS, NoneType)"]


def test_a_body_that_raises_passes_through_every_middleware_and_is_still_timed():
    pace = Pace()
    call = middleware.Call(entrypoint="app.T", task_id="t", worker="w", operation_id="op",
                           task_name="step", attempt=1)

    def body():
        raise RuntimeError("broken")

    seen = []
    chain = middleware.default(pace)
    chain.middleware.append(Recording("last", seen))
    with pytest.raises(RuntimeError, match="broken"):
        chain.run(call, body)
    assert seen == ["enter last", "leave last (FAILED, RuntimeError)"]
    assert call.took > 0 and pace.seconds == call.took
    assert call.trace_context is None  # (the span ends with a status only on a return)


def test_the_log_context_names_the_operation_s_task_or_the_lone_task(monkeypatch):
    fields = []

    @contextmanager
    def context(**given):
        fields.append(given)
        yield

    monkeypatch.setattr(logs, "context", context)
    chain = middleware.Chain([middleware.LogContext()])
    chain.run(middleware.Call(entrypoint="app.T", task_id="t", worker="w"), lambda: None)
    chain.run(middleware.Call(entrypoint="app.T", task_id="t", worker="w", operation_id="op",
                              task_name="step", attempt=2), lambda: None)
    assert fields == [dict(task_id="t", entrypoint="app.T"),
                      dict(operation_id="op", task_id="t", task_name="step", attempt=2,
                           entrypoint="app.T")]
