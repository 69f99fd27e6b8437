#!/usr/bin/env python3
"""Fetch, start and stop a real Apache Kafka broker (KRaft), or a cluster of them, on 127.0.0.1.

No Docker: the broker's jars come from Maven Central through Maven (cached in
~/.m2 and in the jar folder after the first run) and run on the local Java.

    scripts/kafka-local fetch                        # download the jars
    eval "$(scripts/kafka-local start)"              # start, export KSER_BOOTSTRAP_SERVERS
    scripts/kafka-local env                          # print that export line again
    scripts/kafka-local stop

    eval "$(scripts/kafka-local start --brokers 3)"  # three nodes in .kafka/cluster
    scripts/kafka-local status                       # each node: id, pid, address
    scripts/kafka-local kill --node 2                # SIGKILL node 2 (its id, 1 to 3)
    scripts/kafka-local stop --node 2                # SIGTERM it (a clean shutdown)
    scripts/kafka-local restart --node 2             # start it again
    scripts/kafka-local stop                         # every node

Each node of a cluster is controller and broker; node N has node.id N. A
folder (default .kafka/broker, or .kafka/cluster with --brokers) keeps the
data, the ports (reused at the next start when free) and the address in the
file ``bootstrap``.

Importable too: ``KafkaBroker(workdir).start()`` / ``.stop()`` and
``KafkaCluster(workdir, 3).start()`` / ``.kill(node)`` / ``.restart(node)`` (the
test fixtures use them). Only loopback addresses are ever used. Standard library only.
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
#: the command line's folders of a broker and of a cluster
BROKER_DIR, CLUSTER_DIR = ".kafka/broker", ".kafka/cluster"

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
    :param node_id: its ``node.id`` (a :class:`KafkaCluster` numbers its nodes 1 to N)
    :param keep_ports: reuse the ports of an earlier start even if they seem taken
    """

    def __init__(self, workdir: Path | str, port: int | None = None,
                 libs: Path = DEFAULT_LIBS, extra_properties: dict[str, str] | None = None,
                 sasl_users: dict[str, str] | None = None, node_id: int = 1,
                 keep_ports: bool = False):
        self.workdir = Path(workdir).resolve()
        self.process: subprocess.Popen | None = None
        self.node_id = node_id
        #: set by a KafkaCluster: the quorum's voters, the cluster id, the cluster's size
        self.voters: str | None = None
        self.cluster_id: str | None = None
        self.cluster_size = 1
        self.libs = libs
        # a broker started again in the same folder keeps its ports when they are free,
        # so the address users copied stays right
        # (a node of a cluster always keeps them: the quorum's voters name them)
        kept = _kept_ports(self.workdir / "ports", always=self.running or keep_ports)
        self.port = port or kept.get("port") or free_port()
        self.controller_port = kept.get("controller_port") or free_port()
        self.sasl_users = sasl_users or {}
        self.sasl_port = free_port() if self.sasl_users else None
        self.extra_properties = extra_properties or {}

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
        # the internal topics (the groups' offsets) replicated as kser's are
        replicas = str(min(3, self.cluster_size))
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters
            or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": "1",
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(min(2, self.cluster_size)),
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
        self.launch()
        return self.wait_started(timeout)

    def launch(self) -> None:
        """Format the log dir (the first time) and start the broker's process, without
        waiting for it (a node of a cluster only starts once a quorum of them runs)."""
        fetch(self.libs)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.workdir / "data" / "meta.properties").exists():  # a restart keeps its data
            cluster_id = self.cluster_id or self._java(
                "kafka.tools.StorageTool", "random-uuid").stdout.strip()
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

    def wait_started(self, timeout: float = START_TIMEOUT) -> KafkaBroker:
        """Return once the launched broker accepts connections (stop it and raise if it
        exits or does not within ``timeout`` seconds)."""
        assert self.process is not None, "launch() first"
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
            if self.process.poll() is None:
                return self.process.pid
            self.process = None  # it ended (killed by another process?): ask the pidfile
        return int(self.pidfile.read_text()) if self.pidfile.exists() else None

    def kill(self) -> None:
        """SIGKILL the broker, as a machine that dies: no clean shutdown."""
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process is not None:
            self.process.wait(30)
        else:
            deadline = time.monotonic() + 30
            while _alive(pid, None) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        self.process = None

    @property
    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and _alive(pid, self.process)

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


class KafkaCluster:
    """``size`` nodes, each controller and broker, in ``workdir/node<N>`` (node.id N).

    The controllers' quorum needs a majority of the nodes: with three, one node can
    be down and the cluster still elects leaders; two down and it cannot.

    :param workdir: folder of the nodes' folders, and of the file ``bootstrap``
    :param size: how many nodes (a folder started before keeps its size)
    """

    def __init__(self, workdir: Path | str, size: int = 3, libs: Path = DEFAULT_LIBS,
                 extra_properties: dict[str, str] | None = None):
        self.workdir = Path(workdir).resolve()
        kept = self.workdir / "size"
        if kept.exists():
            size = int(kept.read_text())
        if size < 1:
            raise RuntimeError(f"a cluster needs at least one node, not {size}")
        self.nodes = {n: KafkaBroker(self.workdir / f"node{n}", libs=libs, node_id=n,
                                     extra_properties=extra_properties, keep_ports=True)
                      for n in range(1, size + 1)}
        voters = ",".join(f"{n}@127.0.0.1:{node.controller_port}"
                          for n, node in self.nodes.items())
        cluster_id = self.workdir / "cluster_id"
        for node in self.nodes.values():
            node.voters, node.cluster_size = voters, size
            node.cluster_id = cluster_id.read_text().strip() if cluster_id.exists() else None

    @property
    def bootstrap_servers(self) -> str:
        """Every node's address, comma-separated."""
        return ",".join(node.bootstrap_servers for node in self.nodes.values())

    def node(self, node_id: int) -> KafkaBroker:
        if node_id not in self.nodes:
            raise RuntimeError(f"no node {node_id}: the nodes of {self.workdir} are "
                               f"{', '.join(map(str, self.nodes))}")
        return self.nodes[node_id]

    def start(self, timeout: float = START_TIMEOUT) -> KafkaCluster:
        """Start every node not running (all at once: a node waits for a quorum of the
        controllers); return once each accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "size").write_text(str(len(self.nodes)))
        cluster_id = self.workdir / "cluster_id"
        if not cluster_id.exists():  # one id, formatted into every node's log dirs
            first = next(iter(self.nodes.values()))
            cluster_id.write_text(first._java("kafka.tools.StorageTool",
                                              "random-uuid").stdout.strip())
        launched = []
        try:
            for node in self.nodes.values():
                node.cluster_id = cluster_id.read_text().strip()
                if not node.running:
                    node.launch()
                    launched.append(node)
            for node in launched:
                node.wait_started(timeout)
        except BaseException:
            self.stop()
            raise
        (self.workdir / "bootstrap").write_text(self.bootstrap_servers)
        return self

    def running_address(self) -> str | None:
        """The addresses of a cluster running from this folder (None: no node runs)."""
        if not any(node.running for node in self.nodes.values()):
            return None
        address = self.workdir / "bootstrap"
        return address.read_text().strip() if address.exists() else None

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id``."""
        self.node(node_id).kill()

    def stop_node(self, node_id: int, timeout: float = 30) -> None:
        """Stop node ``node_id`` cleanly (SIGTERM: it hands its leaderships over first)."""
        self.node(node_id).stop(timeout)

    def restart(self, node_id: int, timeout: float = START_TIMEOUT) -> KafkaBroker:
        """Start node ``node_id`` again (stopped or killed) with its data."""
        node = self.node(node_id)
        if node.running:
            return node
        node.launch()
        return node.wait_started(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Stop every node."""
        for node in self.nodes.values():
            node.stop(timeout)


def _kept_ports(path: Path, always: bool = False) -> dict[str, int]:
    """The ports an earlier start in this folder used: those still free, or all of them
    (``always``: its broker runs, or it is a node of a cluster)."""
    if not path.exists():
        return {}
    kept = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        try:
            if not always:
                with socket.socket() as sock:
                    # as the broker binds it: a port whose old connections wait in
                    # TIME_WAIT is free
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    try:  # a zombie (killed, its parent has not reaped it yet), or a pid the system gave
        # to another program since the broker ended, is no broker
        proc = Path(f"/proc/{pid}")
        return (proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                and b"kafka.Kafka" in proc.joinpath("cmdline").read_bytes())
    except (OSError, IndexError):
        return not Path("/proc/self").exists()  # (no /proc to ask: alive, as kill said)


def export_line(bootstrap_servers: str) -> str:
    """The shell line that points kser (and its examples) at a broker."""
    return f"export KSER_BOOTSTRAP_SERVERS={bootstrap_servers}"


def _server(args: argparse.Namespace) -> KafkaBroker | KafkaCluster:
    """The broker or cluster of ``--dir`` (default: .kafka/cluster for ``--brokers`` over
    1, a ``--node``, or when only the cluster runs; else .kafka/broker)."""
    brokers = getattr(args, "brokers", None) or 1
    folder = args.dir
    if folder is None:
        only_the_cluster = (
            args.command != "start" and (Path(CLUSTER_DIR) / "size").exists()
            and KafkaCluster(CLUSTER_DIR).running_address() is not None
            and KafkaBroker(BROKER_DIR).running_address() is None)
        folder = (CLUSTER_DIR if brokers > 1 or getattr(args, "node", None)
                  or only_the_cluster else BROKER_DIR)
    if brokers > 1 or (Path(folder) / "size").exists():
        return KafkaCluster(folder, brokers)
    return KafkaBroker(folder, port=getattr(args, "port", None))


def _nodes(server: KafkaBroker | KafkaCluster, node: int | None) -> list[KafkaBroker]:
    if isinstance(server, KafkaBroker):
        if node not in (None, 1):
            raise RuntimeError(f"{server.workdir} holds one broker, not a cluster: "
                               "--node is for a cluster started with --brokers N")
        return [server]
    return list(server.nodes.values()) if node is None else [server.node(node)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka-local", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the broker's jars with Maven")
    commands = {
        "start": "start a broker or a cluster (or find it running), print the export "
                 "line of its address: eval \"$(...)\"",
        "env": "print the export line of the broker or cluster running in --dir",
        "status": "each node: its id, whether it runs, its pid and address",
        "stop": "stop the broker, the cluster, or one node of it (SIGTERM)",
        "kill": "SIGKILL one node of the cluster (--node)",
        "restart": "start one stopped or killed node of the cluster again (--node)",
    }
    for name, text in commands.items():
        command = sub.add_parser(name, help=text)
        command.add_argument("--dir", default=None,
                             help="its folder [.kafka/broker; .kafka/cluster with --brokers "
                                  "or --node]")
        command.add_argument("--brokers", type=int, default=None,
                             help="nodes of the cluster (start: how many; 1: one broker)")
        if name == "start":
            command.add_argument("--port", type=int, default=None,
                                 help="client port of a single broker")
        if name in ("stop", "kill", "restart"):
            command.add_argument("--node", type=int, default=None, required=name != "stop",
                                 help="the node's id (1 to N)")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch())
            return 0
        server = _server(args)
        if args.command in ("start", "env"):
            address = server.running_address()
            if address is None:
                if args.command == "env":
                    raise RuntimeError(f"no broker runs in {server.workdir}; start it: "
                                       f"scripts/kafka-local start --dir {server.workdir}")
                address = server.start().bootstrap_servers
            elif args.command == "start":
                if isinstance(server, KafkaCluster):
                    server.start()  # the nodes that were stopped or killed
                print(f"kafka-local: already running in {server.workdir}", file=sys.stderr)
            print(export_line(address))
        elif args.command == "status":
            for node in _nodes(server, None):
                state = f"running, pid {node._pid()}" if node.running else "stopped"
                print(f"node {node.node_id}: {state}, {node.bootstrap_servers}")
        elif args.command == "restart":
            if not isinstance(server, KafkaCluster):
                raise RuntimeError("restart is for a node of a cluster; start a broker with: "
                                   "scripts/kafka-local start")
            server.restart(args.node)
        else:
            for node in _nodes(server, args.node):
                node.kill() if args.command == "kill" else node.stop()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"kafka-local: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
