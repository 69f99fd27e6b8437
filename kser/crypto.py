"""Optional payload encryption: records sealed with NaCl's SecretBox (``kser[crypto]``).

``KSER_SECRET_KEYS`` holds one or more base64 keys of 32 bytes, comma
separated (``kser keygen`` makes one). The first key seals what this process
sends; every key is tried to open what it receives, so keys rotate by adding
the new key first everywhere, then removing the old one once no record sealed
with it is left. A sealed record is::

    b"KSER\\x01" + key id (8 bytes: BLAKE2b of the key) + nonce + ciphertext

A sealed record that no key opens is refused with "cannot decrypt" (and
dead-lettered by the worker): it never runs. Plain records are accepted
unless ``KSER_REQUIRE_ENCRYPTION=1``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING, Any

from cdumay_error.types import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from kser.config import Settings

#: what every sealed record starts with (format version 1)
MAGIC = b"KSER\x01"
KEY_ID_BYTES = 8


def key_id(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=KEY_ID_BYTES).digest()


def new_key() -> str:
    """A new random key, base64, for ``KSER_SECRET_KEYS``."""
    from nacl.utils import random

    return base64.b64encode(random(32)).decode()


class Sealer:
    """Seals and opens record values with the configured keys (a no-op without keys).

    :param keys: base64 keys of 32 bytes; the first one seals
    :param required: refuse records that are not sealed
    """

    def __init__(self, keys: list[str] | None = None, required: bool = False):
        self.required = required
        self._boxes: dict[bytes, Any] = {}  # nacl.secret.SecretBox, imported when used
        self._sealing_id: bytes | None = None
        if not keys:
            if required:
                raise ConfigurationError("KSER_REQUIRE_ENCRYPTION=1 needs KSER_SECRET_KEYS")
            return
        try:
            from nacl.secret import SecretBox
        except ImportError:
            raise ConfigurationError("KSER_SECRET_KEYS is set but PyNaCl is not installed: "
                                     "pip install 'kser[crypto]'") from None
        for index, text in enumerate(keys):
            try:
                raw = base64.b64decode(text.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigurationError(f"KSER_SECRET_KEYS key #{index + 1} is not "
                                         "base64 (make one with `kser keygen`)") from None
            if len(raw) != SecretBox.KEY_SIZE:
                raise ConfigurationError(f"KSER_SECRET_KEYS key #{index + 1} has {len(raw)} "
                                         f"bytes, not {SecretBox.KEY_SIZE}")
            self._boxes[key_id(raw)] = SecretBox(raw)
            if self._sealing_id is None:
                self._sealing_id = key_id(raw)

    @property
    def enabled(self) -> bool:
        return self._sealing_id is not None

    def seal(self, value: bytes) -> bytes:
        """``value`` sealed with the first key (unchanged without keys)."""
        if self._sealing_id is None:
            return value
        return MAGIC + self._sealing_id + bytes(self._boxes[self._sealing_id].encrypt(value))

    def open(self, value: bytes | str | None) -> bytes | str | None:
        """The plain value of a record; raises ``ValidationError`` when it cannot be."""
        if value is None or isinstance(value, str) or not bytes(value).startswith(MAGIC):
            if self.required:
                raise ValidationError("Record is not encrypted and KSER_REQUIRE_ENCRYPTION=1: "
                                      "refused", extra=dict(reason="not-encrypted"))
            return value
        value = bytes(value)
        kid = value[len(MAGIC):len(MAGIC) + KEY_ID_BYTES]
        box = self._boxes.get(kid)
        if box is None:
            raise ValidationError(
                f"Record cannot decrypt: sealed with key id {kid.hex()}, which is not in "
                "KSER_SECRET_KEYS" if self._boxes else
                "Record cannot decrypt: it is encrypted and KSER_SECRET_KEYS is not set",
                extra=dict(reason="decrypt"))
        from nacl.exceptions import CryptoError

        try:
            return bytes(box.decrypt(value[len(MAGIC) + KEY_ID_BYTES:]))
        except CryptoError:
            raise ValidationError("Record cannot decrypt: its ciphertext was altered",
                                  extra=dict(reason="decrypt")) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        keys = [k for k in settings.secret_keys.split(",") if k.strip()]
        return cls(keys, settings.require_encryption)
