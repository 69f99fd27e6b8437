"""Log lines carry what they are about: the task running in their thread (operation,
task id and name, attempt, entrypoint) and the worker; --log-format json writes one
JSON object a line with those as fields, the text format stays as it was."""

import json
import logging
import subprocess
import sys
import threading

import pytest

from kser import logs
from tests.unit import tasks
from tests.unit.test_sequencing import Harness

SECRET = "sk_live_not_to_be_logged"


class Lines(logging.Handler):
    """Formatted lines, as the CLI's handler writes them."""

    def __init__(self, log_format):
        super().__init__(logging.INFO)
        self.setFormatter(logs.formatter(log_format))
        self.addFilter(logs.ContextFilter())
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines():
    handler, root = Lines("json"), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


def test_a_line_logged_in_a_context_carries_its_fields_and_none_outside(
        json_lines, monkeypatch):
    monkeypatch.setattr(logs, "_process", {})
    logs.set_process_fields(worker="host:42")  # (the worker command's name)
    logger = logging.getLogger("tests.logs")
    with logs.context(operation_id="op-1", task_id="t-1", attempt=2, task_name=None):
        logger.info("inside")
        with logs.context(task_name="fetch"):
            logger.info("nested")
        thread = threading.Thread(target=logger.info, args=("other thread",))
        thread.start()
        thread.join(5)
    logger.info("outside", extra={"task_id": "given"})
    inside, nested, other, outside = (json.loads(line) for line in json_lines)
    assert inside["message"] == "inside" and inside["level"] == "INFO"
    assert (inside["operation_id"], inside["task_id"], inside["attempt"]) == ("op-1", "t-1", 2)
    assert "task_name" not in inside  # (None: left out)
    assert nested["task_name"] == "fetch" and nested["task_id"] == "t-1"
    assert "task_id" not in other  # a thread has its own context
    assert outside["task_id"] == "given" and "operation_id" not in outside
    assert {line["worker"] for line in (inside, nested, other, outside)} == {"host:42"}


def test_the_lines_a_task_body_logs_name_its_operation_task_and_attempt(
        memory_broker_name, tmp_path, monkeypatch, json_lines):
    tasks.CALLS.clear()
    h = Harness(memory_broker_name, f"sqlite:///{tmp_path}/store.db", monkeypatch)
    try:
        op = tasks.ThreeSteps(params={"name": "n", "api_key": SECRET}).send()
        h.drain()
        task_rows = h.operation(op.uuid)[1]
    finally:
        h.store.close()
    successes = [line for line in map(json.loads, json_lines)
                 if line["logger"] == "kser.entry" and ".Success" in line["message"]
                 and line.get("operation_id") == op.uuid]
    assert [(line["task_id"], line["task_name"], line["attempt"], line["entrypoint"])
            for line in successes] == [
        (row["id"], row["name"], 1, "tests.unit.tasks.Step") for row in task_rows]
    # params, metadata and results are not logged (a JSON line prints every extra: the
    # message and result were in each, a secret param and a megabyte of result included)
    assert all(SECRET not in line for line in json_lines)
    assert [(line["kmsg"], line["kresult"]) for line in successes] == [
        ({"uuid": row["id"], "entrypoint": "tests.unit.tasks.Step"}, {"retcode": 0})
        for row in task_rows]


def test_an_end_line_shows_the_task_s_output_cut_never_its_params(
        memory_broker_name, json_lines):
    from kser.memory.consumer import Consumer
    from kser.memory.producer import Producer
    from kser.schemas import Message

    producer = Producer({"broker": memory_broker_name})
    for uuid, entrypoint, text in [("t-1", tasks.Echo.path, "hi"),
                                   ("t-2", tasks.Refuse.path, "hi"),
                                   ("t-3", tasks.Echo.path, "x" * 100_000)]:
        key, value = producer.encode(Message(uuid=uuid, entrypoint=entrypoint,
                                             params={"text": text, "api_key": SECRET}))
        producer.send_raw("lone", value, key, [])
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["lone"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert all(SECRET not in line for line in json_lines)  # (a param: never logged)
    ends = [line["message"] for line in map(json.loads, json_lines)
            if ".Success" in line["message"] or ".Failed" in line["message"]]
    long = "x" * 500 + "… (99500 more characters)"  # (its output, cut)
    assert sorted(ends) == [
        "Controller.Failed: tests.unit.tasks.Refuse[t-2]: refused on purpose",
        "Controller.Success: tests.unit.tasks.Echo[t-1]: hi",
        f"Controller.Success: tests.unit.tasks.Echo[t-3]: {long}",
        "Echo.Success: tests.unit.tasks.Echo[t-1]: hi",
        f"Echo.Success: tests.unit.tasks.Echo[t-3]: {long}",
        "Refuse.Failed: tests.unit.tasks.Refuse[t-2]: refused on purpose"]


def test_a_task_log_line_takes_logging_s_arguments_and_never_fails_the_task():
    task = tasks.Echo(uuid="t-1", params={"text": "x"})
    task.log("a=%(a)s", logging.INFO, {"a": 1})  # (one mapping: logging's named form)
    task.log("%s and %s", logging.INFO, "one")  # (too few: kept as given, not raised)
    task.log("%c", logging.INFO, 10**9)  # (OverflowError)

    class Unshowable:
        def __str__(self):
            raise RuntimeError("no")

        __repr__ = __str__

    task.log("%s", logging.INFO, Unshowable())
    assert [line[2].rsplit("]: ", 1)[1] for line in task.log_lines] == [
        "a=1", "%s and %s ('one',)", "%c (1000000000,)", "%s (args that cannot be shown)"]


def test_the_text_format_is_unchanged():
    record = logging.LogRecord("kser", logging.INFO, __file__, 1, "hello", None, None)
    record.task_id = "t-1"
    assert logs.formatter("text").format(record).endswith(" INFO     hello")
    with pytest.raises(ValueError, match="unknown log format 'xml': use one of text, json"):
        logs.formatter("xml")


def test_the_command_line_writes_json_lines_and_refuses_an_unknown_format(tmp_path):
    command = [sys.executable, "-m", "kser.cli", "--log-format", "json", "demo", "--dice",
               "1", "--store-url", f"sqlite:///{tmp_path}/demo.db"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    rolled = [line for line in lines if "rolled a" in line["message"]]
    assert rolled and {"operation_id", "task_id", "task_name", "attempt",
                       "entrypoint"} <= rolled[0].keys()
    refused = subprocess.run([sys.executable, "-m", "kser.cli", "demo"], capture_output=True,
                             text=True, timeout=60, env={"KSER_LOG_FORMAT": "xml",
                                                         "PATH": "/usr/bin:/bin"})
    assert refused.returncode != 0
    assert "KSER_LOG_FORMAT: unknown log format 'xml'" in refused.stderr
