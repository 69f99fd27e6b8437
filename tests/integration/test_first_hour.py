"""What a new user meets in the first hour, on a real broker: the quickstart
(docs/quickstart.md) as written, the commands' answers when the broker is away, topics,
the local scripts."""

import fcntl
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from kser import __version__
from tests.infra import ROOT, WAIT

KSER = [sys.executable, "-m", "kser.cli"]
#: environment variables of the test session that a newcomer's shell would not have
SESSION_ONLY = ("KSER_STORE_URL", "KSER_BOOTSTRAP_SERVERS", "KSER_TOPIC", "KSER_GROUP")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
    return {**env, **extra}


def quickstart_blocks() -> list[tuple[str, str]]:
    """The code blocks of docs/quickstart.md, in order: (language, text)."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    return re.findall(r"```(\w+)\n(.*?)```", text, re.S)


def test_the_quickstart_runs_as_written_with_two_workers_that_both_run_tasks(tmp_path):
    """Every code block of docs/quickstart.md, in order: `make demo` in the clone, the
    file it writes, then one shell session of the rest (its Python blocks run by the
    session's python), in a folder that is a clone after `make demo`."""
    blocks = quickstart_blocks()
    assert [language for language, _ in blocks] == ["sh", "python", "sh", "sh", "python",
                                                    "sh"]
    (_, make), (_, tasks_py), *session = blocks
    assert make.strip() == "make demo"
    demo = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=clean_env())
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "SUCCESS" in demo.stdout
    assert tasks_py.startswith("# tasks.py\n")
    (tmp_path / "tasks.py").write_text(tasks_py)
    script = "".join(text if language == "sh" else f"python - <<'PY'\n{text}PY\n"
                     for language, text in session)
    # the clone's files the quickstart uses, as in a clone after `make demo`
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    shell = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=clean_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        output, _ = shell.communicate(timeout=240)
    finally:  # whatever happened, no worker or broker outlives the test
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(30)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "kafka_local.py"), "stop",
                        "--dir", str(tmp_path / ".kafka" / "broker")], timeout=60)
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert shell.returncode == 0, output
    assert "dice: created, 12 partition(s)" in output
    assert len(re.findall(r"^[0-9a-f-]{36} SUCCESS$", output, re.M)) == 20, output
    assert ("dice: 12 partition(s), replication factor 1, min.insync.replicas 1; group kser: "
            "2 member(s), lag 0") in output, output
    assert re.search(r"^You made a [1-6]$", output, re.M), output  # (the script's operation)
    with sqlite3.connect(tmp_path / ".kser" / "kser.db") as db:
        statuses = db.execute("SELECT status, count(*) FROM kser_operations GROUP BY status")
        assert dict(statuses) == {"SUCCESS": 21}
        assert db.execute("SELECT count(*) FROM kser_tasks WHERE status = 'SUCCESS' "
                          "AND attempt = 1").fetchone() == (63,)
        workers = {w for (w,) in db.execute("SELECT DISTINCT worker FROM kser_attempts")}
    assert len(workers) == 2, f"one worker did all the work: {workers}"
    ran = set(re.findall(r"(\S+:\d+) processed tasks\.DiceRoll\[", output))
    assert ran == workers  # their logs say which one ran what
    assert "Consumer.Stopped" in output  # SIGTERM: both stopped cleanly


def unreachable() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there any more


@pytest.mark.parametrize("transport", ["kafka", "confluent"])
@pytest.mark.parametrize("command", [
    ["send", "tasks.DiceLaunch", "--topic", "t", "--timeout", "2"],
    ["worker", "kser.demo:registry", "--topic", "t", "--timeout", "2"],
])
def test_send_and_worker_say_in_one_line_within_their_timeout_that_the_broker_is_away(
        command, transport, tmp_path):
    started = time.monotonic()
    done = subprocess.run([*KSER, "--log-level", "WARNING", *command, "--transport", transport,
                           "--bootstrap-servers", unreachable()],
                          env=clean_env(KSER_STORE_URL=f"sqlite:///{tmp_path}/k.db"),
                          capture_output=True, text=True, timeout=WAIT, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("kser: "), done.stderr
    assert "is the broker running" in lines[0]
    # 16-17 s before --timeout was honoured; now the timeout plus the interpreter's start
    assert elapsed < 13, f"{elapsed:.1f} s"  # room for a loaded machine's imports


@pytest.mark.parametrize("transport", ["kafka", "confluent"])
def test_topics_create_and_describe(kafka, transport, tmp_path):
    topic = f"first-{transport}-{time.monotonic_ns()}"
    env = clean_env(KSER_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, KSER_TRANSPORT=transport)

    def kser(*args):
        return subprocess.run([*KSER, *args], env=env, capture_output=True, text=True,
                              timeout=WAIT, cwd=tmp_path)

    created = kser("topics", "create", topic, "--partitions", "5")
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines() == [
        f"{topic}: created, 5 partition(s), replication factor 1, min.insync.replicas 1",
        f"{topic}.dlq: created, 5 partition(s), replication factor 1, min.insync.replicas 1"]
    again = kser("topics", "create", topic)
    assert again.stdout.splitlines()[0].startswith(
        f"{topic}: exists, 5 partition(s), replication factor 1, min.insync.replicas 1 "
        "(fewer than 12: at most 5 "
        "worker(s) of a group work on it")
    # a producer's first record to a missing topic creates it with KSER_PARTITIONS
    sent = subprocess.run([*KSER, "send", "a.B", "--topic", f"{topic}-sent", "--count", "3"],
                          env={**env, "KSER_PARTITIONS": "7"}, capture_output=True, text=True,
                          timeout=WAIT, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    described = kser("topics", "describe", f"{topic}-sent", "--group", "nobody")
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert lines[0] == (f"{topic}-sent: 7 partition(s), replication factor 1, "
                        "min.insync.replicas 1; group nobody: 0 member(s), lag 3")
    assert len(lines) == 8 and all("committed -" in line for line in lines[1:])
    missing = kser("topics", "describe", f"{topic}-nothing")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"kser: no topic {topic}-nothing in the cluster; create "
                                      "it with: kser topics create TOPIC")


def test_kafka_local_prints_the_export_line_and_finds_its_running_broker(kafka, tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "kafka_local.py")]
    env = subprocess.run([*script, "env", "--dir", str(kafka.workdir)], capture_output=True,
                         text=True, timeout=WAIT)
    line = f"export KSER_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}"
    assert (env.returncode, env.stdout.strip()) == (0, line)
    # start again in the same folder: no second broker, the same line
    again = subprocess.run([*script, "start", "--dir", str(kafka.workdir)],
                           capture_output=True, text=True, timeout=WAIT)
    assert (again.returncode, again.stdout.strip()) == (0, line)
    assert "already running" in again.stderr
    nothing = subprocess.run([*script, "env", "--dir", str(tmp_path)], capture_output=True,
                             text=True, timeout=WAIT)
    assert nothing.returncode == 1 and "no broker runs in" in nothing.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/apt-get").exists(),
                    reason="installs Debian packages: needs root and apt")
def test_install_system_deps_waits_for_another_install_to_release_apt_lock():
    lock = open("/var/lib/dpkg/lock-frontend", "w")
    fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running apt-get holds it
    # a PATH without java and its peers: the script asks apt for packages (installed
    # already, so apt has nothing to do once it has the lock)
    bare = ROOT / ".pytest_cache" / "bare-path"
    bare.mkdir(parents=True, exist_ok=True)
    for tool in ("apt-get", "id", "ls", "dpkg"):
        link = bare / tool
        if not link.exists():
            link.symlink_to(f"/usr/bin/{tool}")
    script = subprocess.Popen([str(ROOT / "scripts" / "install-system-deps")],
                              env={"PATH": str(bare), "KSER_APT_LOCK_TIMEOUT": "120"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(300, script.kill)  # (bounds the reads below)
    watchdog.start()
    output = []
    try:
        for line in script.stdout:  # released once apt says it waits for it (not on a
            output.append(line)     # clock: a busy machine reached apt after a 5 s timer)
            if "Could not get lock" in line:
                break
        fcntl.lockf(lock, fcntl.LOCK_UN)
        output.append(script.stdout.read())
        script.wait(300)
    finally:
        watchdog.cancel()
        lock.close()
        if script.poll() is None:
            script.kill()
    said = "".join(output)
    assert script.returncode == 0, said
    assert "Could not get lock" in said  # it met the lock, and waited


def test_make_dist_builds_a_wheel_of_this_version(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("kser-*.whl")
    assert wheel.name == f"kser-{__version__}-py3-none-any.whl"
    assert __version__.startswith("1.")  # never mistaken for kser 0.8.27 on the index
    names = zipfile.ZipFile(wheel).namelist()
    assert "kser/cli.py" in names and "kser/py.typed" in names and "kser/topics.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
