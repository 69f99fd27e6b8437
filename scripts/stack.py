#!/usr/bin/env python3
"""Start and stop docker-compose.yml's stack without containers, on 127.0.0.1: a Kafka
broker (KRaft), PostgreSQL, two `kser worker` processes (sharing one metrics port), the
API and web UI (`kser serve`), `kser scheduler`, and Prometheus scraping them.

    scripts/stack up [--dir .stack]     # start everything; prints where each part is
    scripts/stack down [--dir .stack]   # stop everything it started

The same commands and settings as docker-compose.yml (examples/stack/app.py's registry;
examples/stack/schedules.toml), with free ports. Kafka's jars come from Maven (`make
kafka-jars`), PostgreSQL and Prometheus from Debian's packages
(scripts/install-system-deps). The folder keeps each part's log and ``stack.json``:
ports, URLs, tokens, process ids. Standard library only (and the kser command of the
Python running it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from kafka_local import KafkaBroker, free_port  # noqa: E402
from pg_local import PostgresServer  # noqa: E402

#: the API's tokens (as docker-compose.yml's: change them anywhere else than here)
TOKENS = {"admin": "admin-token", "read": "metrics-read-token"}
#: the registry every kser process of the stack runs
REGISTRY = "examples.stack.app:registry"
TOPIC = "stack"
#: seconds each part may take to answer once started
READY_TIMEOUT = 120


def _kser(*args: str) -> list[str]:
    return [sys.executable, "-m", "kser.cli", *args]


def _wait_http(url: str, what: str, timeout: float = READY_TIMEOUT,
               headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout:g} s")
        time.sleep(0.5)


def up(folder: Path) -> dict:
    """Start every part; what :func:`down` and its users need, also in stack.json."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "stack.json").exists():
        raise RuntimeError(f"a stack runs in {folder} already: scripts/stack down "
                           f"--dir {folder} first")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise RuntimeError("Prometheus is not installed: scripts/install-system-deps "
                           "(Debian's prometheus package)")
    state: dict = {"folder": str(folder), "processes": {}}
    try:
        # (noted before each start: a start cut short is stopped by down too)
        state["kafka"] = {"dir": str(folder / "kafka")}
        broker = KafkaBroker(folder / "kafka").start()
        state["kafka"]["bootstrap"] = broker.bootstrap_servers
        state["postgres"] = {"dir": str(folder / "postgres")}
        postgres = PostgresServer(folder / "postgres").start()
        state["postgres"]["url"] = postgres.url
        api_port, metrics_port, prometheus_port = free_port(), free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                   filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "KSER_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "KSER_TOPIC": TOPIC,
               "KSER_GROUP": TOPIC, "KSER_STORE_URL": postgres.url,
               "KSER_LOG_FORMAT": "json",
               "KSER_API_TOKENS": ",".join(f"{r}:{t}" for r, t in TOKENS.items()),
               "KSER_METRICS_DIR": str(folder / "metrics")}
        state.update(api=f"http://127.0.0.1:{api_port}", tokens=TOKENS,
                     metrics=f"http://127.0.0.1:{metrics_port}/metrics",
                     prometheus=f"http://127.0.0.1:{prometheus_port}")
        commands = {
            "worker-1": _kser("worker", REGISTRY, "--topic", TOPIC, "--metrics-port",
                              str(metrics_port)),
            "worker-2": _kser("worker", REGISTRY, "--topic", TOPIC, "--metrics-port",
                              str(metrics_port)),
            "api": _kser("serve", REGISTRY, "--port", str(api_port), "--workers", "1"),
            "scheduler": _kser("scheduler", REGISTRY, "--schedules",
                               str(ROOT / "examples/stack/schedules.toml")),
        }
        for name, command in commands.items():
            state["processes"][name] = _start(command, folder / f"{name}.log", env)
        config = folder / "prometheus.yml"
        config.write_text(_prometheus_config(metrics_port, api_port))
        state["processes"]["prometheus"] = _start(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            folder / "prometheus.log", env)
        (folder / "stack.json").write_text(json.dumps(state, indent=2))
        _wait_http(f"{state['api']}/api/v1/ready", "the API")
        _wait_http(state["metrics"], "the workers' metrics")
        _wait_http(f"{state['prometheus']}/-/ready", "Prometheus")
    except BaseException:
        down(folder, state)
        raise
    return state


def _start(command: list[str], log: Path, env: dict[str, str]) -> list[int]:
    """Start ``command`` in a session of its own; its pid and start time (a pid reused
    later by another process is never signalled)."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   cwd=ROOT, start_new_session=True)
    return [process.pid, _started_at(process.pid)]


def _started_at(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # (field 22: starttime)


def _prometheus_config(metrics_port: int, api_port: int) -> str:
    """examples/stack/prometheus.yml, with this stack's addresses, scraping every 2 s."""
    text = (ROOT / "examples/stack/prometheus.yml").read_text()
    text = text.replace('["worker-1:9400", "worker-2:9400"]',
                        f'["127.0.0.1:{metrics_port}"]')  # (both: one port, their sum)
    text = text.replace('["api:8000"]', f'["127.0.0.1:{api_port}"]')
    return text.replace("scrape_interval: 15s", "scrape_interval: 2s")


def down(folder: Path, state: dict | None = None) -> None:
    """Stop what :func:`up` started in ``folder`` (SIGTERM, then SIGKILL after 30 s)."""
    path = folder / "stack.json"
    if state is None:
        if not path.exists():
            print(f"stack: nothing runs in {folder}", file=sys.stderr)
            return
        state = json.loads(path.read_text())
    # (only the processes it started: a pid since reused by another is left alone)
    pids = [pid for pid, started in state.get("processes", {}).values()
            if _started_at(pid) == started]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for stop in (lambda: PostgresServer(state["postgres"]["dir"]).stop()
                 if "postgres" in state else None,
                 lambda: KafkaBroker(state["kafka"]["dir"]).stop()
                 if "kafka" in state else None):
        try:
            stop()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            print(f"stack: {exc}", file=sys.stderr)
    path.unlink(missing_ok=True)


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # (its session: gunicorn's workers too)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:  # (not this process's child: started by `stack up`)
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's now: not ours any more)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--dir", default=".stack", help="the stack's folder (default .stack)")
    args = parser.parse_args(argv)
    folder = Path(args.dir).resolve()
    try:
        if args.command == "up":
            state = up(folder)
            print(f"Kafka      {state['kafka']['bootstrap']}\n"
                  f"PostgreSQL {state['postgres']['url']}\n"
                  f"API and UI {state['api']}/ui (admin token {TOKENS['admin']})\n"
                  f"metrics    {state['metrics']}\n"
                  f"Prometheus {state['prometheus']}\n"
                  f"logs       {folder}/*.log; stop: scripts/stack down --dir {args.dir}")
        else:
            down(folder)
    except (RuntimeError, OSError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
