"""Kafka SASL settings reach both clients: the right credentials work, wrong ones fail fast."""

import sys
import time
import uuid

import pytest

from kser.config import Settings
from kser.schemas import Message
from tests.infra import SASL_USERS, WAIT
from tests.integration.test_transports import wait_until
from tests.integration.workload import markers

pytestmark = pytest.mark.integration

USER, PASSWORD = next(iter(SASL_USERS.items()))


def sasl_env(password):
    return {"KSER_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KSER_SASL_MECHANISM": "PLAIN",
            "KSER_SASL_USERNAME": USER, "KSER_SASL_PASSWORD": password}


@pytest.mark.parametrize("name", ["kafka", "confluent"])
def test_a_worker_with_the_right_credentials_works(kafka_sasl, processes, tmp_path, name,
                                                   monkeypatch):
    topic, group = f"sasl-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:6]}"
    for key, value in sasl_env(PASSWORD).items():
        monkeypatch.setenv(key, value)
    settings = Settings(transport=name, bootstrap_servers=kafka_sasl.sasl_bootstrap_servers)
    config = settings.client_config()
    assert config.get("security_protocol", config.get("security.protocol")) == "SASL_PLAINTEXT"
    from kser.python_kafka.producer import Producer

    producer = Producer(Settings(transport="kafka",
                                 bootstrap_servers=kafka_sasl.sasl_bootstrap_servers)
                        .client_config())
    kmsg = Message(str(uuid.uuid4()), "tests.integration.workload.Slow",
                   params={"markers": str(tmp_path), "name": "job", "seconds": 0})
    assert producer.send(topic, kmsg).retcode == 0
    producer.close()
    worker = processes.start(
        worker_args_for(kafka_sasl.sasl_bootstrap_servers, topic, group, name),
        env=sasl_env(PASSWORD))
    wait_until(lambda: markers(tmp_path, "job", "done"), f"{name} worker over SASL ran it")
    assert worker.popen.poll() is None


@pytest.mark.parametrize("name", ["kafka", "confluent"])
def test_a_worker_with_wrong_credentials_fails_fast_with_a_clear_error(kafka_sasl, processes,
                                                                       name):
    started = time.monotonic()
    worker = processes.start(
        worker_args_for(kafka_sasl.sasl_bootstrap_servers, "sasl-denied", "g-denied", name),
        env=sasl_env("wrong-password"))
    assert worker.popen.wait(WAIT) == 1, worker.output()
    assert time.monotonic() - started < WAIT
    last = worker.output().strip().splitlines()[-1]
    # the refusal itself when the client reported it before its bootstrap timed out
    # (kafka-python does not always: then the error still names the credentials)
    assert last.startswith("kser: Kafka at ") and (
        "auth" in last.lower() or "credentials" in last.lower()), last
    assert "Traceback" not in worker.output()


def worker_args_for(bootstrap, topic, group, name):
    return [sys.executable, "-m", "kser.cli", "worker", "tests.integration.workload:registry",
            "--topic", topic, "--group", group, "--transport", name,
            "--bootstrap-servers", bootstrap]


