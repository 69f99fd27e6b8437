"""docker-compose.yml parses, and says what the docs promise.

No Docker engine runs here: Debian's docker-compose 1.29 validates the file
with ``config`` without one. The stack itself has not been started here.
"""

import json
import os
import shutil
import subprocess

import pytest

from tests.infra import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def compose():
    if shutil.which("docker-compose") is None:
        if os.environ.get("KSER_REQUIRE_KAFKA") == "1":
            pytest.fail("docker-compose is not installed; `make test` installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=60, check=True)
    import yaml

    return yaml.safe_load(out.stdout)


def test_services(compose):
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "worker-1", "worker-2"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in json.dumps(services["kafka"]["environment"])
    assert services["postgres"]["image"].startswith("postgres:")


def test_two_workers_run_the_dice_example_against_the_broker(compose):
    for name in ("worker-1", "worker-2"):
        worker = compose["services"][name]
        assert worker["command"] == ["python", "examples/dice/consumer.py"]
        assert worker["environment"]["KSER_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
