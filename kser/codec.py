"""The message codec: a :class:`~kser.schemas.Message` to record bytes (JSON, sealed
with ``KSER_SECRET_KEYS``, size-checked, keyed) and back. No Kafka client is involved:
a process that only stores operations encodes their messages without opening one."""

from __future__ import annotations

import json

from cdumay_error.types import ValidationError

from kser.config import Settings
from kser.crypto import Sealer
from kser.errors import MessageTooLargeError as MessageTooLargeError
from kser.schemas import Message, wire_digest

#: default largest serialised message (bytes); Kafka's own default ``max.message.bytes``
#: is 1 MiB
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


class Codec:
    """Encodes and decodes kser's records.

    :param max_message_bytes: largest encoded value accepted
    :param sealer: seals and opens values (default: none, values in clear)
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 sealer: Sealer | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self.sealer = sealer or Sealer([])

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """The codec ``settings`` describe (``KSER_MAX_MESSAGE_BYTES``, ``KSER_SECRET_KEYS``)."""
        return cls(settings.max_message_bytes, Sealer.from_settings(settings))

    def encode(self, kmsg: Message) -> tuple[bytes, bytes]:
        """Serialise ``kmsg`` into (key, value) bytes, refusing what cannot be sent (see
        :meth:`encode_with_digest`)."""
        key, value, _ = self.encode_with_digest(kmsg)
        return key, value

    def encode_with_digest(self, kmsg: Message) -> tuple[bytes, bytes, str]:
        """Serialise ``kmsg`` into (key, value) bytes, refusing what cannot be sent, and
        the :func:`~kser.schemas.wire_digest` of its text (before it is sealed: what the
        consumer decodes).

        The key is the message's uuid (a task's id for a task message): the tasks of
        one operation spread over the partitions, so a parallel group runs on several
        workers at once; the store, not the partition, orders an operation's steps.

        :raises ValidationError: params or metadata that JSON cannot represent
        :raises MessageTooLargeError: a value over :attr:`max_message_bytes`
        """
        try:
            # ensure_ascii=False: a lone surrogate fails here, as it fails on decode
            value = json.dumps(kmsg.dump(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"Message {kmsg.entrypoint}[{kmsg.uuid}] cannot be sent: its params, result or "
                f"metadata are not JSON-serialisable ({exc}); pass only str, int, float, bool, "
                "None, list and dict values", extra=dict(uuid=kmsg.uuid)) from None
        digest = wire_digest(value)
        value = self.sealer.seal(value)
        if len(value) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"Message {kmsg.entrypoint}[{kmsg.uuid}] is {len(value)} bytes, over the "
                f"{self.max_message_bytes}-byte limit; store large data elsewhere and send a "
                "reference, or raise max_message_bytes (and the topic's max.message.bytes)",
                extra=dict(uuid=kmsg.uuid, size=len(value)))
        return str(kmsg.uuid).encode("utf-8"), value, digest

    def decode(self, raw: bytes | str | None, message_class: type[Message] = Message) -> Message:
        """The message of a record's value (opened if sealed).

        :raises ValidationError: the value is not a kser message (the reason says why)
        """
        return message_class.loads(self.sealer.open(raw))  # (None: a null record, refused)
