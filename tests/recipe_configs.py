"""Every training command and the config class it resolves, for tests that go over them all."""

from __future__ import annotations

import importlib

RECIPE_CONFIGS = {
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


def config_class(recipe: str) -> type:
    module, name = RECIPE_CONFIGS[recipe].split(":")
    return getattr(importlib.import_module(module), name)
