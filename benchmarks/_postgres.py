"""A throwaway PostgreSQL server in a temp folder, on a free loopback port: for the feedback
app's tests (tests/services.py) and its benchmark (bench_feedback.py).

It needs the server binaries under /usr/lib/postgresql (Debian's `postgresql`, which
`scripts/test_services.sh` installs). As root the server runs as the `postgres` system user,
because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

HOST = "127.0.0.1"
USER = "rlhf"


def postgres_bindir() -> Path | None:
    """The bin folder of the newest PostgreSQL under /usr/lib/postgresql, or None."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name))

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bindir = Path(initdb).parent
        if os.access(initdb, os.X_OK) and os.access(bindir / "pg_ctl", os.X_OK):
            return bindir
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class TemporaryPostgres:
    """``start()`` makes and starts the cluster, ``stop()`` stops it and deletes its folder.

    ``durable=False`` switches off fsync, synchronous commit and full-page writes: fast for
    tests, whose data nobody keeps. The benchmark keeps the defaults, so that PostgreSQL's
    commits are as durable as SQLite's with synchronous=FULL.
    """

    def __init__(self, bindir: Path, durable: bool = True) -> None:
        self.bindir, self.durable = bindir, durable
        self.base = Path(tempfile.mkdtemp(prefix="rlhf-pg-", dir="/tmp"))
        self.data, self.sock, self.log = self.base / "data", self.base / "sock", self.base / "log"
        self.sock.mkdir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = ["runuser", "-u", "postgres", "--"]
            for path in (self.base, self.sock):
                shutil.chown(path, "postgres", "postgres")
        self.port: int | None = None

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, *args], cwd=self.base, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} {args[1]} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )

    def start(self) -> int:
        """Start the server; its TCP port."""
        initdb = ["-D", str(self.data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-locale"]
        self._run(str(self.bindir / "initdb"), *initdb, *([] if self.durable else ["--no-sync"]))
        settings = f"-k {self.sock} -c listen_addresses={HOST} -c max_connections=200"
        if not self.durable:
            settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for attempt in range(3):  # the free port can be taken between probing and binding
            port = free_port()
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    *("start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log)),
                    *("-o", f"-p {port} {settings}"),
                )
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self.port = port
            return port
        raise AssertionError("unreachable")

    def url(self, database: str) -> str:
        """The SQLAlchemy URL (psycopg 3) of a database on this server."""
        return f"postgresql+psycopg://{USER}@{HOST}:{self.port}/{database}"

    def execute(self, *statements: str) -> None:
        """Run statements (CREATE / DROP DATABASE) outside a transaction."""
        import psycopg

        with psycopg.connect(
            host=HOST, port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as connection:
            for statement in statements:
                connection.execute(statement)

    def stop(self) -> None:
        try:
            if self.port is not None:
                self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
