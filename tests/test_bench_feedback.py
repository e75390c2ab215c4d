"""benchmarks/bench_feedback.py end to end at a tiny size: a real server on SQLite, SIGKILLed
and restarted midway, and every acknowledged label stored exactly once. No timings asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_feedback.py"


@pytest.mark.slow
def test_bench_feedback_survives_a_sigkill_without_losing_or_doubling_labels(tmp_path):
    log = tmp_path / "server.log"
    command = [
        sys.executable,
        str(BENCH),
        "--annotators",
        "5",
        "--labels",
        "60",
        "--kill-at",
        "0.5",
        "--server-log",
        str(log),
        "--json-only",
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:] + log.read_text(errors="replace")[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # --json-only: the result line alone
    result = json.loads(lines[-1])
    for key in ("submissions_per_s", "p95_ms", "acknowledged", "stored", "lost", "duplicates"):
        assert key in result
    assert result["acknowledged"] == 60 == result["stored"]
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert result["restarts"] == 1 and result["kill_downtime_s"] > 0
    assert result["over_k"] == 0 and result["wrong_label_id"] == 0 and result["errors"] == 0
    assert result["export_rows"] == 60
    assert result["submissions_per_s"] > 0 and result["p95_ms"] > 0
    # two server starts in the log, and the benchmark's server is gone afterwards
    assert log.read_text().count("==== bench: server start") == 2
