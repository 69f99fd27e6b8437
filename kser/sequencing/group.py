"""The group commit: its former path (kser 0.8 and earlier docs); it lives in
:mod:`kser.sequencing.engine.group`."""

from kser.sequencing.engine.group import GroupCommit as GroupCommit

__all__ = ["GroupCommit"]
