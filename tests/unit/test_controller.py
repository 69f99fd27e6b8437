"""Controller.run never raises, and only registered entrypoints can run."""

import sys

import pytest

from kser.controller import Controller
from kser.schemas import Message
from kser.sequencing.task import Task
from tests.unit import tasks


def message(entrypoint, **params):
    return Message(uuid="m-1", entrypoint=entrypoint, params=params).dumps().encode()


@pytest.fixture(autouse=True)
def _clear_calls():
    tasks.CALLS.clear()


def test_runs_a_registered_task():
    result = tasks.registry.controller.run(message(tasks.Echo.path, text="hi"))
    assert (result.retcode, result.stdout) == (0, "hi")
    assert tasks.CALLS == ["hi"]


@pytest.mark.parametrize("raw, expected", [
    (b"", "Empty record"),
    (b"\xc3\x28", "not valid UTF-8"),
    (b"{", "not valid JSON"),
    (b"42", "must be a JSON object"),
    (b'{"uuid": "u"}', "entrypoint: Missing data"),
])
def test_bad_records_give_a_clear_result(raw, expected):
    outcome = tasks.registry.controller.handle(raw)
    assert outcome.undeliverable
    assert outcome.result.retcode >= 300 and expected in outcome.result.stderr


def test_unknown_entrypoint_is_refused_saying_how_many_are_registered_and_where_to_look():
    outcome = tasks.registry.controller.handle(message("os.system", command="true"))
    assert outcome.undeliverable and outcome.result.retcode == 404
    assert "Entrypoint 'os.system' is not registered" in outcome.result.stderr
    count = len(tasks.registry.controller.ENTRYPOINTS)
    assert f"({count} are: the worker's start-up log lists them)" in outcome.result.stderr
    assert tasks.Echo.path not in outcome.result.stderr  # one error line, not the registry


def test_a_message_cannot_import_anything(monkeypatch):
    """An entrypoint name is a dictionary key, never a module path kser imports."""
    monkeypatch.delitem(sys.modules, "antigravity", raising=False)
    result = tasks.registry.controller.run(message("antigravity.fly"))
    assert result.retcode == 404
    assert "antigravity" not in sys.modules


def test_task_failures_are_results_but_not_undeliverable():
    outcome = tasks.registry.controller.handle(message(tasks.Boom.path))
    assert not outcome.undeliverable
    assert outcome.result.retcode == 500 and "KeyError" in outcome.result.stderr


def test_controllers_do_not_share_entrypoints():
    first, second = Controller(), Controller()
    first.register(tasks.Echo.path, tasks.Echo)
    assert tasks.Echo.path not in second.ENTRYPOINTS
    assert second.run(message(tasks.Echo.path, text="x")).retcode == 404


def test_register_refuses_what_is_not_an_entrypoint():
    from cdumay_error.types import ValidationError

    with pytest.raises(ValidationError, match=r"not a subclass of kser\.entry\.Entrypoint"):
        Controller().register("x", dict)


def test_class_level_entrypoints_of_a_subclass_are_copied():
    class Mine(Controller):
        ENTRYPOINTS = {tasks.Echo.path: tasks.Echo}

    one, two = Mine(), Mine()
    one.register("other", Task)
    assert "other" not in two.ENTRYPOINTS and tasks.Echo.path in two.ENTRYPOINTS


def test_hooks_see_every_message():
    seen = []

    class Hooked(Controller):
        def onmessage(self, kmsg):
            seen.append(("message", kmsg.uuid))
            return kmsg

        def onerror(self, kmsg, result):
            seen.append(("error", kmsg and kmsg.uuid))
            return result

    controller = Hooked()
    controller.run(message("nothing.Here"))
    controller.run(b"junk")
    assert seen == [("message", "m-1"), ("error", "m-1"), ("error", None)]


def test_a_failing_user_hook_is_a_result_not_an_exception():
    class BrokenHooks(Controller):
        def onsuccess(self, kmsg, result):
            raise RuntimeError("hook bug")

    controller = BrokenHooks()
    controller.register(tasks.Echo.path, tasks.Echo)
    result = controller.run(message(tasks.Echo.path, text="x"))
    assert result.retcode == 500 and "hook bug" in result.stderr
