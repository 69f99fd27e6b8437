"""docker-compose.yml parses, and says what the docs promise: Kafka (KRaft), PostgreSQL,
two workers serving metrics, the API and UI, the scheduler, and Prometheus scraping them
with examples/stack/prometheus.yml; the Dockerfile installs what those commands need.

No Docker engine runs here: Debian's docker-compose 1.29 validates the file with
``config`` without one. The stack itself is never started in containers here; the same
processes run without containers in tests/integration/test_stack.py (scripts/stack)."""

import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.infra import ROOT

pytestmark = pytest.mark.integration

REGISTRY = "examples.stack.app:registry"


@pytest.fixture(scope="module")
def compose():
    if shutil.which("docker-compose") is None:
        if os.environ.get("KSER_REQUIRE_KAFKA") == "1":
            pytest.fail("docker-compose is not installed; `make test` installs it")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, timeout=60, check=True)
    return yaml.safe_load(out.stdout)


def test_the_stack_has_every_part(compose):
    services = compose["services"]
    assert set(services) == {"kafka", "postgres", "worker-1", "worker-2", "api", "scheduler",
                             "prometheus"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in json.dumps(services["kafka"]["environment"])
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")


def test_the_kser_services_run_the_stack_registry_against_kafka_and_postgres(compose):
    services = compose["services"]
    for name in ("worker-1", "worker-2", "api", "scheduler"):
        service = services[name]
        assert service["image"] == "kser:latest" and service["build"]["context"]
        assert service["command"][1] == REGISTRY
        env = service["environment"]
        assert env["KSER_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["KSER_STORE_URL"].startswith("postgresql+psycopg://kser:kser@postgres:")
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert worker["command"][0] == "worker"
        assert worker["command"][worker["command"].index("--metrics-port") + 1] == "9400"
        assert worker["environment"]["KSER_METRICS_HOST"] == "0.0.0.0"
    assert services["api"]["command"][0] == "serve"
    assert services["api"]["environment"]["KSER_API_HOST"] == "0.0.0.0"
    assert services["scheduler"]["command"][0] == "scheduler"
    schedules = services["scheduler"]["command"][services["scheduler"]["command"]
                                                  .index("--schedules") + 1]
    assert (ROOT / schedules).is_file()


def test_prometheus_scrapes_the_workers_and_the_api_with_a_read_token(compose):
    prometheus = compose["services"]["prometheus"]
    [mount] = prometheus["volumes"]
    source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
    config = yaml.safe_load((ROOT / "examples/stack/prometheus.yml").read_text())
    assert source.endswith("examples/stack/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["kser-workers"]["static_configs"][0]["targets"] == ["worker-1:9400",
                                                                   "worker-2:9400"]
    api = jobs["kser-api"]
    assert api["metrics_path"] == "/api/v1/metrics"
    assert api["static_configs"][0]["targets"] == ["api:8000"]
    tokens = dict(pair.split(":") for pair in compose["services"]["api"]["environment"][
        "KSER_API_TOKENS"].split(","))
    assert tokens["read"] == api["authorization"]["credentials"]


def test_the_dockerfile_installs_every_extra_the_stack_uses():
    text = (ROOT / "Dockerfile").read_text()
    for extra in ("postgres", "prometheus", "otel"):
        assert extra in text.split('pip install --no-cache-dir ".[')[1].split("]")[0]
    assert 'ENTRYPOINT ["kser"]' in text and "COPY examples" in text
