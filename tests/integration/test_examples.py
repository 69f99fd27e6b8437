"""The runnable examples of the docs run and say what the docs say."""

import subprocess
import sys

from tests.infra import ROOT, WAIT


def test_operations_controls_example():
    done = subprocess.run([sys.executable, "examples/operations/controls.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Transform failed: __main__.Etl is FAILED" in out
    assert "upstream service unavailable" in out
    assert "Recovered: __main__.Etl is SUCCESS" in out
    assert "__main__.Transform           SUCCESS  attempt 2  sorted [1, 2, 3]" in out
    assert "Load run once more: __main__.Etl is SUCCESS" in out
    assert "Canceled before it ran: __main__.Etl is CANCELED" in out
    assert "purged 1 finished operation(s)" in out
    assert "exit notifications on etl.done: 4" in out
