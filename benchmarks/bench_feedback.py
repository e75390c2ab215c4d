"""Feedback server under load: concurrent annotators, a SIGKILL midway, and a durability check.

The server is the real ``rlhf feedback serve`` in its own process on loopback, on a fresh
SQLite file (default; WAL, ``synchronous=FULL``) or a PostgreSQL database. Setup (untimed): an
admin (its token is read from the server log), ``--annotators`` annotator accounts and one
campaign of ``--task`` items with ``--k`` distinct annotators per item, just enough items for
``--labels`` labels.

Labelling (timed): every simulated annotator is a thread with its own ``httpx.Client``. It
loops: ``GET /api/campaigns/{id}/next``, then ``POST /api/assignments/{id}/label`` with a fresh
uuid4 ``client_id`` and a random answer. A connection error, timeout, 5xx or "concurrent
request conflicted" 409 is retried with the *same* request and ``client_id`` (what a browser
does) after a short backoff, until the server answers; the answer is the acknowledgement. All
annotators together submit exactly ``--labels`` labels. When ``--kill-at`` of them are
acknowledged, the server process (the Python process running uvicorn itself) gets SIGKILL and
is restarted on the same port and database; requests in flight then fail and are retried.

Verification, afterwards, reads the labels table directly (and checks the export endpoint):

* ``acknowledged``: distinct ``client_id``\\ s the server acknowledged;
* ``stored``: label rows of the campaign;
* ``lost``: acknowledged ``client_id``\\ s with no row (for that annotator);
* ``duplicates``: rows beyond one per (annotator, ``client_id``) plus rows beyond one per
  (annotator, item) (a retry stored as a second row shows up as the latter);
* ``over_k``: items with more than k labels; ``wrong_label_id``: acknowledgements whose
  ``label_id`` is not the stored row's id; ``unacknowledged``: stored rows never acknowledged.

Figures: ``submissions_per_s`` = acknowledged labels over the wall time of the labelling phase
*including* the kill and restart (the downtime is printed separately); ``p95_ms`` = 95th
percentile of a submission's latency from its first POST attempt to its acknowledgement,
retries included. The exit status is 1 when anything was lost, duplicated or left unfinished.

    python benchmarks/bench_feedback.py                      # 50 annotators, 2,000 labels, SQLite
    python benchmarks/bench_feedback.py --db postgres        # a throwaway PostgreSQL server
    python benchmarks/bench_feedback.py --kill-at 0 --json-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from _harness import format_table, progress, synthetic_sentences
from _postgres import TemporaryPostgres, free_port, postgres_bindir

BENCHMARK = "feedback"
HOST = "127.0.0.1"
TASKS = ("pairwise", "thumbs", "rate")
REQUEST_TIMEOUT_S = 30.0  # one HTTP attempt
RETRY_DEADLINE_S = 180.0  # a request retried for longer than this fails the run
START_TIMEOUT_S = 120.0
BACKOFF_S = (0.02, 0.5)  # first and largest pause between retries
TOKEN_LINE = re.compile(r"its token \(shown once\): (rlhf_\S+)")
ERROR_LINE = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b| 500 ")


class BenchError(RuntimeError):
    """The benchmark could not do what it set out to (not a finding about the server)."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------- the server process


class FeedbackServer:
    """``rlhf feedback serve`` as a child process (no shell in between: ``pid`` is the Python
    process running uvicorn), its stdout and stderr appended to ``log_path``."""

    def __init__(self, db: str, port: int, log_path: Path) -> None:
        self.db, self.port, self.log_path = db, port, log_path
        self.base_url = f"http://{HOST}:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # start, sigkill and stop come from two threads (the killer, and the main thread's
        # clean-up on an error or Ctrl-C): after stop, nothing starts again
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        command = [sys.executable, "-m", "rlhf.cli", "feedback", "serve"]
        command += ["--db", self.db, "--host", HOST, "--port", str(self.port)]
        env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        with self._lock:
            if self._closed:
                raise BenchError("the server was stopped; not starting it again")
            self.starts += 1
            with self.log_path.open("ab") as log:
                log.write(f"==== bench: server start {self.starts}\n".encode())
                log.flush()
                # its own session: a Ctrl-C in the terminal reaches us only, and we stop it
                self.process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.process is None or self.process.poll() is not None:
                    raise BenchError(f"the server exited during start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/api/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise BenchError(f"the server was not healthy after {timeout:.0f} s")
                time.sleep(0.05)

    def sigkill(self) -> None:
        """SIGKILL the server process (the Python process running uvicorn) and reap it."""
        with self._lock:
            if self._closed or self.process is None:
                raise BenchError("the server was stopped; nothing to kill")
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Stop the server for good (SIGTERM, then SIGKILL after 15 s)."""
        with self._lock:
            self._closed = True
            if self.process is None or self.process.poll() is not None:
                return
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def admin_token(self) -> str | None:
        found = TOKEN_LINE.search(self.log_text())
        return found.group(1) if found else None

    def error_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if ERROR_LINE.search(line)]


def create_admin_directly(db: str) -> str:
    """An admin token for a database that already had an admin (so the server printed none)."""
    from rlhf.feedback import service
    from rlhf.feedback.db import database_url, make_engine, session_factory

    engine = make_engine(database_url(db))
    try:
        with session_factory(engine)() as session:
            _, token = service.create_user(session, f"bench-admin-{uuid.uuid4().hex[:8]}", "admin")
            session.commit()
    finally:
        engine.dispose()
    return token


# ---------------------------------------------------------------- setup


def campaign_source(task: str, items: int, seed: int) -> str:
    """JSONL giving exactly ``items`` items: pairwise rows of two distinct responses, thumbs
    and rate rows of one."""
    per_row = 2 if task == "pairwise" else 1
    sentences = iter(synthetic_sentences(items * (1 + per_row) * 2, seed))
    rows = []
    for i in range(items):
        prompt = f"Request {i}: {next(sentences)} {next(sentences)}"
        responses = [
            f"Reply {j} to {i}: {next(sentences)} {next(sentences)}" for j in range(per_row)
        ]
        rows.append(json.dumps({"prompt": prompt, "responses": responses}))
    return "\n".join(rows) + "\n"


def answer(task: str, rng: random.Random) -> dict[str, Any]:
    if task == "pairwise":
        return {"choice": rng.randint(1, 8)}
    if task == "thumbs":
        return {"up": rng.random() < 0.5}
    return {"rating": rng.randint(1, 5)}


@dataclass
class Setup:
    admin_token: str
    annotators: list[tuple[int, str]]  # (user id, token)
    campaign_id: int
    items: int


def set_up(server: FeedbackServer, db: str, args: argparse.Namespace, run_id: str) -> Setup:
    token = server.admin_token()
    if token is None:
        progress("the database already had an admin; creating one for the benchmark")
        token = create_admin_directly(db)
    items = math.ceil(args.labels / args.k)
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as admin:
        annotators = []
        for i in range(args.annotators):
            response = admin.post(
                "/api/admin/users", json={"name": f"bench-{run_id}-{i:03d}", "role": "annotator"}
            )
            if response.status_code != 201:
                raise BenchError(
                    f"creating an annotator: HTTP {response.status_code} {response.text}"
                )
            annotators.append((response.json()["id"], response.json()["token"]))
        response = admin.post(
            "/api/admin/campaigns",
            json={
                "name": f"bench-{run_id}",
                "task_type": args.task,
                "k": args.k,
                "source_jsonl": campaign_source(args.task, items, args.seed),
            },
        )
        if response.status_code != 201:
            raise BenchError(f"creating the campaign: HTTP {response.status_code} {response.text}")
        campaign = response.json()
    if campaign["items"] != items:
        raise BenchError(f"the campaign has {campaign['items']} items, expected {items}")
    return Setup(token, annotators, campaign["id"], items)


# ---------------------------------------------------------------- the labelling phase


@dataclass
class Acknowledged:
    user_id: int
    client_id: str
    label_id: int
    assignment_id: int
    latency_s: float  # first attempt to acknowledgement
    at: float  # perf_counter of the acknowledgement
    attempts: int
    duplicate: bool  # the server answered from a copy an earlier attempt had stored


class Tally:
    """What the annotator threads share: the submissions left to start, the
    acknowledgements, retry counts and errors."""

    def __init__(self, labels: int, kill_after: int | None) -> None:
        self.lock = threading.Lock()
        self.tickets = labels  # submissions not yet started
        self.acks: list[Acknowledged] = []
        self.next_latencies: list[float] = []
        self.retries: Counter[str] = Counter()
        self.errors: list[str] = []
        self.kill_after = kill_after
        self.kill_now = threading.Event()
        self.abort = threading.Event()

    def take_ticket(self) -> bool:
        with self.lock:
            if self.tickets <= 0:
                return False
            self.tickets -= 1
            return True

    def return_ticket(self) -> None:
        with self.lock:
            self.tickets += 1

    def acknowledge(self, ack: Acknowledged) -> None:
        with self.lock:
            self.acks.append(ack)
            if self.kill_after is not None and len(self.acks) >= self.kill_after:
                self.kill_now.set()

    def retried(self, reason: str) -> None:
        with self.lock:
            self.retries[reason] += 1

    def failed(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def call(
    client: httpx.Client, method: str, path: str, body: dict[str, Any] | None, tally: Tally
) -> tuple[dict[str, Any], int]:
    """Send one request until the server answers it; the same body on every attempt.

    Returns the JSON answer and the number of attempts. Retried: transport errors (refused,
    reset, timed out), 5xx, and the 409 the app answers a unique-constraint race with.
    Anything else is a :class:`BenchError`.
    """
    deadline = time.monotonic() + RETRY_DEADLINE_S
    pause, attempts = BACKOFF_S[0], 0
    while True:
        attempts += 1
        try:
            response = client.request(method, path, json=body)
        except httpx.TransportError as error:
            reason = type(error).__name__
        else:
            if response.status_code == 200:
                with contextlib.suppress(ValueError):
                    return response.json(), attempts
                reason = "unreadable 200"
            elif response.status_code >= 500 or (
                response.status_code == 409 and "concurrent" in response.text
            ):
                reason = f"HTTP {response.status_code}"
            else:
                raise BenchError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        tally.retried(f"{method.split()[0]} {reason}")
        if tally.abort.is_set() or time.monotonic() > deadline:
            raise BenchError(f"{method} {path}: still failing after {attempts} attempts ({reason})")
        time.sleep(pause)
        pause = min(2 * pause, BACKOFF_S[1])


def annotate(
    base_url: str,
    user_id: int,
    token: str,
    campaign_id: int,
    task: str,
    seed: int,
    tally: Tally,
    ready: threading.Barrier,
) -> None:
    """One simulated annotator: next item, label it, until nothing is left to submit."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(
        base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        ready.wait()
        try:
            while not tally.abort.is_set() and tally.take_ticket():
                start = time.perf_counter()
                got, _ = call(client, "GET", f"/api/campaigns/{campaign_id}/next", None, tally)
                with tally.lock:
                    tally.next_latencies.append(time.perf_counter() - start)
                assignment = got.get("assignment")
                if assignment is None:
                    tally.return_ticket()
                    return
                body = {"client_id": str(uuid.uuid4()), **answer(task, rng)}
                start = time.perf_counter()
                path = f"/api/assignments/{assignment['id']}/label"
                got, attempts = call(client, "POST", path, body, tally)
                now = time.perf_counter()
                tally.acknowledge(
                    Acknowledged(
                        user_id,
                        body["client_id"],
                        int(got["label_id"]),
                        assignment["id"],
                        now - start,
                        now,
                        attempts,
                        bool(got["duplicate"]),
                    )
                )
        except Exception as error:  # recorded and reported; the others go on
            tally.failed(f"annotator {user_id}: {type(error).__name__}: {error}")


@dataclass
class Restart:
    acks_at_kill: int = 0
    killed_at: float = 0.0  # perf_counter when SIGKILL was sent
    dead_s: float = 0.0  # SIGKILL until the process was reaped
    healthy_at: float = 0.0  # perf_counter when the new server answered /api/health
    error: str | None = None

    @property
    def downtime_s(self) -> float:
        return self.healthy_at - self.killed_at


def kill_and_restart(server: FeedbackServer, tally: Tally, done: threading.Event) -> Restart:
    """Wait for the kill point, SIGKILL the server, start it again on the same port and db."""
    restart = Restart()
    while not tally.kill_now.wait(0.05):
        if done.is_set() or tally.abort.is_set():
            restart.error = "the labelling ended before the kill point"
            return restart
    with tally.lock:
        restart.acks_at_kill = len(tally.acks)
    restart.killed_at = time.perf_counter()
    server.sigkill()
    restart.dead_s = time.perf_counter() - restart.killed_at
    server.start()
    server.wait_healthy()
    restart.healthy_at = time.perf_counter()
    return restart


# ---------------------------------------------------------------- verification


def verify(db: str, setup: Setup, acks: list[Acknowledged], k: int) -> dict[str, Any]:
    """Compare the acknowledgements with the campaign's rows in the labels table."""
    from sqlalchemy import select

    from rlhf.feedback.db import Label, database_url, make_engine, session_factory

    engine = make_engine(database_url(db))
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Label.id, Label.user_id, Label.client_id, Label.item_id).where(
                    Label.campaign_id == setup.campaign_id
                )
            ).all()
    finally:
        engine.dispose()
    by_client = Counter((user, client) for _, user, client, _ in rows)
    by_item_user = Counter((item, user) for _, user, _, item in rows)
    per_item = Counter(item for *_, item in rows)
    stored_id = {(user, client): label_id for label_id, user, client, _ in rows}
    acknowledged = {(a.user_id, a.client_id): a.label_id for a in acks}
    return {
        "acknowledged": len(acknowledged),
        "stored": len(rows),
        "lost": sum(key not in stored_id for key in acknowledged),
        "duplicates": (len(rows) - len(by_client)) + (len(rows) - len(by_item_user)),
        "over_k": sum(n > k for n in per_item.values()),
        "wrong_label_id": sum(
            key in stored_id and stored_id[key] != label_id
            for key, label_id in acknowledged.items()
        ),
        "unacknowledged": sum(key not in acknowledged for key in by_client),
        "items_labelled": len(per_item),
    }


def export_check(server: FeedbackServer, setup: Setup) -> dict[str, int]:
    """The export endpoint's view: rows and distinct (item, annotator) pairs."""
    with httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {setup.admin_token}"},
        timeout=120,
    ) as admin:
        response = admin.get(f"/api/admin/campaigns/{setup.campaign_id}/export")
    if response.status_code != 200:
        raise BenchError(f"export: HTTP {response.status_code} {response.text[:300]}")
    rows = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return {
        "export_rows": len(rows),
        "export_pairs": len({(row["item"], row["annotator"]) for row in rows}),
    }


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def database(choice: str | None, work: Path) -> Iterator[tuple[str, str]]:
    """(``--db`` value for the server, kind): a fresh SQLite file, a throwaway PostgreSQL
    server's database, or what was given."""
    if choice is None:
        yield str(work / "feedback.db"), "sqlite"
    elif choice == "postgres":
        bindir = postgres_bindir()
        if bindir is None:
            raise BenchError(
                "--db postgres needs PostgreSQL's server binaries under /usr/lib/postgresql "
                "(bash scripts/test_services.sh installs them)"
            )
        pg = TemporaryPostgres(bindir, durable=True)  # as durable as SQLite's synchronous=FULL
        try:
            progress("starting a throwaway PostgreSQL server")
            pg.start()
            pg.execute("CREATE DATABASE bench")
            yield pg.url("bench"), "postgresql"
        finally:
            pg.stop()
    else:
        scheme = choice.split("://", 1)[0] if "://" in choice else "sqlite"
        yield choice, "postgresql" if scheme.startswith("postgres") else scheme.split("+")[0]


def labelling_phase(
    server: FeedbackServer, setup: Setup, args: argparse.Namespace
) -> tuple[Tally, Restart | None, float, float]:
    """Run the annotators (and the killer); returns the tally, the restart, start and end."""
    kill_after = max(1, math.floor(args.kill_at * args.labels)) if args.kill_at > 0 else None
    tally = Tally(args.labels, kill_after)
    ready = threading.Barrier(len(setup.annotators) + 1)
    threads = [
        threading.Thread(
            target=annotate,
            args=(
                server.base_url,
                user_id,
                token,
                setup.campaign_id,
                args.task,
                args.seed * 100_003 + i,
                tally,
                ready,
            ),
            name=f"annotator-{i}",
            daemon=True,
        )
        for i, (user_id, token) in enumerate(setup.annotators)
    ]
    done = threading.Event()
    restart_box: list[Restart] = []
    killer_errors: list[BaseException] = []

    def killer() -> None:
        try:
            restart_box.append(kill_and_restart(server, tally, done))
        except BaseException as error:
            killer_errors.append(error)
            tally.abort.set()

    killer_thread = threading.Thread(target=killer, name="killer", daemon=True)
    for thread in threads:
        thread.start()
    if kill_after is not None:
        killer_thread.start()
    ready.wait()
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.join()
        end = time.perf_counter()
        done.set()
        if kill_after is not None:
            killer_thread.join()
    except BaseException:
        tally.abort.set()
        raise
    if killer_errors:
        raise BenchError(f"kill and restart failed: {killer_errors[0]}") from killer_errors[0]
    return tally, (restart_box[0] if restart_box else None), start, end


def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The whole benchmark; the result line and the lines of the human-readable report."""
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        work = Path(tmp)
        log_path = Path(args.server_log) if args.server_log else work / "server.log"
        with database(args.db, work) as (db, kind):
            server = FeedbackServer(db, args.port or free_port(), log_path)
            try:
                setup_start = time.perf_counter()
                server.start()
                server.wait_healthy()
                started_s = time.perf_counter() - setup_start
                setup = set_up(server, db, args, run_id)
                setup_s = time.perf_counter() - setup_start
                progress(
                    f"{args.annotators} annotators labelling {args.labels} {args.task} labels "
                    f"(k={args.k}, {setup.items} items) on {kind}"
                    + (f", SIGKILL after {args.kill_at:.0%}" if args.kill_at > 0 else "")
                )
                tally, restart, start, end = labelling_phase(server, setup, args)
                progress("verifying the stored labels")
                checks = verify(db, setup, tally.acks, args.k)
                checks |= export_check(server, setup)
                server_errors = server.error_lines()
            finally:
                server.stop()
    return summarise(
        args, kind, setup, tally, restart, start, end, started_s, setup_s, checks, server_errors
    )


def summarise(
    args: argparse.Namespace,
    kind: str,
    setup: Setup,
    tally: Tally,
    restart: Restart | None,
    start: float,
    end: float,
    started_s: float,
    setup_s: float,
    checks: dict[str, Any],
    server_errors: list[str],
) -> tuple[dict[str, Any], list[str]]:
    acks = tally.acks
    wall = end - start
    latencies_ms = [1000 * a.latency_s for a in acks]
    first_try_ms = [1000 * a.latency_s for a in acks if a.attempts == 1]
    retried = [a for a in acks if a.attempts > 1]
    p95 = percentile(latencies_ms, 95)
    result = {
        "submissions_per_s": round(checks["acknowledged"] / wall, 2) if wall > 0 else None,
        "p95_ms": None if p95 is None else round(p95, 1),
        "acknowledged": checks["acknowledged"],
        "stored": checks["stored"],
        "lost": checks["lost"],
        "duplicates": checks["duplicates"],
        "benchmark": BENCHMARK,
        "db": kind,
        "task": args.task,
        "annotators": args.annotators,
        "labels": args.labels,
        "k": args.k,
        "kill_at": args.kill_at,
        "restarts": 0 if restart is None or restart.killed_at == 0 else 1,
        "kill_downtime_s": (
            round(restart.downtime_s, 3) if restart and restart.killed_at else None
        ),
        "wall_s": round(wall, 3),
        "retried_submissions": len(retried),
        "duplicate_acks": sum(a.duplicate for a in acks),
        "over_k": checks["over_k"],
        "wrong_label_id": checks["wrong_label_id"],
        "unacknowledged": checks["unacknowledged"],
        "export_rows": checks["export_rows"],
        "errors": len(tally.errors),
        "server_error_lines": len(server_errors),
    }

    def rate(count: int, seconds: float) -> float | None:
        return count / seconds if seconds > 0 else None

    lines = [
        f"feedback server: {args.annotators} annotator threads, {args.labels} {args.task} "
        f"labels (k={args.k}, {setup.items} items), {kind}, loopback, {os.cpu_count()} CPUs "
        "shared by server and clients",
        f"setup: server healthy after {started_s:.2f} s, accounts and campaign after {setup_s:.2f} s",
    ]
    rows: list[list[Any]] = []
    if restart is not None and restart.killed_at:
        before = sum(a.at <= restart.killed_at for a in acks)
        after = [a for a in acks if a.at >= restart.healthy_at]
        during = len(acks) - before - len(after)
        rows += [
            [
                "before the kill",
                before,
                restart.killed_at - start,
                rate(before, restart.killed_at - start),
            ],
            ["kill -> healthy", during, restart.downtime_s, rate(during, restart.downtime_s)],
            [
                "after the restart",
                len(after),
                end - restart.healthy_at,
                rate(len(after), end - restart.healthy_at),
            ],
        ]
        lines.append(
            f"SIGKILL after {restart.acks_at_kill} acknowledgements: process gone in "
            f"{1000 * restart.dead_s:.0f} ms, restarted server healthy {restart.downtime_s:.2f} s "
            f"after the kill"
        )
    rows.append(["whole phase", len(acks), wall, rate(len(acks), wall)])
    lines.append(format_table(["phase", "labels", "seconds", "labels/s"], rows))
    if restart is not None and restart.killed_at:
        lines.append(
            f"labels/s without the downtime: {rate(len(acks), wall - restart.downtime_s):.1f}"
        )
    lines.append(
        format_table(
            ["latency (ms)", "n", "p50", "p95", "p99", "max"],
            [
                [
                    "label POST, first try to ack",
                    len(latencies_ms),
                    *(percentile(latencies_ms, q) for q in (50, 95, 99, 100)),
                ],
                [
                    "label POST, answered first try",
                    len(first_try_ms),
                    *(percentile(first_try_ms, q) for q in (50, 95, 99, 100)),
                ],
                [
                    "GET next (with retries)",
                    len(tally.next_latencies),
                    *(
                        percentile([1000 * s for s in tally.next_latencies], q)
                        for q in (50, 95, 99, 100)
                    ),
                ],
            ],
        )
    )
    lines.append(
        f"retries: {dict(tally.retries) or 'none'}; {len(retried)} submissions needed a retry, "
        f"{result['duplicate_acks']} of them were answered from a copy stored before the kill"
    )
    lines.append(
        f"check: acknowledged {result['acknowledged']}, stored {result['stored']}, lost "
        f"{result['lost']}, duplicates {result['duplicates']}, items over k {result['over_k']}, "
        f"wrong label ids {result['wrong_label_id']}, stored but unacknowledged "
        f"{result['unacknowledged']}, export rows {result['export_rows']} "
        f"({checks['export_pairs']} distinct item/annotator pairs)"
    )
    for error in tally.errors[:10]:
        lines.append(f"client error: {error}")
    if server_errors:
        lines.append(f"server log: {len(server_errors)} error lines, e.g.")
        lines += [f"  {line}" for line in server_errors[:10]]
    return result, lines


def failures(result: dict[str, Any]) -> list[str]:
    problems = [
        f"{key} = {result[key]}"
        for key in ("lost", "duplicates", "over_k", "wrong_label_id", "unacknowledged", "errors")
        if result[key]
    ]
    if result["acknowledged"] != result["labels"]:
        problems.append(f"acknowledged {result['acknowledged']} of {result['labels']} labels")
    if result["stored"] != result["acknowledged"]:
        problems.append(f"stored {result['stored']} != acknowledged {result['acknowledged']}")
    if result["export_rows"] != result["stored"]:
        problems.append(f"export has {result['export_rows']} rows for {result['stored']} labels")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--annotators", type=int, default=50, help="concurrent annotators")
    parser.add_argument("--labels", type=int, default=2000, help="labels to submit in all")
    parser.add_argument(
        "--db",
        default=None,
        help="default: a fresh SQLite file in a temp dir; `postgres`: a throwaway PostgreSQL "
        "server; or a SQLite path or database URL (a fresh database is best)",
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.5,
        help="SIGKILL and restart the server once this fraction of the labels is acknowledged "
        "(0: never; default %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--task", choices=TASKS, default="pairwise")
    parser.add_argument("--k", type=int, default=2, help="distinct annotators per item")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", default=None, help="keep the server's log at this path")
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON result line on stdout"
    )
    args = parser.parse_args(argv)
    if args.annotators < 1 or args.labels < 1:
        parser.error("--annotators and --labels must be at least 1")
    if not 0 <= args.kill_at < 1:
        parser.error("--kill-at must be in [0, 1)")
    if not 1 <= args.k <= min(50, args.annotators):
        parser.error("--k must be between 1 and min(50, --annotators)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result, lines = run(args)
    except BenchError as error:
        progress(f"failed: {error}")
        return 2
    except KeyboardInterrupt:
        progress("interrupted; the server was stopped")
        return 130
    if not args.json_only:
        print("\n".join(lines), flush=True)
    problems = failures(result)
    if problems:
        progress("FAILED: " + "; ".join(problems))
    print(json.dumps(result), flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
