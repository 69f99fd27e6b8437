"""docker-compose.yml's stack without containers (scripts/stack): Kafka, PostgreSQL,
two workers, the API and UI, the scheduler and Prometheus, started by the one script,
exercised together, and stopped.

An operation started through the API runs on the workers; the scheduler launches the
registry's schedule (every 3 seconds here: DICE_CRON); Prometheus scrapes the workers'
summed metrics and the API's store gauges (every target up, the task runs counted);
`down` leaves no process."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from kser.client import Client
from tests.infra import ROOT

pytestmark = pytest.mark.integration

STACK = [sys.executable, str(ROOT / "scripts" / "stack.py")]


def prometheus(state, query):
    url = f"{state['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)["data"]["result"]


def wait_for(condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture
def stack():
    if shutil.which("prometheus") is None:
        if os.environ.get("KSER_REQUIRE_KAFKA") == "1":
            pytest.fail("Prometheus is not installed; `make test` installs it")
        pytest.skip("Prometheus is not installed (scripts/install-system-deps)")
    # (not under pytest's tmp folder: as root, PostgreSQL runs as `postgres`, which cannot
    # enter root's private folders)
    folder = Path(tempfile.mkdtemp(prefix="kser-stack-"))
    folder.chmod(0o755)
    env = {**os.environ, "DICE_CRON": "*/3 * * * * *"}
    up = subprocess.run([*STACK, "up", "--dir", str(folder)], capture_output=True,
                        text=True, timeout=400, env=env, cwd=ROOT)
    assert up.returncode == 0, up.stderr + "".join(
        f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in folder.glob("*.log"))
    state = json.loads((folder / "stack.json").read_text())
    try:
        yield state
    finally:
        down = subprocess.run([*STACK, "down", "--dir", str(folder)], capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        assert down.returncode == 0, down.stderr
        for pid, _ in state["processes"].values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_whole_stack_runs_without_containers(stack):
    with Client(stack["api"], token=stack["tokens"]["admin"]) as kser:
        started = kser.start("examples.stack.app.DiceLaunch", {"dice": 4}, wait=120)
        assert started["status"] == "SUCCESS", started
        assert len(started["tasks"]) == 4
        # the scheduler launches the registry's schedule (every 3 s here)
        scheduled = wait_for(lambda: [s for s in kser.schedules()
                                      if s["name"] == "dice-every-minute"
                                      and s["last_operation_id"]], "a scheduled launch")
        assert kser.wait(scheduled[0]["last_operation_id"], timeout=120)["status"] == "SUCCESS"
        assert {s["name"] for s in kser.schedules()} == {"dice-every-minute",
                                                         "five-dice-hourly"}
    # Prometheus scrapes both jobs, and counts what ran
    wait_for(lambda: len([r for r in prometheus(stack, "up") if r["value"][1] == "1"]) == 2,
             "both Prometheus targets up")
    # 4 dice started by hand, 3 by the scheduler (a scrape may come before the last ones)
    wait_for(lambda: [r for r in prometheus(
        stack, 'sum(kser_task_runs_total{entrypoint="examples.stack.app.Roll",'
               'status="SUCCESS"})') if float(r["value"][1]) >= 7], "task runs scraped")
    # (the store's gauges: read at most every 5 s, scraped every 2 s)
    wait_for(lambda: [r for r in prometheus(stack, 'kser_operations{status="SUCCESS"}')
                      if float(r["value"][1]) >= 2], "the store's gauges scraped")
