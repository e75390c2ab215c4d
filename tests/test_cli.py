"""Every command through the real CLI, including the tiny presets end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhf.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("sft", "pretrain", "data", "quickstart"):
        assert command in result.output


def test_recipe_help_documents_config_keys():
    result = invoke("sft", "--help")
    assert result.exit_code == 0
    assert "train.lr" in result.output and "Peak learning rate" in result.output
    assert "data.packing" in result.output


def test_unknown_key_fails_at_load_naming_it(tmp_path):
    result = invoke("sft", "--preset", "tiny", f"out={tmp_path}", "train.learning_rate=1")
    assert result.exit_code == 2
    assert "train.learning_rate: unknown key" in result.output
    assert not (tmp_path / "checkpoints").exists()


def test_missing_data_file_is_a_clear_error(tmp_path):
    result = invoke(
        "sft",
        "--preset",
        "tiny",
        f"out={tmp_path / 'run'}",
        f"data.train={tmp_path / 'nope.jsonl'}",
    )
    assert result.exit_code == 1
    assert "nope.jsonl" in result.output and "Traceback" not in result.output


def test_sft_tiny_preset_end_to_end_and_resume_guard(tmp_path):
    out = tmp_path / "sft"
    result = invoke("sft", "--preset", "tiny", f"out={out}", "progress=false")
    assert result.exit_code == 0, result.output
    assert (out / "model" / "model.safetensors").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    evals = [row for row in rows if row["split"] == "eval"]
    assert train[-1]["loss"] < train[0]["loss"] * 0.5
    assert evals and evals[-1]["loss"] < train[0]["loss"]
    # a second run into the same folder must not clobber it
    again = invoke("sft", "--preset", "tiny", f"out={out}")
    assert again.exit_code == 1 and "--resume" in again.output


def test_pretrain_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "pre"
    result = invoke("pretrain", "--preset", "tiny", f"out={out}", "progress=false")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 150
    assert (out / "model" / "config.json").exists()


def test_data_check_reports_file_line_and_counts(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "Hi", "chosen": "Same", "rejected": "Same"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = invoke("data", "check", str(path))
    assert f"{path}:2" in result.output
    assert result.exit_code == 1
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps(rows[0]) + "\n")
    result = invoke("data", "check", str(ok), "--kind", "preference")
    assert result.exit_code == 0, result.output
    assert "preference" in result.output
    assert "examples as read" in result.output and "[[" not in result.output


def test_data_check_with_a_model_explains_its_markers(tmp_path, tiny_model_dir):
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    result = invoke("data", "check", str(ok), "--model", str(tiny_model_dir))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps the legend at the terminal's width
    assert output.index("[[...]] marks the tokens trained on") < output.index("[[Hello!")


@pytest.mark.parametrize("bad", ["train.lr=-1", "train.batch_size=zero"])
def test_ill_typed_values_exit_2(bad, tmp_path):
    result = invoke("sft", "--preset", "tiny", f"out={tmp_path}", bad)
    assert result.exit_code == 2 and bad.split("=")[0] in result.output
