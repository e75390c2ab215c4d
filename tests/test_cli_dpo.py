"""`rlhf dpo` and `rlhf kto` through the real CLI: tiny presets, the --loss shortcut, errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhf.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "reference"


def test_help_lists_the_keys_and_the_loss_shortcut():
    result = invoke("dpo", "--help")
    assert result.exit_code == 0
    for key in ("--loss", "loss.name", "loss.beta", "reference.path", "eval.kl_prompts"):
        assert key in result.output
    kto = invoke("kto", "--help")
    assert kto.exit_code == 0 and "loss.desirable_weight" in kto.output
    assert "--loss" not in kto.output


def test_dpo_tiny_preset_learns_and_reports_the_sampled_kl(tmp_path, cache):
    out = tmp_path / "dpo"
    result = invoke("dpo", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false")
    assert result.exit_code == 0, result.output
    assert "held-out:" in result.output and "accuracy" in result.output and "kl" in result.output
    rows = read_jsonl(out / "metrics.jsonl")
    evals = [row for row in rows if row["split"] == "eval"]
    assert evals[-1]["accuracy"] > 0.6 and evals[-1]["margin"] > 0
    assert 0 < evals[-1]["kl"] < 50
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert len(list(cache.glob("*.safetensors"))) == 1


def test_loss_shortcut_and_override_pick_the_loss(tmp_path, cache):
    short = ["train.max_steps=4", "eval.kl_prompts=2", "progress=false", "tensorboard=false"]
    result = invoke("dpo", "--preset", "tiny", "--loss", "ipo", f"out={tmp_path / 'a'}", *short)
    assert result.exit_code == 0, result.output
    written = (tmp_path / "a" / "config.yaml").read_text()
    assert "name: ipo" in written
    # an explicit key=value wins over the shortcut; simpo needs no reference and no cache
    result = invoke(
        "dpo", "--preset", "tiny", "--loss", "ipo", "loss.name=simpo", f"out={tmp_path / 'b'}",
        *short,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "name: simpo" in (tmp_path / "b" / "config.yaml").read_text()


def test_kto_tiny_preset(tmp_path, cache):
    out = tmp_path / "kto"
    result = invoke("kto", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false")
    assert result.exit_code == 0, result.output
    evals = [row for row in read_jsonl(out / "metrics.jsonl") if row["split"] == "eval"]
    assert evals[-1]["reward_margin"] > 0 and evals[-1]["kl"] > 0
    assert (out / "model" / "model.safetensors").is_file()


def test_bad_loss_name_exits_2_naming_the_key(tmp_path):
    for args in (["loss.name=dpoo"], ["--loss", "dpoo"]):
        result = invoke("dpo", "--preset", "tiny", f"out={tmp_path}", *args)
        assert result.exit_code == 2 and "loss.name" in result.output, result.output
        assert "Traceback" not in result.output


def test_a_hyperparameter_the_loss_does_not_read_is_an_error(tmp_path):
    result = invoke("dpo", "--preset", "tiny", f"out={tmp_path}", "loss.gamma=1.0")
    assert result.exit_code == 2
    assert "loss.gamma" in result.output and "simpo" in result.output


def test_demonstrations_are_not_preferences(tmp_path, cache):
    result = invoke(
        "dpo", "--preset", "tiny", f"out={tmp_path}", "data.train=builtin:arithmetic",
        "progress=false",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "builtin:arithmetic" in result.output and "Traceback" not in result.output
