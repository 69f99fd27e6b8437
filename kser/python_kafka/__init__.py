"""Transport on kafka-python (``pip install kser``): the default."""


def connection_config(bootstrap_servers: str, group_id: str | None = None) -> dict:
    """kafka-python configuration for ``bootstrap_servers`` (and a consumer group)."""
    config: dict = {"bootstrap_servers": bootstrap_servers.split(",")}
    if group_id:
        config.update(group_id=group_id, auto_offset_reset="earliest")
    return config
