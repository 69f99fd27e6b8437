"""The kser command, on the in-process transport (no broker)."""

import pytest
from click.testing import CliRunner

from kser import __version__
from kser.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_version(runner):
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_demo_rolls_three_dice_each_a_task_of_its_own(runner, tmp_path):
    result = runner.invoke(main, ["--log-level", "WARNING", "demo", "--store-url",
                                  f"sqlite:///{tmp_path}/demo.db"])
    assert result.exit_code == 0, result.output
    assert "kser.demo.DiceLaunch[" in result.output and "]: SUCCESS" in result.output
    assert result.output.count("kser.demo.DiceRoll[") == 3
    assert result.output.count(": SUCCESS (attempt 1, worker ") == 3
    rolls = result.output.split("rolled 3 dice: ")[1].split(" (total")[0].split(", ")
    assert len(rolls) == 3 and all(1 <= int(r) <= 6 for r in rolls)


@pytest.mark.parametrize("args, message", [
    (["worker", "no_such_module:registry", "--topic", "t"],
     "kser: cannot import module 'no_such_module'"),
    (["worker", "tests.unit.tasks", "--topic", "t"], "is not MODULE:REGISTRY"),
    (["worker", "tests.unit.tasks:nothing", "--topic", "t"], "has no attribute 'nothing'"),
    (["worker", "tests.unit.tasks:CALLS", "--topic", "t"],
     "is a list, not an OperationRegistry or a Controller"),
    (["send", "a.B", "--topic", "t", "--params", "{bad"], "--params is not valid JSON"),
    (["send", "a.B", "--topic", "t", "--params", "[1]"], "--params must be a JSON object"),
    # --registry checks the entrypoint and its required params before anything is sent
    (["send", "tests.unit.tasks.Ech", "--topic", "t", "--registry", "tests.unit.tasks:registry"],
     "kser: tests.unit.tasks.Ech is not registered in tests.unit.tasks:registry; did you mean "
     "tests.unit.tasks.Echo"),
    (["send", "x.Y", "--topic", "t", "--registry", "tests.unit.tasks:registry"],
     "kser: x.Y is not registered in tests.unit.tasks:registry (it has: "),
    (["send", "tests.unit.tasks.Echo", "--topic", "t", "--registry", "tests.unit.tasks:registry"],
     "kser: tests.unit.tasks.Echo requires the param(s) text: give them in --params"),
    (["send", "tests.unit.tasks.Echo", "--topic", "t", "--params", '{"text": "x"}', "--wait",
      "--registry", "tests.unit.tasks:registry"],
     "kser: --wait waits for operations, and tests.unit.tasks.Echo is a Task"),
    # a store URL kser cannot use is one line naming what it can, whatever the command
    (["demo", "--store-url", "mysql://u:secret@h/db"],
     "kser: the store URL mysql://u:***@h/db names mysql, which kser does not store in: use "
     "SQLite, sqlite:///path/to/kser.db"),
    (["purge", "--store-url", "mysql://u:secret@h/db"], "names mysql, which kser does not"),
    (["demo", "--store-url", "bogus"], "kser: the store URL 'bogus' is not a database URL"),
    (["purge", "--store-url", "postgresql+asyncpg://h/db"],
     "names the driver asyncpg: kser uses psycopg 3"),
    (["purge", "--store-url", "sqlite://"], "is an in-memory SQLite database, which each"),
    (["purge", "--store-url", "postgresql+psycopg2://h/db"], "names the driver psycopg2"),
    (["topics", "describe", "t", "--transport", "memory"],
     "the memory transport lives inside one process"),
])
def test_errors_are_one_line_and_non_zero(runner, args, message):
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_demo_keeps_its_state_in_the_state_folder_and_says_where(runner, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["--log-level", "WARNING", "demo"])
    assert result.exit_code == 0, result.output
    assert "state kept in sqlite:///.kser/demo.db" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".kser"]  # nothing else here
    assert (tmp_path / ".kser" / "demo.db").exists()


def test_the_state_folder_is_ignored_by_git():
    from tests.unit.test_docs import ROOT

    assert "/.kser/" in (ROOT / ".gitignore").read_text().splitlines()


def test_send_count_and_wait_for_the_operations_end(runner, tmp_path, monkeypatch):
    from tests.unit import tasks

    monkeypatch.setenv("KSER_STORE_URL", f"sqlite:///{tmp_path}/wait.db")
    # a worker of the same process and store runs what the command sends, meanwhile
    import threading

    from kser.memory.consumer import Consumer
    from kser.store import Store

    monkeypatch.setattr(tasks.registry.context, "_store", Store(f"sqlite:///{tmp_path}/wait.db"))
    consumer = Consumer({"group_id": "wait"}, ["cli-wait"])
    consumer.REGISTRY = tasks.registry.controller
    worker = threading.Thread(target=consumer.run, kwargs={"until_idle": False})
    worker.start()
    try:
        result = runner.invoke(main, ["send", tasks.ThreeSteps.path, "--topic", "cli-wait",
                                      "--transport", "memory", "--count", "3", "--wait",
                                      "--params", '{"name": "w"}', "--timeout", "30"])
    finally:
        consumer.stop()
        worker.join(30)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith(" SUCCESS") for line in lines)


def test_send_wait_says_when_nothing_ran(runner, tmp_path, monkeypatch):
    from kser.store import Store

    monkeypatch.setenv("KSER_STORE_URL", f"sqlite:///{tmp_path}/none.db")
    missing = runner.invoke(main, ["send", "a.Op", "--topic", "cli-nobody", "--transport",
                                   "memory", "--wait", "--timeout", "1"])
    assert missing.exit_code == 1
    assert missing.output.strip().endswith(
        f"--wait reads the store the workers use, and sqlite:///{tmp_path}/none.db does "
        "not exist (waited 1 s for a worker to create it): set KSER_STORE_URL to theirs")
    Store(f"sqlite:///{tmp_path}/none.db").close()  # a store, where no worker writes
    result = runner.invoke(main, ["send", "a.Op", "--topic", "cli-nobody", "--transport",
                                  "memory", "--wait", "--timeout", "1"])
    assert result.exit_code == 1
    assert result.output.splitlines()[0].endswith(" NOT ENDED")
    assert "1 operation(s) did not end within 1 s (--timeout)" in result.output


def test_send_wait_waits_for_the_store_its_workers_are_creating(runner, tmp_path,
                                                                monkeypatch):
    """A worker started in the background just before creates the store as it starts:
    --wait waits for it to appear instead of refusing at once (the README's quickstart
    raced it)."""
    import threading

    from kser.store import Store

    url = f"sqlite:///{tmp_path}/later.db"
    monkeypatch.setenv("KSER_STORE_URL", url)
    threading.Timer(0.5, lambda: Store(url).close()).start()
    result = runner.invoke(main, ["send", "a.Op", "--topic", "cli-nobody", "--transport",
                                  "memory", "--wait", "--timeout", "2"])
    assert "does not exist" not in result.output
    assert "1 operation(s) did not end within 2 s (--timeout)" in result.output
    assert "are workers running on cli-nobody with this store" in result.output


def test_send_creates_a_missing_topic_with_kser_partitions(runner, monkeypatch):
    from kser.memory.broker import get_broker

    monkeypatch.setenv("KSER_PARTITIONS", "5")
    result = runner.invoke(main, ["send", "a.B", "--topic", "cli-parts", "--transport",
                                  "memory", "--count", "2"])
    assert result.exit_code == 0, result.output
    assert len(get_broker("default").partition_ends("cli-parts")) == 5
    assert len(result.output.split()) == 2  # two uuids


def test_send_and_worker_on_the_memory_transport(runner):
    sent = runner.invoke(main, ["send", "tests.unit.tasks.Echo", "--topic", "cli-t",
                                "--transport", "memory", "--params", '{"text": "from cli"}'])
    assert sent.exit_code == 0, sent.output
    from tests.unit import tasks

    tasks.CALLS.clear()
    ran = runner.invoke(main, ["worker", "tests.unit.tasks:registry", "--topic", "cli-t",
                               "--transport", "memory"])
    # on the memory transport the worker returns once its topics are drained
    assert ran.exit_code == 0, ran.output
    assert tasks.CALLS == ["from cli"]


def test_send_refuses_a_message_over_the_size_limit(runner, monkeypatch):
    monkeypatch.setenv("KSER_MAX_MESSAGE_BYTES", "100")
    result = runner.invoke(main, ["send", "a.B", "--topic", "t", "--transport", "memory",
                                  "--params", '{"blob": "' + "x" * 200 + '"}'])
    assert result.exit_code == 1 and "over the 100-byte limit" in result.output


def test_purge_applies_retention(runner, tmp_path):
    import time

    from kser.store import Store

    url = f"sqlite:///{tmp_path}/purge.db"
    store = Store(url)
    with store.transaction() as tx:
        for op_id, ttl in (("old", {"seconds_after_success": 10}), ("kept", None)):
            tx.insert_operation(dict(id=op_id, entrypoint="x.Op", status="SUCCESS", params={},
                                     metadata={}, topic="t", ttl_strategy=ttl,
                                     created_at=time.time() - 100,
                                     updated_at=time.time() - 100,
                                     finished_at=time.time() - 100))
    result = runner.invoke(main, ["purge", "--store-url", url])
    assert result.exit_code == 0 and "purged 1 operation(s)" in result.output
    with store.transaction() as tx:
        assert tx.get_operation("old") is None and tx.get_operation("kept") is not None
    store.close()


def test_purge_with_a_bad_store_is_one_line(runner, tmp_path):
    result = runner.invoke(main, ["purge", "--store-url", "postgresql+psycopg://x@127.0.0.1:9/x"])
    assert result.exit_code == 1 and result.output.startswith("kser: the store ")
    assert len(result.output.strip().splitlines()) == 1


def test_dlq_list_and_replay(runner):
    from kser.memory.broker import get_broker

    broker = get_broker("default")
    before = len(broker.records("cli-dlq"))
    broker.produce("cli-dlq.dlq", b'{"uuid": "u", "entrypoint": "app.Fixed"}', key=b"k",
                   headers=[("kser-error", b"Entrypoint 'app.Fixed' is not registered"),
                            ("kser-source-topic", b"cli-dlq"), ("kser-source-partition", b"0"),
                            ("kser-source-offset", b"4"), ("trace", b"abc")])
    listed = runner.invoke(main, ["dlq", "list", "cli-dlq", "--transport", "memory",
                                  "--wait", "0.5"])
    assert listed.exit_code == 0, listed.output
    assert "from cli-dlq[0]@4: Entrypoint 'app.Fixed' is not registered" in listed.output
    assert "1 dead letter(s) in cli-dlq.dlq" in listed.output

    replayed = runner.invoke(main, ["dlq", "replay", "cli-dlq", "--transport", "memory",
                                    "--wait", "0.5"])
    assert replayed.exit_code == 0 and "replayed 1 dead letter(s)" in replayed.output
    [back] = broker.records("cli-dlq")[before:]
    assert back.value == b'{"uuid": "u", "entrypoint": "app.Fixed"}' and back.key == b"k"
    assert back.headers[0] == ("trace", b"abc")  # kser's dead-letter headers are dropped
    assert [name for name, _ in back.headers[1:]] == ["kser-replayed-by"]
    again = runner.invoke(main, ["dlq", "replay", "cli-dlq", "--transport", "memory",
                                 "--wait", "0.5"])
    assert "replayed 0 dead letter(s)" in again.output  # each dead letter is replayed once


def test_keygen_and_a_bad_key_is_one_line(runner, monkeypatch):
    key = runner.invoke(main, ["keygen"]).output.strip()
    import base64

    assert len(base64.b64decode(key)) == 32
    monkeypatch.setenv("KSER_SECRET_KEYS", "AAAA")
    result = runner.invoke(main, ["send", "a.B", "--topic", "t", "--transport", "memory"])
    assert result.exit_code == 1
    assert result.output.strip() == "kser: KSER_SECRET_KEYS key #1 has 3 bytes, not 32"


def test_serve_says_in_one_line_what_keeps_it_from_starting(monkeypatch):
    from click.testing import CliRunner

    from kser.cli import main

    monkeypatch.setenv("KSER_API_TOKENS", "")
    monkeypatch.delenv("KSER_API_AUTH", raising=False)
    no_token = CliRunner().invoke(main, ["serve", "tests.unit.tasks:registry"])
    assert no_token.exit_code == 1 and "has no token" in no_token.output
    monkeypatch.setenv("KSER_API_TOKENS", "admin:x")
    missing = CliRunner().invoke(main, ["serve", "no_such_module_here:registry"])
    assert missing.exit_code == 1
    assert "cannot serve 'no_such_module_here:registry'" in missing.output
    assert "cannot import module 'no_such_module_here'" in missing.output
    not_one = CliRunner().invoke(main, ["serve", "tests.unit.tasks:CALLS"])
    assert not_one.exit_code == 1 and "not an OperationRegistry or a Flask app" in not_one.output
