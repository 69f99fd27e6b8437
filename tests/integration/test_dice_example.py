"""The documented dice example, as written, with two consumer processes on a real broker."""

import sys
import time
import uuid

import pytest

from kser.python_kafka.producer import Producer
from kser.schemas import Message
from tests.infra import WAIT

pytestmark = pytest.mark.integration


@pytest.fixture
def dice(kafka, topic, processes, store_url):
    """Two `python examples/dice/consumer.py` processes of one group sharing a store
    (SQLite, then PostgreSQL), and a send function."""
    env = {"KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "KSER_TOPIC": topic,
           "KSER_GROUP": f"dice-{uuid.uuid4().hex[:6]}", "KSER_STORE_URL": store_url}
    consumers = [processes.start([sys.executable, "examples/dice/consumer.py"], env=env,
                                 name=f"consumer{i}") for i in range(2)]
    for consumer in consumers:
        consumer.wait_for("Consumer.Starting")
    producer = Producer({"bootstrap_servers": kafka.bootstrap_servers})

    def send(entrypoint):
        kmsg = Message(uuid=str(uuid.uuid4()), entrypoint=entrypoint)
        assert producer.send(topic, kmsg).retcode == 0
        return kmsg.uuid

    yield consumers, send, env
    producer.close()


def combined(consumers):
    return "".join(c.output() for c in consumers)


def wait_for_count(consumers, text, count, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while combined(consumers).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return combined(consumers).count(text)


def test_the_producer_script_runs_a_roll(dice, processes):
    consumers, _, env = dice
    producer = processes.start([sys.executable, "examples/dice/producer.py"], env=env)
    assert producer.popen.wait(WAIT) == 0, producer.output()
    assert "Producer.Success: Message __main__.DiceRoll[" in producer.output()
    assert wait_for_count(consumers, "DiceRoll.Success: __main__.DiceRoll[", 1) == 1
    assert "You made a " in combined(consumers)


def test_dice_launch_rolls_three_dice_each_a_message_run_by_a_consumer(dice, store_url):
    consumers, send, _ = dice
    op_id = send("__main__.DiceLaunch")
    # each roll went through Kafka: a consumer logged that it processed a DiceRoll record
    assert wait_for_count(consumers, "processed __main__.DiceRoll[", 3) == 3
    assert combined(consumers).count("DiceRoll.Success: __main__.DiceRoll[") == 3
    # the operation and its three tasks are in the shared store, all SUCCESS
    from kser.store import Store

    store = Store(store_url)
    try:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with store.transaction() as tx:
                op, tasks = tx.get_operation(op_id), tx.get_tasks(op_id)
            if op and op["status"] == "SUCCESS":
                break
            time.sleep(0.2)
        assert op["status"] == "SUCCESS"
        assert [t["status"] for t in tasks] == ["SUCCESS"] * 3
        assert all(t["result"]["stdout"].startswith("You made a ") for t in tasks)
    finally:
        store.close()
