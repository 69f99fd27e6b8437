"""Bearer tokens of the control plane: ``KSER_API_TOKENS`` = ``role:token,...``.

Two roles: ``read`` (every GET) and ``admin`` (everything). A request carries
``Authorization: Bearer <token>``; tokens are compared in constant time and never
logged. With no token configured the API refuses to start, unless ``KSER_API_AUTH=none``
says, explicitly, that it is open to anyone who reaches it.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from kser.config import Settings
from kser.errors import AuthConfigError as AuthConfigError

logger = logging.getLogger(__name__)

READ, ADMIN = "read", "admin"
ROLES = (READ, ADMIN)


@dataclass(frozen=True)
class Tokens:
    """The configured tokens by role; ``open`` when ``KSER_API_AUTH=none``."""

    tokens: tuple[tuple[str, str], ...]
    open: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Tokens:
        """The settings' tokens.

        :raises AuthConfigError: a malformed pair, an unknown role, or no token at all
            without ``KSER_API_AUTH=none``
        """
        pairs = []
        for number, item in enumerate(filter(None, (part.strip() for part in
                                                    settings.api_tokens.split(","))), 1):
            role, sep, token = item.partition(":")
            if not sep or not token.strip():
                raise AuthConfigError(
                    f"KSER_API_TOKENS: pair {number} is not 'role:token' (e.g. "
                    "'admin:s3cret,read:0pen'); its token is not shown here")
            if role.strip() not in ROLES:
                raise AuthConfigError(f"KSER_API_TOKENS: pair {number} has the role "
                                      f"{role.strip()!r}; roles are 'read' and 'admin'")
            pairs.append((role.strip(), token.strip()))
        mode = settings.api_auth.strip().lower()
        if mode not in ("token", "none"):
            raise AuthConfigError(f"KSER_API_AUTH is {settings.api_auth!r}: 'token' (the "
                                  "default) or 'none'")
        if mode == "none":
            if pairs:
                raise AuthConfigError("KSER_API_AUTH=none and KSER_API_TOKENS are both set: "
                                      "unset one (tokens would be ignored)")
            logger.warning("kser API: KSER_API_AUTH=none: anyone who reaches this server "
                           "can read, start, cancel and delete operations")
            return cls((), open=True)
        if not pairs:
            raise AuthConfigError(
                "the kser API has no token: set KSER_API_TOKENS='admin:<secret>' (and "
                "'read:<secret>' for read-only users), or KSER_API_AUTH=none to serve it "
                "without authentication (anyone reaching it could control operations)")
        return cls(tuple(pairs))

    def role_of(self, authorization: str | None) -> str | None:
        """The role of an ``Authorization`` header's bearer token (None: no valid one)."""
        if self.open:
            return ADMIN
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.role_of_token(token.strip())

    def role_of_token(self, token: str) -> str | None:
        """The role of ``token`` (None: none), comparing every configured one in
        constant time."""
        found = None
        for role, known in self.tokens:
            if hmac.compare_digest(known.encode(), token.encode()) and found != ADMIN:
                found = role
        return found
