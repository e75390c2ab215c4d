"""`rlhf rm` (tiny preset end to end) and `rlhf score` through the real CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.sim.builtin import load_builtin

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "rm"
    result = invoke("rm", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_rm_help_lists_its_config_keys():
    result = invoke("rm", "--help")
    assert result.exit_code == 0
    for key in ("loss.margin_scale", "normalize.data", "data.max_length", "model.lora"):
        assert key in result.output
    assert "rm" in invoke("--help").output and "score" in invoke("--help").output


def test_rm_tiny_preset_trains_evaluates_and_exports(tiny_rm):
    out, output = tiny_rm
    assert "held-out:" in output and "accuracy" in output and "ece" in output
    model = out / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 1
    assert set(config["rlhf_reward_normalization"]) == {"gain", "bias"}
    assert json.loads((model / "reward_normalization.json").read_text())["count"] > 100
    rows = read_jsonl(out / "metrics.jsonl")
    evals = [row for row in rows if row["split"] == "eval"]
    assert evals[-1]["accuracy"] > 0.6  # well above chance on held-out arithmetic
    assert evals[-1]["loss"] < 0.65


def test_score_writes_each_row_with_its_reward(tiny_rm, tmp_path):
    out, _ = tiny_rm
    pairs = load_builtin("builtin:arithmetic-preferences?n=60&seed=123")
    rows = [{"id": i, "prompt": p.prompt, "completion": p.chosen} for i, p in enumerate(pairs)]
    rows += [{"id": -i, "prompt": p.prompt, "completion": p.rejected} for i, p in enumerate(pairs)]
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored_path = tmp_path / "scored.jsonl"
    result = invoke(
        "score", "--model", out / "model", "--input", source, "--output", scored_path,
        "--batch-size", 7, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "scored 120 rows" in result.output
    scored = read_jsonl(scored_path)
    assert [row["id"] for row in scored] == [row["id"] for row in rows]  # order and columns kept
    assert all({"reward", "raw_reward", "prompt", "completion"} <= set(row) for row in scored)
    correct = sum(row["reward"] for row in scored[:60]) / 60
    wrong = sum(row["reward"] for row in scored[60:]) / 60
    assert correct > wrong


def test_score_reads_response_rows_and_writes_raw_scores(tiny_rm, tmp_path):
    out, _ = tiny_rm
    rows = [
        {"prompt": "What is 12 + 30?\n", "response": "12 + 30 = 42"},
        {"prompt": "What is 12 + 30?\n", "response": "12 + 30 = 77"},
    ]
    source = tmp_path / "responses.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    normalised, raw = tmp_path / "normalised.jsonl", tmp_path / "raw.jsonl"
    model = out / "model"
    assert invoke("score", "-m", model, "-i", source, "-o", normalised).exit_code == 0
    assert invoke("score", "-m", model, "-i", source, "-o", raw, "--raw").exit_code == 0
    normalised_rows, raw_rows = read_jsonl(normalised), read_jsonl(raw)
    assert [row["response"] for row in raw_rows] == [row["response"] for row in rows]
    assert "raw_reward" not in raw_rows[0]
    for with_norm, without in zip(normalised_rows, raw_rows, strict=True):
        assert with_norm["raw_reward"] == pytest.approx(without["reward"], abs=1e-6)
    gain = json.loads((model / "reward_normalization.json").read_text())["gain"]
    spread = normalised_rows[0]["reward"] - normalised_rows[1]["reward"]
    assert spread == pytest.approx(gain * (raw_rows[0]["reward"] - raw_rows[1]["reward"]), rel=1e-4)


def test_score_errors_are_one_clear_line(tiny_rm, tmp_path):
    out, _ = tiny_rm
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "Hi", "completion": "Hello"}\n{"prompt": "Hi"}\n')
    result = invoke("score", "-m", out / "model", "-i", source, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1
    assert "bad.jsonl:2" in result.output and "Traceback" not in result.output
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Hi", "completion": "Hello"}\n')
    missing = invoke("score", "-m", tmp_path / "nope", "-i", good, "-o", tmp_path / "o.jsonl")
    assert missing.exit_code == 1 and "nope" in missing.output


def test_rm_config_errors_name_the_key(tmp_path):
    result = invoke("rm", "--preset", "tiny", f"out={tmp_path}", "data.packing=true")
    assert result.exit_code == 2 and "data.packing" in result.output
    result = invoke("rm", "--preset", "tiny", f"out={tmp_path}", "loss.margin=1")
    assert result.exit_code == 2 and "loss.margin: unknown key" in result.output


def test_rm_on_demonstrations_says_it_needs_comparisons(tmp_path):
    result = invoke("rm", "--preset", "tiny", f"out={tmp_path}", "data.train=builtin:arithmetic")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "builtin:arithmetic: cannot make preference pairs from a completion" in result.output
