"""Transport on confluent-kafka (librdkafka): ``pip install kser[confluent]``."""


def connection_config(bootstrap_servers: str, group_id: str | None = None) -> dict:
    """confluent-kafka configuration for ``bootstrap_servers`` (and a consumer group)."""
    config: dict = {"bootstrap.servers": bootstrap_servers}
    if group_id:
        config.update({"group.id": group_id, "auto.offset.reset": "earliest"})
    return config
