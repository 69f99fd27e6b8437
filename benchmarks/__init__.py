"""Benchmarks of kser, side by side with kser 0.8.27, Celery and the bare Kafka client."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def scratch(prefix: str, dir: str | None = None) -> Path:
    """A new temporary folder, removed when the benchmark's process exits (kept when
    ``KSER_BENCH_KEEP=1``, to read a failed run's logs)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    if os.environ.get("KSER_BENCH_KEEP") != "1":
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
