"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl in a temporary folder.

Debian's ``postgresql`` package provides the binaries. PostgreSQL refuses to
run as root, and the tests (like CI) run as root: the cluster then belongs
to the unprivileged ``postgres`` user and is started through ``runuser``.
The server listens on a unix socket in its folder and on a free port of
127.0.0.1 only.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL = "install Debian's PostgreSQL server: sudo apt-get install postgresql (make test does this as root)"


def find_bin() -> Path:
    """The folder of initdb and pg_ctl: $PG_BIN, else the newest /usr/lib/postgresql/*/bin, else $PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    candidates += [str(Path(p).parent) for p in [shutil.which("pg_ctl")] if p]
    for folder in candidates:
        if folder and Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    raise RuntimeError(f"PostgreSQL's initdb and pg_ctl were not found: {INSTALL}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL server in a temporary folder; ``url(db)`` for SQLAlchemy."""

    def __init__(self) -> None:
        self.bin = find_bin()
        self.user = "postgres" if os.geteuid() == 0 else None  # the server will not run as root
        self.root = Path(tempfile.mkdtemp(prefix="fw-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o755)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)

    def start(self) -> Cluster:
        init = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        up = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        if up.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {up.stderr.strip()} {self.log.read_text()[-2000:]}")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server, leave it down *down_s* seconds (clients notice), start it again."""
        self.stop()
        time.sleep(down_s)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@/{database}?host={self.root}&port={self.port}"

    def sql(self, statement: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (CREATE DATABASE cannot run in a transaction block)."""
        import psycopg

        with psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname=database, autocommit=True
        ) as conn:
            conn.execute(statement)  # type: ignore[arg-type]  # tests' own fixed statements

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
