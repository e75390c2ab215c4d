"""What `--help` says a run uses is what a run uses, and a recipe runs from overrides alone."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.config import load_config
from tests.recipe_configs import RECIPE_CONFIGS, config_class

runner = CliRunner()

# the least a run needs: a model and its data
REQUIRED = {
    "sft": ["data.train=d.jsonl"],
    "pretrain": ["data.train=d.jsonl"],
    "rm": ["data.train=d.jsonl"],
    "pm": ["data.train=d.jsonl"],
    "prm": ["data.train=d.jsonl"],
    "raft": ["prompts=d.jsonl", "reward.rule=arithmetic"],
    "iterative-dpo": ["prompts=d.jsonl", "reward.rule=arithmetic"],
    "sppo": ["data.prompts=d.jsonl", "reward.rule=arithmetic", "preference.rule=world_gold"],
    "nash-md": ["data.prompts=d.jsonl", "reward.rule=arithmetic", "preference.rule=world_gold"],
    "dpo": ["data.train=d.jsonl"],
    "kto": ["data.train=d.jsonl"],
    "ppo": ["data.prompts=d.jsonl", "reward.rule=arithmetic"],
}
ONLINE = ["data.prompts=d.jsonl", "reward.rule=arithmetic"]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def help_defaults(recipe):
    """`key -> default` as `rlhf RECIPE --help` prints them."""
    result = runner.invoke(app, [recipe, "--help"], terminal_width=400)
    assert result.exit_code == 0
    rows = re.findall(r"^\s+([\w.]+)\s+.*\[[^\[\]]*; default (.*)\]$", result.output, re.M)
    return dict(rows)


def flatten(data, prefix=""):
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("recipe", sorted(RECIPE_CONFIGS))
def test_help_prints_the_defaults_a_run_resolves(recipe, tmp_path):
    shown = help_defaults(recipe)
    assert len(shown) > 20
    overrides = ["model.path=some/model", f"out={tmp_path / 'run'}"]
    overrides += REQUIRED.get(recipe, ONLINE)
    resolved = flatten(load_config(config_class(recipe), None, overrides).model_dump())
    given = {override.split("=")[0] for override in overrides}
    compared = 0
    for key, default in shown.items():
        if default == "required" or key in given or key not in resolved:
            continue
        assert default == repr(resolved[key]), key
        compared += 1
    assert compared > 20


def test_grpo_help_shows_grpos_own_kl_defaults():
    shown = help_defaults("grpo")
    assert (shown["kl.coef"], shown["kl.estimator"], shown["kl.in_reward"]) == (
        "0.04",
        "'k3'",
        "False",
    )


def test_a_recipe_runs_from_overrides_alone_on_a_model_folder(tiny_model_dir, tmp_path):
    data = tmp_path / "demos.jsonl"
    rows = [{"prompt": f"Say {i}.", "completion": f" {i} {i} {i}."} for i in range(24)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "sft"
    result = invoke(
        "sft", f"model.path={tiny_model_dir}", f"data.train={data}", "train.max_steps=2",
        "train.batch_size=4", "data.max_length=128", f"out={out}", "progress=false",
        "tensorboard=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "model" / "model.safetensors").exists()
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["train"]["lr"] == 2e-5  # SFT's default for a pretrained model


def test_overrides_alone_without_the_required_keys_say_which(tmp_path):
    result = invoke("dpo", f"out={tmp_path / 'x'}")
    assert result.exit_code == 2
    assert "model: required" in result.output and "model.path=" in result.output
    assert "data: required" in result.output and "data.train=" in result.output
    assert "--preset" in result.output


def test_a_section_given_in_part_keeps_the_recipes_other_defaults(tmp_path):
    """kl.coef=0.1 on GRPO changes β only: the estimator stays k3 in the loss (the class
    alone would say k1 in the reward), and train.max_steps leaves SFT's learning rate."""
    grpo = load_config(
        config_class("grpo"),
        None,
        ["model.path=m", "data.prompts=p.jsonl", "reward.rule=arithmetic", "kl.coef=0.1"],
    )
    assert (grpo.kl.coef, grpo.kl.estimator, grpo.kl.in_reward) == (0.1, "k3", False)
    sft = load_config(config_class("sft"), None, ["model.path=m", "data.train=d.jsonl"])
    partial = load_config(
        config_class("sft"), None, ["model.path=m", "data.train=d.jsonl", "train.max_steps=3"]
    )
    assert partial.train.lr == sft.train.lr == 2e-5 and partial.train.max_steps == 3
    # a value given explicitly still wins over the recipe's default
    explicit = load_config(
        config_class("grpo"),
        None,
        ["model.path=m", "data.prompts=p.jsonl", "reward.rule=arithmetic", "kl.estimator=k2"],
    )
    assert (explicit.kl.coef, explicit.kl.estimator) == (0.04, "k2")


def test_a_reward_given_in_part_replaces_the_default_reward():
    """The pipeline's gold reward defaults to rule=world_gold: eval.gold.model=PATH names
    another reward (one source only), not world_gold plus a model."""
    from rlhf.recipes.pipeline import PipelineConfig

    config = load_config(PipelineConfig, None, ["model.path=m", "eval.gold.model=runs/rm/model"])
    assert (config.eval.gold.model, config.eval.gold.rule) == ("runs/rm/model", None)
