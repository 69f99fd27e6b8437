"""The shared consume loop, driven through the in-process transport."""

import logging

import pytest
from cdumay_result import Result

from kser.config import Settings
from kser.memory.broker import get_broker
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task
from kser.worker import BaseConsumer

registry = OperationRegistry()
RUNS: list[str] = []
STOPPABLE: list[BaseConsumer] = []


class ConsumerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even an except Exception."""


@registry.subscribe
class Record(Task):
    def run(self):
        RUNS.append(self.params["n"])
        if self.params.get("die") and RUNS.count(self.params["n"]) == 1:
            raise ConsumerDied()
        if self.params.get("stop"):
            STOPPABLE.pop().stop()
        return Result(uuid=self.uuid, stdout=str(self.params["n"]))


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()
    registry.controller.pace.seconds = None  # (batches form once a body ran)


def send(broker, *params, topic="jobs"):
    # one partition: these tests follow the order of the records
    producer = Producer({"broker": broker, "partitions": 1})
    for p in params:
        assert producer.send(topic, Message(uuid=f"m{p['n']}", entrypoint=Record.path,
                                            params=p)).retcode == 0


def consumer(broker, **kwargs):
    c = Consumer({"broker": broker, "group_id": "g"}, ["jobs"], **kwargs)
    c.REGISTRY = registry.controller
    return c


def test_processes_everything_and_commits(memory_broker_name):
    send(memory_broker_name, *({"n": i} for i in range(5)))
    consumer(memory_broker_name).run()
    assert RUNS == [0, 1, 2, 3, 4]
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0


def test_bad_record_is_dead_lettered_and_the_next_one_runs(memory_broker_name):
    broker = get_broker(memory_broker_name)
    broker.produce("jobs", b"\xffgarbage", key=b"k")
    broker.produce("jobs", Message("u", "not.Registered").dumps().encode())
    send(memory_broker_name, {"n": 7})
    consumer(memory_broker_name).run()
    assert RUNS == [7]
    assert broker.lag("g", ["jobs"]) == 0
    dead = broker.records("jobs.dlq")
    assert dead[0].value == b"\xffgarbage" and dead[0].key == b"k"
    headers = [dict(d.headers) for d in dead]
    assert b"not valid UTF-8" in headers[0]["kser-error"]
    assert b"'not.Registered' is not registered" in headers[1]["kser-error"]
    assert headers[1]["kser-source-topic"] == b"jobs"
    assert headers[1]["kser-source-offset"] == b"1"


def test_dead_letter_topic_is_configurable(memory_broker_name):
    get_broker(memory_broker_name).produce("jobs", b"{}")
    settings = Settings(dlq_topic="all-dead-letters")
    consumer(memory_broker_name, settings=settings).run()
    assert len(get_broker(memory_broker_name).records("all-dead-letters")) == 1


def test_consumer_that_dies_mid_message_leaves_it_to_the_next(memory_broker_name):
    send(memory_broker_name, {"n": 1}, {"n": 2, "die": True}, {"n": 3})
    settings = Settings(commit_interval=0, batch_size=1)  # commit after every record
    with pytest.raises(ConsumerDied):
        consumer(memory_broker_name, settings=settings).run()
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 2  # 2 and 3 not committed
    consumer(memory_broker_name, settings=settings).run()
    assert RUNS == [1, 2, 2, 3]  # message 2 processed again: at-least-once


def test_consumer_that_dies_mid_batch_leaves_the_batch_to_the_next(memory_broker_name):
    """Under load a thread takes several records at once; their offsets are committed
    when the batch is done: a consumer dying in it leaves the whole batch (at least once)."""
    send(memory_broker_name, {"n": 1}, {"n": 2}, {"n": 3, "die": True}, {"n": 4})
    settings = Settings(commit_interval=0)
    with pytest.raises(ConsumerDied):
        consumer(memory_broker_name, settings=settings).run()
    # 1 ran alone (no pace known yet), then 2, 3 and 4 together: 2 ran, 3 died
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 3
    consumer(memory_broker_name, settings=settings).run()
    assert RUNS == [1, 2, 3, 2, 3, 4]
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0


def test_offset_is_not_committed_before_the_message_is_processed(memory_broker_name):
    """kser 0.8.27 committed first: a consumer dying mid-message lost it."""
    send(memory_broker_name, {"n": 1, "die": True})
    with pytest.raises(ConsumerDied):
        consumer(memory_broker_name).run()
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 1


class FlakyProducer(Producer):
    """Fails to get its first acknowledgement, as when the broker is unreachable."""

    def __init__(self, config):
        super().__init__(config)
        self.failures = 1

    def _flush(self, timeout):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")


def test_offsets_are_committed_only_after_an_acknowledgement(memory_broker_name):
    events = []

    class Recording(Consumer):
        def _commit(self, offsets):
            events.append(("commit", offsets))
            super()._commit(offsets)

    class Failing(FlakyProducer):
        def _flush(self, timeout):
            try:
                super()._flush(timeout)
            except ConnectionError:
                events.append(("flush failed", None))
                raise

    send(memory_broker_name, {"n": 1}, {"n": 2})
    c = Recording({"broker": memory_broker_name, "group_id": "g"}, ["jobs"],
                  producer=Failing({"broker": memory_broker_name}))
    c.REGISTRY = registry.controller
    c.run()
    assert RUNS == [1, 2]
    assert events[0] == ("flush failed", None)  # nothing committed before an ack
    assert events[-1] == ("commit", {("jobs", 0): 2})
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0


class RefusingProducer(Producer):
    """Reports its first ``failures`` records as not acknowledged (nothing is stored)."""

    def __init__(self, config, failures=1, error=None):
        super().__init__(config)
        self.failures = failures
        self.error = error or ConnectionError("broker unreachable")

    def _produce(self, topic, value, key, headers=None, on_delivery=None):
        if self.failures:
            self.failures -= 1
            if on_delivery is not None:
                on_delivery(self.error)
            return
        super()._produce(topic, value, key, headers, on_delivery)


def test_a_dead_letter_the_broker_did_not_take_is_sent_again(memory_broker_name, monkeypatch):
    monkeypatch.setattr("kser.deadletter.KAFKA_RETRY_DELAY", 0)
    broker = get_broker(memory_broker_name)
    broker.produce("jobs", b"not json")
    producer = RefusingProducer({"broker": memory_broker_name})
    consumer(memory_broker_name, producer=producer, settings=Settings(redo_backoff=0)).run()
    assert producer.failures == 0
    assert len(broker.records("jobs.dlq")) == 1  # the second try was acknowledged
    assert broker.lag("g", ["jobs"]) == 0


def test_a_dead_letter_the_broker_refuses_for_good_goes_to_the_store(memory_broker_name,
                                                                      monkeypatch, tmp_path):
    from kser.store import Store

    monkeypatch.setattr(registry.context, "_store", Store(f"sqlite:///{tmp_path}/s.db"))
    from kafka.errors import MessageSizeTooLargeError

    monkeypatch.setattr("kser.deadletter.KAFKA_RETRY_DELAY", 0)
    broker = get_broker(memory_broker_name)
    broker.produce("jobs", b"not json", key=b"k", headers=[("h", None)])
    producer = RefusingProducer({"broker": memory_broker_name}, failures=99,
                                error=MessageSizeTooLargeError("too large"))
    worker = consumer(memory_broker_name, producer=producer, settings=Settings(redo_backoff=0))
    worker.run()
    assert producer.failures == 98  # refused for good: tried once, not three times
    assert broker.records("jobs.dlq") == [] and broker.lag("g", ["jobs"]) == 0
    with worker.dead_letters._store().transaction() as tx:  # the registry's store
        (letter,) = tx.dead_letters()
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("jobs", 0, 0)
    assert (letter["value"], letter["key"], letter["headers"]) == (b"not json", b"k", [["h", ""]])
    assert "not valid JSON" in letter["error"]


def test_stop_finishes_the_current_message_and_leaves_the_rest(memory_broker_name):
    """What SIGTERM does: the record in hand is finished and committed, the rest is left."""
    send(memory_broker_name, {"n": 1}, {"n": 2, "stop": True}, {"n": 3})
    STOPPABLE.append(consumer(memory_broker_name, settings=Settings(batch_size=1)))
    STOPPABLE[0].run(until_idle=False)
    assert RUNS == [1, 2]
    broker = get_broker(memory_broker_name)
    assert broker.lag("g", ["jobs"]) == 1  # 3 is left, uncommitted, for the next consumer
    consumer(memory_broker_name).run()
    assert RUNS == [1, 2, 3]


def test_stop_finishes_the_batch_in_hand(memory_broker_name):
    """Under load the records in hand are a batch (about BATCH_WINDOW of work): a stop
    finishes and commits it, and leaves what was not handed out."""
    send(memory_broker_name, {"n": 1}, {"n": 2, "stop": True}, {"n": 3})
    STOPPABLE.append(consumer(memory_broker_name))
    registry.controller.pace.seconds = 0.001  # fast bodies: 1, 2 and 3 are one batch
    STOPPABLE[0].run(until_idle=False)
    assert RUNS == [1, 2, 3]
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0


def test_auto_commit_is_forced_off_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = BaseConsumer._force_manual_commit({"enable_auto_commit": True},
                                                   "enable_auto_commit")
    assert config["enable_auto_commit"] is False
    assert "kser commits an offset only after its message is processed" in caplog.text


def test_partitions_are_shared_by_the_group_and_handed_over(memory_broker_name):
    broker = get_broker(memory_broker_name)
    broker.create_topic("jobs", partitions=4)
    first, second = consumer(memory_broker_name), consumer(memory_broker_name)
    a = broker.assignment("g", first, ["jobs"])
    b = broker.assignment("g", second, ["jobs"])
    assert len(a) == len(b) == 2 and not set(a) & set(b)
    second._close()
    assert len(broker.assignment("g", first, ["jobs"])) == 4


def test_registry_class_is_instantiated():
    class Mine(Consumer):
        pass

    c = Mine({"broker": "unused-name"}, ["t"])
    try:
        assert c.controller is c.controller and not isinstance(c.controller, type)
    finally:
        c._close()


def test_offset_tracker_commits_up_to_the_lowest_record_in_flight():
    from kser import worker

    tracker = worker.OffsetTracker()
    records = ([worker.Record("t", 0, offset, b"") for offset in range(4)]
               + [worker.Record("t", 1, 7, b"")])
    for record in records:
        tracker.started(record)
    for record in (records[1], records[2], records[4]):
        tracker.done(record)
    assert tracker.committable() == {("t", 0): 0, ("t", 1): 8}
    tracker.committed({("t", 1): 8})
    tracker.done(records[0])
    assert tracker.committable() == {("t", 0): 3}  # 3 is still running
    tracker.done(records[3])
    assert tracker.committable() == {("t", 0): 4}


@registry.subscribe
class Sleep(Task):
    def run(self):
        import threading
        import time

        RUNS.append(("start", self.params["n"], threading.current_thread().name))
        time.sleep(self.params["seconds"])
        RUNS.append(("end", self.params["n"]))
        return Result(uuid=self.uuid)


def send_sleeps(broker, count, seconds, topic="jobs"):
    producer = Producer({"broker": broker})
    for n in range(count):
        producer.send(topic, Message(f"s{n}", Sleep.path, params={"n": n, "seconds": seconds}))


def max_overlap(runs):
    running = best = 0
    for event in runs:
        running += 1 if event[0] == "start" else -1
        best = max(best, running)
    return best


def test_concurrency_runs_tasks_at_once_in_task_threads(memory_broker_name):
    send_sleeps(memory_broker_name, 6, 1.0)  # long enough for three threads to start
    consumer(memory_broker_name, settings=Settings(concurrency=3)).run()
    assert max_overlap(RUNS) == 3
    assert len({event[2] for event in RUNS if event[0] == "start"}) == 3
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0


def test_without_concurrency_tasks_run_one_at_a_time(memory_broker_name):
    send_sleeps(memory_broker_name, 3, 0.05)
    consumer(memory_broker_name).run()
    assert max_overlap(RUNS) == 1


def test_pause_takes_no_new_record_and_resume_goes_on(memory_broker_name):
    import threading
    import time

    c = consumer(memory_broker_name)
    c.pause()
    thread = threading.Thread(target=c.run, kwargs={"until_idle": False}, daemon=True)
    thread.start()
    send_sleeps(memory_broker_name, 2, 0)
    time.sleep(0.5)
    assert RUNS == [] and c.paused
    c.resume()
    deadline = time.monotonic() + 10
    while len(RUNS) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    c.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert [e[:2] for e in RUNS] == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert get_broker(memory_broker_name).lag("g", ["jobs"]) == 0
