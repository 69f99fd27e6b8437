"""Two real `kser scheduler` processes on the same schedule, on Kafka and PostgreSQL,
with a `kser worker` running what they launch: every fire is launched exactly once
(its idempotency key), none is missed while one of them runs, not even when the other
is killed with SIGKILL, and every launched operation runs to SUCCESS."""

import signal
import sys
import time
from datetime import datetime

import pytest
from sqlalchemy import select

from kser.store import schema
from tests.acceptance.harness import Run, wait_for

pytestmark = pytest.mark.acceptance

#: every 2 seconds (6 fields: seconds first)
CRON = "*/2 * * * * *"


def fires(run):
    """The fire times (seconds since the epoch) of the operations launched, in order."""
    ops = schema.operations.c
    with run.store.transaction() as tx:
        keys = tx.connection.execute(select(ops.idempotency_key, ops.status).where(
            ops.idempotency_key.like("schedule:every-2s:%"))).all()
    return sorted(datetime.fromisoformat(key.split(":", 2)[2]).timestamp()
                  for key, _ in keys), {status for _, status in keys}


def test_two_schedulers_launch_each_fire_once_and_survive_one_killed(kafka, pg_url,
                                                                     processes, tmp_path):
    run = Run(kafka, pg_url, processes, workers=1)
    schedules = tmp_path / "schedules.toml"
    schedules.write_text(f'[[schedule]]\nname = "every-2s"\ncron = "{CRON}"\n'
                         'entrypoint = "tests.acceptance.workload.Chain"\n'
                         'params = {hops = 2}\n')
    env = {**run.env, "KSER_TOPIC": run.topic, "KSER_LOG_LEVEL": "INFO",
           "KSER_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    args = [sys.executable, "-m", "kser.cli", "scheduler", "tests.acceptance.workload:registry",
            "--schedules", str(schedules)]
    first, second = (processes.start(args, env=env, name=f"scheduler{i}") for i in (1, 2))
    wait_for(lambda: len(fires(run)[0]) >= 4, "four fires launched", timeout=60)
    first.popen.kill()  # (SIGKILL: the other one goes on alone)
    first.popen.wait(30)
    killed_at = time.time()
    wait_for(lambda: fires(run)[0] and fires(run)[0][-1] > killed_at + 4,
             "fires launched after the kill", timeout=60)
    second.popen.send_signal(signal.SIGTERM)
    assert second.popen.wait(30) == 0, second.output()
    launched, _ = fires(run)
    # one operation per fire (the key is unique), and no fire missed from the first on
    assert launched == [launched[0] + 2 * n for n in range(len(launched))], launched
    assert len(launched) >= 6
    run.operations = []
    with run.store.transaction() as tx:
        run.operations = [row.id for row in tx.list_operations(limit=1000)]
    run.wait_until_final({"SUCCESS": len(launched)}, timeout=120)
    run.check(hops=2)
    for scheduler in (first, second):
        assert "Traceback" not in scheduler.output(), scheduler.output()[-3000:]
    assert "launched tests.acceptance.workload.Chain" in first.output() + second.output()
    run.close()
