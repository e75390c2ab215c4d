"""``rlhf loop``: rounds through the feedback app with annotator bots labelling over HTTP, the
database as the source of truth (a loop SIGKILLed mid-round resumes without losing or
repeating a label), admins starting rounds from the admin page."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from rlhf.config import ConfigError, load_config, preset_path, read_yaml
from rlhf.feedback.db import Campaign, Item, Label, Loop, LoopRound, User
from rlhf.recipes.loop import LoopConfig, run_loop

with contextlib.suppress(ImportError):  # the `browser` fixture skips (or fails under CI) then
    from playwright.sync_api import expect

pytestmark = pytest.mark.slow

# the tiny preset, cut further: each round a few seconds
SMALL = [
    "progress=false",
    "pretrain.train.max_steps=30",
    "sft.train.max_steps=10",
    "rounds=2",
    "labels_per_round=8",
    "selection.pool=2",
    "compare_items=4",
    "reward_model.train.max_steps=5",
    "policy.train.max_steps=4",
    "eval.count=8",
]


def small_config(out: Path, *overrides: str) -> LoopConfig:
    base = read_yaml(preset_path("loop", "tiny"))
    return load_config(LoopConfig, None, [f"out={out}", *SMALL, *overrides], base=base)


def database(out: Path) -> Session:
    return Session(create_engine(f"sqlite:///{out / 'feedback.db'}"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def check_labels_stored_once_and_used(out: Path, k: int) -> dict[int, list[Label]]:
    """Each round's campaign: every item labelled by exactly k different bots, and the
    round's labels.jsonl holds exactly the stored labels (one row per label)."""
    by_round = {}
    with database(out) as session:
        for entry in session.scalars(select(LoopRound).order_by(LoopRound.number)):
            assert entry.status == "done"
            campaign = session.get(Campaign, entry.campaign_id)
            assert campaign.status == "closed"
            labels = session.scalars(select(Label).where(Label.campaign_id == campaign.id)).all()
            items = session.scalars(select(Item.id).where(Item.campaign_id == campaign.id)).all()
            per_item: dict[int, set[int]] = {item: set() for item in items}
            for label in labels:
                assert label.user_id not in per_item[label.item_id], "an item labelled twice"
                per_item[label.item_id].add(label.user_id)
                assert session.get(User, label.user_id).name.startswith(f"{out.name}-bot-")
            assert all(len(users) == k for users in per_item.values())
            exported = read_jsonl(out / "rounds" / f"round-{entry.number}" / "labels.jsonl")
            assert sorted((row["item"], row["annotator"]) for row in exported) == sorted(
                (label.item_id, f"a{label.user_id}") for label in labels
            )
            by_round[entry.number] = labels
    return by_round


def test_two_rounds_labelled_by_bots_over_http(tmp_path: Path) -> None:
    out = tmp_path / "loop"
    seen: list[int] = []
    result = run_loop(small_config(out), on_round=lambda summary: seen.append(summary["round"]))
    assert seen == [1, 2] and [r["round"] for r in result.rounds] == [1, 2]
    labels = check_labels_stored_once_and_used(out, k=1)
    first, second = result.rounds
    assert (first["labels"], first["train_labels"], first["compare_labels"]) == (8, 8, 0)
    # round 2 adds the model-against-model items: the SFT policy against round 1's
    assert second["train_labels"] == 8 and 1 <= second["compare_labels"] <= 4
    assert second["labels"] == len(labels[2]) and second["labels_total"] == 8 + len(labels[2])
    assert first["rm_accuracy_fresh"] is None and 0 <= second["rm_accuracy_fresh"] <= 1
    assert set(second["ratings"]) == {"initial", "round-1"}
    assert second["human_win_rate_of"] == "round-1 over initial"
    for row in result.rounds:  # gold of the policy after each round, and its KL
        assert row["gold_se"] > 0 and row["kl"] > 0 and 0 <= row["win_rate_vs_previous"] <= 1
    # round 1 picks at random (no reward model yet); round 2 the most uncertain items
    assert (first["selection"], second["selection"]) == ("random", "uncertainty")
    pool = read_jsonl(out / "rounds" / "round-2" / "candidates.jsonl")
    chosen = [row["score"] for row in pool if row["selected"]]
    left = [row["score"] for row in pool if not row["selected"]]
    assert len(chosen) == 8 and min(chosen) >= max(left)
    # the model-against-model pairs are not training data
    preferences = read_jsonl(out / "rounds" / "round-2" / "preferences.jsonl")
    assert len(preferences) == 8 and not any("chosen_model" in row for row in preferences)
    # round 2's reward model warm-starts from round 1's, on all labels so far
    rm_config = (out / "rounds" / "round-2" / "reward_model-0" / "config.yaml").read_text()
    assert str(out / "rounds" / "round-1" / "reward_model-0" / "model") in rm_config
    assert len(read_jsonl(out / "rounds" / "round-2" / "reward_model_labels.jsonl")) == 16
    # round 2's DPO starts from round 1's policy
    dpo_config = (out / "rounds" / "round-2" / "policy" / "config.yaml").read_text()
    assert str(out / "rounds" / "round-1" / "policy" / "model") in dpo_config
    assert (out / "report.md").read_text().count("| 2 |") == 1 and (out / "loop.png").exists()
    assert len(read_jsonl(out / "rounds.jsonl")) == 2

    # a second run without --resume refuses; --resume of a finished loop changes nothing
    with pytest.raises(ValueError, match="already holds a loop; pass --resume"):
        run_loop(small_config(out))
    again = run_loop(small_config(out), resume=True)
    assert again.rounds == result.rounds
    check_labels_stored_once_and_used(out, k=1)


def test_a_loop_killed_mid_round_resumes_without_losing_or_repeating_a_label(
    tmp_path: Path,
) -> None:
    out = tmp_path / "killed"
    args = [f"out={out}", *SMALL, "compare_items=0", "serve.labels_per_item=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhf.cli", "loop", "--preset", "tiny"]
    process = subprocess.Popen(
        [*command, *args, "bots.speed=0.5"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    before: dict[int, tuple[int, int, dict]] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "feedback.db").exists():
                with contextlib.suppress(Exception), database(out) as session:
                    rows = session.execute(
                        text("SELECT id, item_id, user_id, value FROM labels")
                    ).all()
                    if len(rows) >= 3:  # mid-round: some of round 1's 16 labels are in
                        break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    with database(out) as session:
        status = session.scalar(select(LoopRound.status).where(LoopRound.number == 1))
        for row in session.execute(text("SELECT id, item_id, user_id, value FROM labels")):
            before[row.id] = (row.item_id, row.user_id, json.loads(row.value))
    assert status == "labelling" and 3 <= len(before) < 16

    # resume: in this process, the bots at full speed
    result = run_loop(small_config(out, "compare_items=0", "serve.labels_per_item=2"), True)
    assert [r["round"] for r in result.rounds] == [1, 2]
    labels = check_labels_stored_once_and_used(out, k=2)
    after = {label.id: (label.item_id, label.user_id, label.value) for label in labels[1]}
    assert len(after) == 16
    for label_id, stored in before.items():  # every label acknowledged before the kill: kept
        assert after[label_id] == stored
    with database(out) as session:
        assert session.scalar(select(Loop.id).where(Loop.name == "killed")) is not None
        assert len(session.scalars(select(Campaign)).all()) == 2  # one campaign per round
    # with two labels per item, agreement is measured
    assert all(row["alpha"] is not None for row in result.rounds)


def test_loop_refuses_bad_starts_with_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--resume: no loop in .*loop\.json is missing"):
        run_loop(small_config(tmp_path / "none"), resume=True)
    with pytest.raises(ConfigError, match=r"selection\.strategy"):
        small_config(tmp_path / "x", "selection.strategy=smart")
    with pytest.raises(ConfigError, match="policy_algorithm"):
        small_config(tmp_path / "x", "policy_algorithm=sft")
    with pytest.raises(ConfigError, match="reward_model"):  # a stage's own key, checked at load
        small_config(tmp_path / "x", "reward_model.train.bogus=1")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_admin_starts_a_round_and_sees_the_chart(browser: Any, tmp_path: Path) -> None:
    out = tmp_path / "admin-loop"
    port = free_port()
    config = small_config(
        out, "rounds=2", "serve.start_rounds=admin", f"serve.port={port}", "bots.count=2"
    )
    finished: list[Any] = []

    def run() -> None:
        try:
            finished.append(run_loop(config))
        except Exception as error:
            finished.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    token_file = out / "admin_token.txt"
    deadline = time.monotonic() + 120
    while not token_file.exists() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.1)
    assert token_file.exists(), "the loop did not start its app"
    context = browser.new_context(base_url=f"http://127.0.0.1:{port}")
    context.set_default_timeout(10_000)
    errors: list[str] = []
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto("/login")
        page.get_by_test_id("token").fill(token_file.read_text().strip())
        page.get_by_test_id("login").click()
        expect(page).to_have_url(re.compile("/admin$"))
        loops = page.get_by_test_id("loops")
        expect(loops).to_contain_text("admin-loop")
        rows = page.get_by_test_id("loop-round")
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("waiting")
        time.sleep(1.0)
        assert thread.is_alive() and not finished  # it waits for the admin
        page.get_by_test_id("start-round-1").click()
        expect(page.get_by_test_id("toast")).to_contain_text("round 1 started")
        # the round runs (sampling, the bots label, training) and round 2 waits for the
        # admin, the app still serving: the page follows on its own
        expect(rows.first).to_contain_text("done", timeout=120_000)
        expect(rows).to_have_count(2)
        expect(rows.nth(1)).to_contain_text("waiting")
        chart = page.get_by_test_id("loop-chart-1")
        expect(chart.get_by_test_id("loop-bar")).to_have_count(2)
        expect(chart.get_by_test_id("loop-point-win_rate_vs_previous")).to_have_count(1)
        expect(rows.first).to_contain_text("8")  # its labels
        assert thread.is_alive() and not finished
        page.get_by_test_id("start-round-1").click()  # the button now starts round 2
        expect(page.get_by_test_id("toast")).to_contain_text("round 2 started")
    finally:
        context.close()
    thread.join(timeout=120)
    assert finished and not isinstance(finished[0], Exception), finished
    assert [r["labels"] for r in finished[0].rounds] == [
        8,
        8 + finished[0].rounds[1]["compare_labels"],
    ]
    assert errors == []


def test_loop_preset_runs_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhf.cli", "loop", "--preset", "tiny", f"out={out}"]
    done = subprocess.run(
        [*command, *SMALL, "rounds=1"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr  # the console writes to stderr
    assert "round 1: 8 labels (8 so far)" in said
    assert "report at" in said and (out / "report.md").exists()


def test_an_online_policy_update_trains_against_the_rounds_reward_model(tmp_path: Path) -> None:
    out = tmp_path / "grpo-loop"
    base = read_yaml(preset_path("loop", "tiny"))
    base["policy_algorithm"] = "grpo"
    base["policy"] = {  # the preset's section is DPO's: GRPO's replaces it
        "sampling": {"max_new_tokens": 24},
        "rollout": {"iterations": 2, "prompts_per_iteration": 4, "samples_per_prompt": 4},
        "train": {"batch_size": 16},
        "eval": {"prompts": 8},
    }
    overrides = [f"out={out}", *SMALL, "rounds=1", "compare_items=0"]
    overrides.remove("policy.train.max_steps=4")
    result = run_loop(load_config(LoopConfig, None, overrides, base=base))
    [summary] = result.rounds
    assert summary["labels"] == 8 and "gold" in summary
    metrics = read_jsonl(out / "rounds" / "round-1" / "policy" / "metrics.jsonl")
    # two GRPO iterations, each scored by the round's reward model
    assert [row["step"] for row in metrics if row.get("split") == "train"] == [1, 2]
    grpo_config = (out / "rounds" / "round-1" / "policy" / "config.yaml").read_text()
    assert str(out / "rounds" / "round-1" / "reward_model-0" / "model") in grpo_config
    assert (out / "rounds" / "round-1" / "policy" / "model" / "config.json").exists()
