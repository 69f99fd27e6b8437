"""The outbox's publisher: its former path (kser 0.8 and earlier docs); it lives in
:mod:`kser.sequencing.engine.outbox`."""

from kser.sequencing.engine.outbox import Outbox as Outbox

__all__ = ["Outbox"]
