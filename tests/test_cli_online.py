"""The online recipes (`rlhf grpo|rloo|reinforce|remax|...`, every one the registry marks online
but PPO, which test_ppo.py covers) through the real CLI: help, tiny presets (shrunk), errors."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.recipes.registry import config_class, online_recipes

runner = CliRunner()

RECIPES = tuple(entry.name for entry in online_recipes() if entry.name != "ppo")
# the tiny presets, shrunk to a smoke test: a few SFT steps, one short iteration
SHRINK = (
    "init_sft.train.max_steps=5",
    "rollout.iterations=2",
    "rollout.prompts_per_iteration=8",
    "rollout.samples_per_prompt=4",
    "rollout.minibatch_size=16",
    "train.batch_size=16",
    "eval.prompts=8",
    "sampling.max_new_tokens=8",
    "progress=false",
    "tensorboard=false",
)
# the recipes whose presets play in the embedded world (a preference, not the arithmetic rule)
WORLD = {"sppo", "nash-md"}


def task(recipe):
    if recipe in WORLD:
        return (
            "data.prompts=builtin:world-prompts?n=48&split=train",
            "eval.gold_reward.rule=world_gold",
        )
    return ("data.prompts=builtin:arithmetic?n=48", "eval.gold_reward.rule=arithmetic")


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("recipe", RECIPES)
def test_help_lists_the_online_keys(recipe):
    result = invoke(recipe, "--help")
    assert result.exit_code == 0
    for key in ("rollout.samples_per_prompt", "rollout.ppo_epochs", "kl.coef", "data.prompts"):
        assert key in result.output
    # a recipe's own section is listed, and no other recipe's
    has_grpo_section = "grpo" in config_class(recipe).model_fields
    assert ("grpo.tied_groups" in result.output) == has_grpo_section


@pytest.mark.parametrize("recipe", RECIPES)
def test_tiny_preset_runs_and_logs_rollouts(recipe, tmp_path):
    out = tmp_path / recipe
    result = invoke(recipe, "--preset", "tiny", f"out={out}", *SHRINK, *task(recipe))
    assert result.exit_code == 0, result.output
    assert "held-out:" in result.output and "greedy_reward" in result.output
    rows = read_jsonl(out / "metrics.jsonl")
    train = [row for row in rows if row["split"] == "train"]
    config = config_class(recipe).model_validate(yaml.safe_load((out / "config.yaml").read_text()))
    # 2 iterations × 32 / 16 (online DPO trains on one pair of each prompt's 4: 16 / 16)
    steps = 2 if recipe == "online-dpo" else 4
    assert [row["step"] for row in train] == list(range(1, steps + 1))
    assert config.derived_train().max_steps == steps
    rollouts = [row for row in train if "rollout_reward" in row]
    assert [row["rollout_iteration"] for row in rollouts] == [1, 2]
    # the clipped surrogate's clip fraction, the pairs the labeller made or SPPO's targets
    update = {"online-dpo": "rollout_pairs", "sppo": "target"}.get(recipe, "clip_frac")
    logged = ["rollout_response_tokens", "rollout_eos_rate", update]
    if yaml.safe_load((out / "config.yaml").read_text())["kl"]["coef"] > 0:
        logged.append("rollout_kl")  # a KL term needs the reference (DAPO and GSPO drop both)
    assert set(logged) <= set(rollouts[0])
    evals = [row for row in rows if row["split"] == "eval"]
    assert {"greedy_reward", "reward", "gold_reward", "kl"} <= set(evals[-1])
    assert "eval_initial.json" in {p.name for p in out.iterdir()}
    assert (out / "model" / "config.json").is_file()


def test_errors_name_the_key(tmp_path):
    result = invoke("grpo", "--preset", "tiny", f"out={tmp_path}", "rollout.samples_per_prompt=1")
    assert result.exit_code == 2 and "samples_per_prompt" in result.output
    result = invoke("rloo", "--preset", "tiny", f"out={tmp_path}", "train.max_steps=10")
    assert result.exit_code == 2 and "rollout.iterations" in result.output
    result = invoke("grpo", "--preset", "tiny", f"out={tmp_path}", "rollout.minibatch_size=48")
    assert result.exit_code == 2 and "minibatch" in result.output
