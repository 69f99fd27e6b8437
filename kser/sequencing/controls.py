"""The operator controls: its former path (kser 0.8 and earlier docs); it lives in
:mod:`kser.sequencing.engine.controls`."""

from kser.sequencing.engine.controls import ControlRefusedError as ControlRefusedError
from kser.sequencing.engine.controls import Controls as Controls
from kser.sequencing.engine.controls import control as control

__all__ = ["ControlRefusedError", "Controls", "control"]
