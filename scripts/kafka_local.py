#!/usr/bin/env python3
"""Fetch, start and stop a real single-node Apache Kafka broker (KRaft) on 127.0.0.1.

No Docker: the broker's jars come from Maven Central through Maven (cached in
~/.m2 and in the jar folder after the first run) and run on the local Java.

    scripts/kafka-local fetch                        # download the jars
    eval "$(scripts/kafka-local start)"              # start, export KSER_BOOTSTRAP_SERVERS
    scripts/kafka-local env                          # print that export line again
    scripts/kafka-local stop

The broker's folder (default .kafka/broker) keeps its data, its ports (reused
at the next start when free) and its address in the file ``bootstrap``.

Importable too: ``KafkaBroker(workdir).start()`` / ``.stop()`` (the test fixtures use it).
Only loopback addresses are ever used. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
#: where the broker's jars are copied (override with KSER_KAFKA_LIBS)
DEFAULT_LIBS = Path(os.environ.get("KSER_KAFKA_LIBS", HERE.parent / ".kafka" / "libs"))
#: seconds to wait for the broker to accept connections
START_TIMEOUT = 120

LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.state.change.logger=WARN
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(libs: Path = DEFAULT_LIBS) -> Path:
    """Copy Kafka's runtime jars into ``libs`` with Maven (no-op when already there)."""
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is not installed: apt-get install maven")
    libs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                    f"-DoutputDirectory={libs}", "-DincludeScope=runtime"], check=True)
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"Maven ran but no kafka_2.13 jar is in {libs}")
    marker.touch()
    return libs


class KafkaBroker:
    """One broker+controller node whose state lives in ``workdir``.

    :param workdir: folder for its config, log dirs and output
    :param port: client port (default: a free one)
    :param extra_properties: more ``server.properties`` lines
    :param sasl_users: ``{user: password}``: also listen with SASL_PLAINTEXT (mechanism
        PLAIN) on :attr:`sasl_port` for these users
    """

    def __init__(self, workdir: Path | str, port: int | None = None,
                 libs: Path = DEFAULT_LIBS, extra_properties: dict[str, str] | None = None,
                 sasl_users: dict[str, str] | None = None):
        self.workdir = Path(workdir).resolve()
        self.libs = libs
        # a broker started again in the same folder keeps its ports when they are free,
        # so the address users copied stays right
        kept = _kept_ports(self.workdir / "ports")
        self.port = port or kept.get("port") or free_port()
        self.controller_port = kept.get("controller_port") or free_port()
        self.sasl_users = sasl_users or {}
        self.sasl_port = free_port() if self.sasl_users else None
        self.extra_properties = extra_properties or {}
        self.process: subprocess.Popen | None = None

    @property
    def sasl_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "kafka.pid"

    def _java(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["java", "-cp", f"{self.libs}/*", *args], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} {args[1]} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")
        return done

    def _write_config(self) -> Path:
        logs = self.workdir / "data"
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "24",
        }
        if self.sasl_users:
            users = " ".join(f'user_{u}="{p}"' for u, p in self.sasl_users.items())
            properties.update({
                "listeners": properties["listeners"]
                + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                "advertised.listeners": properties["advertised.listeners"]
                + f",SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                "listener.security.protocol.map": properties["listener.security.protocol.map"]
                + ",SASL_PLAINTEXT:SASL_PLAINTEXT",
                "sasl.enabled.mechanisms": "PLAIN",
                "listener.name.sasl_plaintext.plain.sasl.jaas.config":
                    "org.apache.kafka.common.security.plain.PlainLoginModule required "
                    f"{users};",
            })
        properties.update(self.extra_properties)
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        (self.workdir / "log4j.properties").write_text(
            LOG4J.format(log=self.workdir / "server.log"))
        return config

    def start(self, timeout: float = START_TIMEOUT) -> KafkaBroker:
        """Format the log dir and start the broker; return once it accepts connections."""
        fetch(self.libs)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.workdir / "data" / "meta.properties").exists():  # a restart keeps its data
            cluster_id = self._java("kafka.tools.StorageTool", "random-uuid").stdout.strip()
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                       str(config), "--ignore-formatted")
        self._starts_logged = self._count_started()
        output = open(self.workdir / "stdout.log", "ab")
        self.process = subprocess.Popen(
            ["java", "-Xmx512m", "-Xms256m", "-XX:+UseSerialGC", "-cp", f"{self.libs}/*",
             f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
             "kafka.Kafka", str(config)],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.write_text(str(self.process.pid))
        (self.workdir / "ports").write_text(f"port={self.port}\n"
                                            f"controller_port={self.controller_port}\n")
        (self.workdir / "bootstrap").write_text(self.bootstrap_servers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self.process.returncode} while starting;"
                                   f" see {self.workdir / 'server.log'} and stdout.log")
            if self._started():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Kafka did not start within {timeout} s; see "
                           f"{self.workdir / 'server.log'}")

    def _count_started(self) -> int:
        log = self.workdir / "server.log"
        return log.read_text(errors="replace").count("Kafka Server started") if log.exists() else 0

    def _started(self) -> bool:
        if self._count_started() <= self._starts_logged:  # this start, not an earlier one
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def running_address(self) -> str | None:
        """The address of a broker already running from this folder (None: none runs)."""
        pid, address = self._pid(), self.workdir / "bootstrap"
        if pid is None or not _alive(pid, None) or not address.exists():
            return None
        return address.read_text().strip()

    def pause(self) -> None:
        """Freeze the broker process (SIGSTOP), as a broker that stops answering."""
        os.kill(self._pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    def _pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        return int(self.pidfile.read_text()) if self.pidfile.exists() else None

    def stop(self, timeout: float = 30) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, self.process):
            time.sleep(0.2)
        if _alive(pid, self.process):
            os.kill(pid, signal.SIGKILL)
            if self.process is not None:
                self.process.wait(10)
        self.pidfile.unlink(missing_ok=True)
        self.process = None


def _kept_ports(path: Path) -> dict[str, int]:
    """The ports an earlier start in this folder used, those still free."""
    if not path.exists():
        return {}
    kept = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", int(value)))
        except (OSError, ValueError):
            continue
        kept[name] = int(value)
    return kept


def _alive(pid: int, process: subprocess.Popen | None) -> bool:
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def export_line(bootstrap_servers: str) -> str:
    """The shell line that points kser (and its examples) at a broker."""
    return f"export KSER_BOOTSTRAP_SERVERS={bootstrap_servers}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka-local", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker's jars with Maven")
    start = sub.add_parser("start", help="start a broker (or find it running), print the "
                                         "export line of its address: eval \"$(...)\"")
    start.add_argument("--dir", default=".kafka/broker")
    start.add_argument("--port", type=int, default=None)
    env = sub.add_parser("env", help="print the export line of the broker running in --dir")
    env.add_argument("--dir", default=".kafka/broker")
    stop = sub.add_parser("stop", help="stop the broker started in --dir")
    stop.add_argument("--dir", default=".kafka/broker")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
        elif args.command in ("start", "env"):
            broker = KafkaBroker(args.dir, port=getattr(args, "port", None))
            address = broker.running_address()
            if address is None:
                if args.command == "env":
                    raise RuntimeError(f"no broker runs in {broker.workdir}; start one: "
                                       f"scripts/kafka-local start --dir {args.dir}")
                address = broker.start().bootstrap_servers
            elif args.command == "start":
                print(f"kafka-local: already running in {broker.workdir}", file=sys.stderr)
            print(export_line(address))
        else:
            KafkaBroker(args.dir).stop()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"kafka-local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
