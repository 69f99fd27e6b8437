"""Tasks run by real `kser worker` processes in the integration tests.

They leave marker files so a test can see, from outside, which process
started and finished what, even after a SIGKILL.
"""

import os
import time
from pathlib import Path

from cdumay_result import Result

from kser.sequencing.registry import OperationRegistry
from kser.sequencing.task import Task

registry = OperationRegistry()


@registry.subscribe
class Slow(Task):
    """Sleeps ``seconds``, between markers ``<name>.started.<pid>`` and ``<name>.done.<pid>``;
    with ``release``, only until that file exists (a test's kill then lands mid-run however
    slow the machine)."""

    REQUIRED_FIELDS = ("markers", "name", "seconds")

    def run(self):
        markers = Path(self.params["markers"])
        (markers / f"{self.params['name']}.started.{os.getpid()}").touch()
        until = time.monotonic() + float(self.params["seconds"])
        release = self.params.get("release")
        while time.monotonic() < until and not (release and Path(release).exists()):
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))
        (markers / f"{self.params['name']}.done.{os.getpid()}").touch()
        return Result(uuid=self.uuid, stdout=f"slept {self.params['seconds']} s")


def markers(folder: Path, name: str, stage: str) -> list[Path]:
    """Marker files of task ``name`` at ``stage`` (started or done)."""
    return sorted(folder.glob(f"{name}.{stage}.*"))
