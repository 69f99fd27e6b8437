"""Task leases: its former path (kser 0.8 and earlier docs); it lives in
:mod:`kser.sequencing.engine.leases`."""

from kser.sequencing.engine.leases import Leases as Leases

__all__ = ["Leases"]
