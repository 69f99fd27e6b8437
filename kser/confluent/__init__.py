"""Transport on confluent-kafka (librdkafka): ``pip install kser[confluent]``."""

from typing import Any

#: kser's neutral security settings → librdkafka's names
SECURITY_KEYS = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanisms",
                 "sasl_username": "sasl.username", "sasl_password": "sasl.password",
                 "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                 "ssl_keyfile": "ssl.key.location"}

#: librdkafka settings that only make sense for a consumer (not copied to the producer)
CONSUMER_ONLY_KEYS = frozenset({
    "group.id", "group.instance.id", "auto.offset.reset", "enable.auto.commit",
    "enable.auto.offset.store", "auto.commit.interval.ms", "session.timeout.ms",
    "heartbeat.interval.ms", "max.poll.interval.ms", "partition.assignment.strategy",
    "enable.partition.eof", "isolation.level", "fetch.min.bytes", "fetch.max.bytes",
    "fetch.wait.max.ms", "max.partition.fetch.bytes", "group.protocol", "check.crcs",
    "logger", "error_cb"})


def connection_config(bootstrap_servers: str, group_id: str | None = None,
                      security: dict[str, str] | None = None) -> dict[str, Any]:
    """confluent-kafka configuration for ``bootstrap_servers`` (and a consumer group).

    :param security: ``Settings.security()``: SASL/SSL settings by kser's names
    """
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
    if group_id:
        config.update({"group.id": group_id, "auto.offset.reset": "earliest"})
    config.update({SECURITY_KEYS[k]: v for k, v in (security or {}).items()})
    return config
