"""Payload encryption with NaCl SecretBox: sealed on send, opened on receipt, keys rotate."""

import pytest
from cdumay_error.types import ConfigurationError, ValidationError

from kser.crypto import MAGIC, Sealer, new_key
from kser.memory.broker import get_broker
from kser.memory.consumer import Consumer
from kser.memory.producer import Producer
from kser.schemas import Message
from tests.unit import tasks

OLD, NEW = new_key(), new_key()


def test_seal_and_open_with_rotated_keys():
    sealed = Sealer([OLD]).seal(b'{"secret": 1}')
    assert sealed.startswith(MAGIC) and b"secret" not in sealed
    assert Sealer([NEW, OLD]).open(sealed) == b'{"secret": 1}'  # the old key still opens
    assert Sealer([NEW, OLD]).seal(b"x")[len(MAGIC):len(MAGIC) + 8] != sealed[5:13]


def test_what_cannot_be_opened_says_so():
    sealed = Sealer([OLD]).seal(b"{}")
    with pytest.raises(ValidationError, match="cannot decrypt: sealed with key id"):
        Sealer([NEW]).open(sealed)
    with pytest.raises(ValidationError, match="cannot decrypt: it is encrypted and "
                                              "KSER_SECRET_KEYS is not set"):
        Sealer([]).open(sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ValidationError, match="ciphertext was altered"):
        Sealer([OLD]).open(tampered)


def test_plain_records_are_refused_only_when_encryption_is_required():
    assert Sealer([OLD]).open(b"{}") == b"{}"
    with pytest.raises(ValidationError, match="not encrypted and KSER_REQUIRE_ENCRYPTION=1"):
        Sealer([OLD], required=True).open(b"{}")


@pytest.mark.parametrize("keys, message", [
    (["not base64!"], "key #1 is not base64"),
    (["AAAA"], "key #1 has 3 bytes, not 32"),
])
def test_bad_keys_are_a_clear_configuration_error(keys, message):
    with pytest.raises(ConfigurationError, match=message):
        Sealer(keys)


def test_an_encrypted_message_without_the_key_is_dead_lettered_never_run(memory_broker_name,
                                                                          monkeypatch):
    monkeypatch.setenv("KSER_SECRET_KEYS", OLD)
    producer = Producer({"broker": memory_broker_name})
    assert producer.send("jobs", Message("m", tasks.Echo.path, params={"text": "secret"})
                         ).retcode == 0
    broker = get_broker(memory_broker_name)
    [record] = broker.records("jobs")
    assert record.value.startswith(MAGIC) and b"secret" not in record.value

    tasks.CALLS.clear()
    monkeypatch.setattr(tasks.registry.controller, "sealer", Sealer([NEW]))
    consumer = Consumer({"broker": memory_broker_name, "group_id": "g"}, ["jobs"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert tasks.CALLS == []
    [dead] = broker.records("jobs.dlq")
    assert b"cannot decrypt" in dict(dead.headers)["kser-error"]

    monkeypatch.setattr(tasks.registry.controller, "sealer", Sealer([NEW, OLD]))
    assert tasks.registry.controller.run(record.value).stdout == "secret"
