"""Pytest plugin (registered in tests/conftest.py): a throwaway PostgreSQL server and a headless
Debian Chromium driven by Playwright.

`scripts/test_services.sh` (run by `make test`) installs the Debian packages. When they are absent
the fixtures skip with the reason, except under CI=true, where they fail: there the installer
should have provided them.

Fixtures:
  postgres_url        (session)  SQLAlchemy URL of database `rlhf_test` on our own server
  fresh_postgres_url  (function) URL of a new, empty database on that server, dropped afterwards
  chromium_executable (session)  path to Debian's chromium
  browser             (session)  a headless Playwright (sync API) Chromium browser
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "run `bash scripts/test_services.sh` (or `make test`) to install it"
PG_USER = "rlhf"
PG_DB = "rlhf_test"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str):
    """Skip the test, or fail it under CI=true, where the services must be there."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: scripts/test_services.sh should have installed it)")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql with initdb and pg_ctl."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name))

    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True):
        bindir = Path(initdb).parent
        if os.access(initdb, os.X_OK) and os.access(bindir / "pg_ctl", os.X_OK):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(port: int, database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{port}/{database}"


def _admin_execute(port: int, *statements: str) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        for statement in statements:
            conn.execute(statement)


class _Server:
    """A PostgreSQL cluster in a temp dir. As root it runs as the `postgres` system user (the
    server refuses to run as root), so its dir lives under /tmp, which that user can traverse."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.prefix: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="rlhf-pg-", dir="/tmp"))
        self.data, self.sock, self.log = self.base / "data", self.base / "sock", self.base / "log"
        self.sock.mkdir()
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
                f"{' '.join(args[:2])} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}"
            )

    def start(self) -> int:
        self._run(
            str(self.bindir / "initdb"),
            *("-D", str(self.data), "-A", "trust", "-U", PG_USER),
            *("-E", "UTF8", "--no-locale", "--no-sync"),
        )
        for attempt in range(3):  # the free port can be taken between probing and binding
            port = _free_port()
            options = (
                f"-p {port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    str(self.bindir / "pg_ctl"),
                    *("start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log)),
                    *("-o", options),
                )
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            self.port = port
            return port
        raise AssertionError("unreachable")

    def stop(self) -> None:
        try:
            if self.port is not None:
                self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def _postgres_server() -> Iterator[int]:
    """Starts the server; yields its TCP port."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable(
            f"PostgreSQL server binaries not found under /usr/lib/postgresql; {INSTALL_HINT}"
        )
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root but there is no `postgres` system user to run the server")
    server = _Server(bindir)
    try:
        port = server.start()
        _admin_execute(port, f"CREATE DATABASE {PG_DB}")
        yield port
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(_postgres_server: int) -> str:
    """SQLAlchemy URL (psycopg 3) of the session's database `rlhf_test`."""
    return _url(_postgres_server, PG_DB)


@pytest.fixture
def fresh_postgres_url(_postgres_server: int) -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database for this test only; dropped afterwards (WITH FORCE,
    so connections a test leaves open do not block it)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _admin_execute(_postgres_server, f"CREATE DATABASE {name}")
    try:
        yield _url(_postgres_server, name)
    finally:
        _admin_execute(_postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's chromium (`playwright install` cannot download browsers here)."""
    path = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    path = path or shutil.which("chromium")
    if path is None:
        _unavailable(f"Debian chromium not found (/usr/bin/chromium); {INSTALL_HINT}")
    return path


@pytest.fixture(scope="session")
def browser(chromium_executable: str):
    """A headless Chromium driven by Playwright's sync API, shared by the session."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the `playwright` Python package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            headless=True, executable_path=chromium_executable, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
