"""The hooks around messages that users override: on each decoded message, after a
success, after a failure. :class:`~kser.controller.Controller` (what a consumer runs) and
:class:`~kser.producer.BaseProducer` (what sends) share them."""

from __future__ import annotations

import logging

from cdumay_result import Result

from kser.results import loggable
from kser.schemas import Message

logger = logging.getLogger("kser.controller")  # (the name their log lines always had)


class BaseController:
    """Hooks around received and finished messages, overridable by users."""

    def _onsuccess(self, kmsg: Message, result: Result) -> Result:
        logger.info("%s.Success: %s[%s]: %s", type(self).__name__, kmsg.entrypoint, kmsg.uuid,
                    loggable(result))
        return self.onsuccess(kmsg, result)

    def onsuccess(self, kmsg: Message, result: Result) -> Result:
        """Called after a message ran successfully; returns the final result."""
        return result

    def _onerror(self, kmsg: Message | None, result: Result) -> Result:
        if kmsg is None:
            logger.error("%s.Failed: undecodable record: %s", type(self).__name__, result.stderr)
        else:
            logger.error("%s.Failed: %s[%s]: %s", type(self).__name__, kmsg.entrypoint,
                         kmsg.uuid, loggable(result))
        return self.onerror(kmsg, result)

    def onerror(self, kmsg: Message | None, result: Result) -> Result:
        """Called after a message failed (``kmsg`` is None if it could not be decoded)."""
        return result

    def _onmessage(self, kmsg: Message) -> Message:
        logger.debug("%s.ReceivedMessage %s[%s]", type(self).__name__, kmsg.entrypoint, kmsg.uuid)
        return self.onmessage(kmsg)

    def onmessage(self, kmsg: Message) -> Message:
        """Called with every decoded message before routing; may return a changed one."""
        return kmsg
