"""Transport on kafka-python (``pip install kser``): the default."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError

#: kser's neutral security settings → kafka-python's names
SECURITY_KEYS = {"security_protocol": "security_protocol", "sasl_mechanism": "sasl_mechanism",
                 "sasl_username": "sasl_plain_username", "sasl_password": "sasl_plain_password",
                 "ssl_cafile": "ssl_cafile", "ssl_certfile": "ssl_certfile",
                 "ssl_keyfile": "ssl_keyfile"}


def connection_config(bootstrap_servers: str, group_id: str | None = None,
                      security: dict[str, str] | None = None) -> dict[str, Any]:
    """kafka-python configuration for ``bootstrap_servers`` (and a consumer group).

    :param security: ``Settings.security()``: SASL/SSL settings by kser's names
    """
    config: dict[str, Any] = {"bootstrap_servers": bootstrap_servers.split(",")}
    if group_id:
        config.update(group_id=group_id, auto_offset_reset="earliest")
    config.update({SECURITY_KEYS[k]: v for k, v in (security or {}).items()})
    return config


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def explained_bootstrap() -> Iterator[None]:
    """Construct a kafka-python client inside this block: a failed bootstrap then says why.

    kafka-python retries a refused login until its bootstrap times out and then
    reports only "Unable to bootstrap"; the reason is in its logs, which this
    block reads (without printing them) to raise ``SaslAuthenticationFailedError``.
    """
    log = logging.getLogger("kafka")
    capture, level, propagate = _Capture(), log.level, log.propagate
    log.addHandler(capture)
    log.setLevel(logging.ERROR)
    log.propagate = False
    try:
        yield
    except KafkaTimeoutError:
        refused = [m for m in capture.messages
                   if any(word in m.lower() for word in ("authentication", "sasl", "authoriz"))]
        if refused:
            raise SaslAuthenticationFailedError(
                f"authentication failed ({refused[-1]}); check KSER_SASL_USERNAME, "
                "KSER_SASL_PASSWORD and KSER_SASL_MECHANISM") from None
        raise
    finally:
        log.removeHandler(capture)
        log.setLevel(level)
        log.propagate = propagate
