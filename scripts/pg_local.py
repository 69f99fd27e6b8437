#!/usr/bin/env python3
"""Start and stop a private PostgreSQL server on 127.0.0.1, from Debian's packages.

    scripts/pg-local start --dir .pg      # prints its SQLAlchemy URL when ready
    scripts/pg-local stop --dir .pg

Importable too: ``PostgresServer(workdir).start()`` / ``.stop()`` / ``.restart()``
(the test fixtures use it). The cluster lives in ``workdir`` (initdb, trust
authentication on loopback only, database ``kser``); as root, the server runs
as the ``postgres`` user, which PostgreSQL requires. Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

#: seconds to wait for the server to accept connections
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bindir() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql "
                       "(scripts/install-system-deps does it)")


class PostgresServer:
    """One PostgreSQL cluster whose files live in ``workdir``."""

    def __init__(self, workdir: Path | str, port: int | None = None,
                 settings: dict[str, str] | None = None):
        """:param settings: server settings (``-c name=value``) beside those it always has"""
        self.workdir = Path(workdir).resolve()
        self.settings = dict(settings or {})
        self.data = self.workdir / "data"
        self.port = port or self._saved_port() or free_port()
        self.bin = bindir()

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``kser`` database."""
        return f"postgresql+psycopg://kser@127.0.0.1:{self.port}/kser"

    def _saved_port(self) -> int | None:
        saved = self.workdir / "port"
        return int(saved.read_text()) if saved.exists() else None

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/tmp")
        if check and done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()}")
        return done

    def start(self, timeout: float = START_TIMEOUT) -> PostgresServer:
        """Create the cluster if needed, start it, create database ``kser``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "kser", "--auth=trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        (self.workdir / "port").write_text(str(self.port))
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c shared_buffers=64MB"
                   + "".join(f" -c {name}={value}" for name, value in self.settings.items()))
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "server.log"),
                  "-o", options, "-w", "-t", str(int(timeout)), "start")
        created = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "kser",
                            "kser", check=False)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise RuntimeError(f"createdb failed: {created.stderr.strip()}")
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not accept connections within {timeout} s; see "
                           f"{self.workdir / 'server.log'}")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open transactions are rolled back)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data."""
        self.stop()
        self.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pg-local", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--dir", default=".pg")
    args = parser.parse_args(argv)
    try:
        server = PostgresServer(args.dir)
        if args.command == "start":
            print(server.start().url)
        else:
            server.stop()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"pg-local: {exc} {detail}".strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
