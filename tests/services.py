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

import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def _load_postgres_module():
    """benchmarks/_postgres.py, shared with bench_feedback.py (benchmarks/ is no package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_postgres.py"
    spec = importlib.util.spec_from_file_location("rlhf_bench_postgres", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_postgres = _load_postgres_module()
TemporaryPostgres, postgres_bindir = _postgres.TemporaryPostgres, _postgres.postgres_bindir

INSTALL_HINT = "run `bash scripts/test_services.sh` (or `make test`) to install it"
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


def on_ci() -> bool:
    """True under ``CI=true`` (GitHub Actions, GitLab and most CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str, on_ci_because: str) -> NoReturn:
    """Skip the test locally; under CI, where what it needs must be there, fail it: a test
    must not pass in CI by not running. ``on_ci_because`` says why it must be there."""
    if on_ci():
        pytest.fail(f"{reason}; {on_ci_because}", pytrace=False)
    pytest.skip(reason)


def _unavailable(reason: str) -> NoReturn:
    """A service the tests need is missing."""
    skip_or_fail(reason, "CI=true: scripts/test_services.sh should have installed it")


@pytest.fixture(scope="session")
def _postgres_server() -> Iterator[TemporaryPostgres]:
    """Starts the server (fsync off: nobody keeps test data)."""
    bindir = postgres_bindir()
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
    server = TemporaryPostgres(bindir, durable=False)
    try:
        server.start()
        server.execute(f"CREATE DATABASE {PG_DB}")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(_postgres_server: TemporaryPostgres) -> str:
    """SQLAlchemy URL (psycopg 3) of the session's database `rlhf_test`."""
    return _postgres_server.url(PG_DB)


@pytest.fixture
def fresh_postgres_url(_postgres_server: TemporaryPostgres) -> Iterator[str]:
    """SQLAlchemy URL of a new, empty database for this test only; dropped afterwards (WITH FORCE,
    so connections a test leaves open do not block it)."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    _postgres_server.execute(f"CREATE DATABASE {name}")
    try:
        yield _postgres_server.url(name)
    finally:
        _postgres_server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
