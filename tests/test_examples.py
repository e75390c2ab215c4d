"""The example configs under examples/ load with their recipe's config class, and their README
names every one of them."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from rlhf.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = {
    "sft": "rlhf.recipes.sft:SFTConfig",
    "pretrain": "rlhf.recipes.pretrain:PretrainConfig",
    "rm": "rlhf.recipes.reward_model:RewardModelConfig",
    "raft": "rlhf.recipes.raft:RAFTConfig",
    "dpo": "rlhf.recipes.dpo:DPOConfig",
    "kto": "rlhf.recipes.kto:KTOConfig",
    "grpo": "rlhf.recipes.grpo:GRPOConfig",
    "rloo": "rlhf.recipes.rloo:RLOOConfig",
    "reinforce": "rlhf.recipes.reinforce:ReinforceConfig",
    "remax": "rlhf.recipes.remax:ReMaxConfig",
    "ppo": "rlhf.recipes.ppo:PPOConfig",
}
CONFIGS = sorted(EXAMPLES.glob("*/*.yaml"))


def test_every_recipe_has_a_real_model_example():
    assert {path.stem for path in CONFIGS} == set(RECIPES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_example_config_loads(path):
    module, name = RECIPES[path.stem].split(":")
    config = load_config(getattr(importlib.import_module(module), name), path)
    assert config.model.path is not None  # a real model, not a tiny one
    assert path.name in (path.parent / "README.md").read_text()
