"""What every producer refuses before anything reaches Kafka."""

import datetime

import pytest

from kser.memory.broker import get_broker
from kser.memory.producer import Producer
from kser.schemas import Message


@pytest.mark.parametrize("params", [
    {"when": datetime.datetime(2026, 1, 1)},
    {"ratio": float("nan")},
    {"items": {1, 2}},
    {"blob": b"bytes"},
])
def test_params_that_are_not_json_are_refused_with_a_clear_error(memory_broker_name, params):
    producer = Producer({"broker": memory_broker_name})
    result = producer.send("t", Message("m", "app.Task", params=params))
    assert result.retcode == 400
    assert "cannot be sent: its params, result or metadata are not JSON-serialisable" in \
        result.stderr
    assert get_broker(memory_broker_name).records("t") == []


def test_bulk_send_sends_nothing_unless_every_message_can_be_encoded(memory_broker_name):
    producer = Producer({"broker": memory_broker_name})
    result = producer.bulk_send("t", [Message("a", "app.T"),
                                      Message("b", "app.T", params={"x": object()})])
    assert result.retcode == 400
    assert get_broker(memory_broker_name).records("t") == []


def test_messages_over_the_size_limit_are_refused(memory_broker_name):
    producer = Producer({"broker": memory_broker_name, "max_message_bytes": 500})
    result = producer.send("t", Message("m", "app.T", params={"blob": "x" * 600}))
    assert result.retcode == 400 and "over the 500-byte limit" in result.stderr
    assert producer.send("t", Message("m", "app.T", params={"blob": "x"})).retcode == 0


def test_the_codec_is_built_once_and_again_when_the_limit_or_keys_change(memory_broker_name):
    from kser.crypto import Sealer, new_key

    producer = Producer({"broker": memory_broker_name, "max_message_bytes": 500})
    codec = producer.codec
    producer.encode(Message("u", "a.B"))
    assert producer.codec is codec  # not one per message
    producer.max_message_bytes = 100
    assert producer.codec.max_message_bytes == 100
    producer.sealer = Sealer([new_key()])
    assert producer.codec.sealer is producer.sealer
