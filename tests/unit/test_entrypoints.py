"""Entrypoint lifecycle, Task.log, Operation building and inline sequencing, the registry."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from cdumay_result import Result

from kser.entry import Entrypoint
from kser.sequencing.operation import Operation
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from tests.unit import tasks


@pytest.fixture(autouse=True)
def _clear_calls():
    tasks.CALLS.clear()


class Recorder(Task):
    """Records the order of its lifecycle hooks."""

    def __init__(self, *args, fail=False, **kwargs):
        self.hooks = []
        self.fail = fail
        super().__init__(*args, **kwargs)

    def postinit(self):
        self.hooks.append("postinit")

    def prerun(self):
        self.hooks.append("prerun")

    def run(self):
        self.hooks.append("run")
        if self.fail:
            raise RuntimeError("no luck")
        return Result(uuid=self.uuid, stdout="ran", retval={"x": 1})

    def postrun(self, result):
        self.hooks.append("postrun")
        return result

    def onsuccess(self, result):
        self.hooks.append("onsuccess")
        return result

    def onerror(self, result):
        self.hooks.append("onerror")
        return result


def test_lifecycle_order_on_success():
    task = Recorder(params={})
    result = task.execute()
    assert task.hooks == ["postinit", "prerun", "run", "postrun", "onsuccess"]
    assert (result.retcode, result.stdout, result.retval) == (0, "ran", {"x": 1})
    assert task.status == "SUCCESS"


def test_exception_becomes_a_result_and_onerror_runs():
    task = Recorder(fail=True)
    result = task.execute()
    assert task.hooks == ["postinit", "prerun", "run", "onerror"]
    assert result.retcode == 500
    assert result.stderr == "RuntimeError: no luck"
    assert task.status == "FAILED"
    with pytest.raises(RuntimeError):
        Recorder(fail=True).unsafe_execute()


def test_an_exception_without_a_message_is_named_by_its_type():
    class Hung(Task):
        def run(self):
            raise ConnectionResetError()

    assert Hung().execute().stderr == "ConnectionResetError"  # (not "Internal Error")


def test_an_async_run_has_the_same_lifecycle_in_a_thread_or_awaited():
    class Waits(Task):
        async def run(self):
            await asyncio.sleep(0)
            if self.params.get("fail"):
                raise RuntimeError("no luck")
            return Result(uuid=self.uuid, stdout="waited")

    def awaited(coroutine):  # (on a loop of its own: another test may leave one running
        with ThreadPoolExecutor(1) as pool:  # in this thread, as Playwright's does)
            return pool.submit(asyncio.run, coroutine).result()

    assert Waits().execute().stdout == "waited"  # (asyncio.run, or a thread of its own)

    async def inside_a_loop():  # (execute() called where a loop runs already)
        return Waits().execute().stdout

    assert awaited(inside_a_loop()) == "waited"
    assert awaited(Waits().execute_async()).stdout == "waited"
    failed = awaited(Waits(params={"fail": True}).execute_async())
    assert (failed.retcode, failed.stderr) == (500, "RuntimeError: no luck")


def test_missing_required_param_fails_before_run():
    task = tasks.Echo(params={})
    result = task.execute()
    assert result.retcode == 400
    assert "Missing parameter: text" in result.stderr
    assert tasks.CALLS == []


def test_retcode_over_300_is_a_failure():
    result = tasks.Refuse().execute()
    assert (result.retcode, result.stderr) == (409, "refused on purpose")


def test_postinit_error_is_reported_by_execute():
    class BadInit(Task):
        def postinit(self):
            raise ValueError("bad init")

        def run(self):  # pragma: no cover - must not run
            raise AssertionError("ran despite postinit failure")

    result = BadInit().execute()
    assert result.retcode == 500 and "bad init" in result.stderr


def test_run_must_return_a_result():
    class Wrong(Task):
        def run(self):
            return "done"

    result = Wrong().execute()
    assert result.retcode == 500 and "must return a cdumay_result.Result" in result.stderr


def test_not_implemented_run_says_so():
    assert "does not implement run()" in Task().execute().stderr


def test_forwarded_result_is_merged():
    task = tasks.Echo(params={"text": "b"}, result=Result(retval={"before": 1}))
    result = task.execute()
    assert result.retval == {"before": 1, "echoed": "b"}


def test_message_round_trip():
    task = tasks.Echo(params={"text": "x"}, metadata={"m": 1})
    kmsg = task.to_Message()
    assert kmsg.entrypoint == "tests.unit.tasks.Echo" == tasks.Echo.path
    again = tasks.Echo.from_Message(kmsg)
    assert (again.uuid, again.params, again.metadata) == (task.uuid, {"text": "x"}, {"m": 1})


def test_task_log_prefix_is_exact(caplog):
    task = tasks.Echo(uuid="t-1", params={"text": "x"})
    with caplog.at_level(logging.INFO, logger="kser.sequencing.task"):
        task.log("hello %s", logging.WARNING, "world")
    record = caplog.records[-1]
    assert record.getMessage() == "Echo.PENDING: tests.unit.tasks.Echo[t-1]: hello world"
    assert record.levelno == logging.WARNING
    assert record.kmsg["uuid"] == "t-1"


def test_operation_build_returns_the_operation_with_its_tasks():
    op = tasks.ThreeSteps(params={"name": "n"})
    assert op.build() is op  # build returns finalize(), i.e. the operation
    # every task receives the operation's params overlaid with its own
    assert [t.params for t in op.tasks] == [{"name": "n", "index": i} for i in range(3)]
    assert [t.status for t in op.tasks] == ["PENDING"] * 3


def test_required_fields_of_operation_and_tasks_are_checked_at_build():
    from cdumay_error.types import ValidationError

    with pytest.raises(ValidationError, match="Missing parameter: name"):
        tasks.ThreeSteps().build()
    with pytest.raises(ValidationError,
                       match=r"Missing parameter: text \(required by tests\.unit\.tasks\.Echo"):
        tasks.NeedsTaskParam().build()
    assert tasks.CALLS == []


def test_next_skips_succeeded_tasks():
    op = tasks.ThreeSteps(params={"name": "n"}).build()
    op.tasks[1].status = "SUCCESS"
    assert op.next(op.tasks[0]) is op.tasks[2]
    assert op.next(op.tasks[2]) is None


def test_new_and_add_task():
    op = Operation.new(params={"a": 1})
    op.add_task(tasks.Echo(params={"text": "x"}))
    assert op.params == {"a": 1} and len(op.tasks) == 1


def test_subscribe_returns_the_class_and_registries_are_separate():
    first, second = OperationRegistry(), OperationRegistry()

    @first.subscribe
    class OnlyInFirst(Task):
        pass

    assert isinstance(OnlyInFirst, type) and issubclass(OnlyInFirst, Entrypoint)
    assert OnlyInFirst.path in first.controller.ENTRYPOINTS
    assert OnlyInFirst.path not in second.controller.ENTRYPOINTS


def test_init_app_binds_flask_mounts_the_api_and_loads_tasks(monkeypatch):
    from flask import Flask

    monkeypatch.setenv("KSER_API_TOKENS", "admin:s3cret")
    loaded = []

    class Loading(OperationRegistry):
        def load_tasks(self):
            loaded.append(True)

    app = Flask(__name__)
    registry = Loading(app)
    assert app.extensions["kser"] is registry and registry.app is app and loaded == [True]
    assert app.test_client().get("/api/v1/health").status_code == 200


def test_init_app_refuses_an_api_without_tokens_unless_told(monkeypatch):
    from flask import Flask

    from kser.web import AuthConfigError

    monkeypatch.delenv("KSER_API_TOKENS", raising=False)
    monkeypatch.delenv("KSER_API_AUTH", raising=False)
    with pytest.raises(AuthConfigError, match="KSER_API_AUTH=none"):
        OperationRegistry(Flask(__name__))
    app = Flask(__name__)
    registry = OperationRegistry()
    registry.init_app(app, api=False)  # binding alone needs no token
    assert app.extensions["kser"] is registry
    assert app.test_client().get("/api/v1/health").status_code == 404


def test_message_class_decodes_records_and_kser_08_transport_still_works():
    from kser.controller import Controller
    from kser.schemas import Message

    class StampedMessage(Message):
        pass

    class Hello(Entrypoint):
        def run(self):
            return Result(uuid=self.uuid, stdout="hi")

    raw = Message(uuid="m1", entrypoint=Hello.path).dumps()
    seen = []

    class New(Controller):
        MESSAGE_CLASS = StampedMessage

        def onmessage(self, kmsg):
            seen.append(type(kmsg))
            return super().onmessage(kmsg)

    class Old(New):  # kser 0.8 code sets TRANSPORT
        MESSAGE_CLASS = Message
        TRANSPORT = StampedMessage

    for cls in (New, Old, Controller):
        controller = cls()
        controller.register(Hello.path, Hello)
        assert controller.handle(raw).result.retcode == 0
    assert seen == [StampedMessage, StampedMessage]
    assert Controller().message_class is Message
