"""The sequencer: its former path (kser 0.8 and earlier docs); it lives in
:mod:`kser.sequencing.engine.sequencer`."""

from kser.sequencing.engine.sequencer import BATCH_WINDOW as BATCH_WINDOW
from kser.sequencing.engine.sequencer import CHILD_ENDED as CHILD_ENDED
from kser.sequencing.engine.sequencer import EXIT_ENTRYPOINT as EXIT_ENTRYPOINT
from kser.sequencing.engine.sequencer import GROUP_COMMIT_MOST as GROUP_COMMIT_MOST
from kser.sequencing.engine.sequencer import UPSTREAM_FAILED as UPSTREAM_FAILED
from kser.sequencing.engine.sequencer import Sequencer as Sequencer

__all__ = ["BATCH_WINDOW", "CHILD_ENDED", "EXIT_ENTRYPOINT", "GROUP_COMMIT_MOST", "UPSTREAM_FAILED",
           "Sequencer"]
