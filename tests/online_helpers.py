"""An OnlineRun and ExperienceBuffer over a model in memory, for the online recipes' tests."""

from __future__ import annotations

import torch

from rlhf.online.experience import ExperienceBuffer
from rlhf.online.phases import AdaptiveKLController
from rlhf.online.settings import KLSettings
from rlhf.recipes.online_common import OnlineRun, Prompts
from rlhf.rollout.factory import build_engine

PROMPTS = [f"What is {a} + {b}?\n" for a, b in zip(range(10, 30), range(40, 60), strict=True)]


def length_reward(prompts, responses, metadata=None):
    """A cheap reward that varies between samples: the response's length mod 3."""
    return torch.tensor([float(len(response) % 3) for response in responses])


def make_run(
    model_and_tokenizer,
    config_class,
    *,
    reference=None,
    kl=None,
    ppo_epochs=2,
    batch_size=4,
    **extra,
):
    """An OnlineRun over a (model, tokenizer) pair (no out dir, no evaluation): 4 prompts × 4 samples."""
    model, tokenizer = model_and_tokenizer
    kl = kl or KLSettings(coef=0.0)
    config = config_class.model_validate(
        {
            "out": "unused",
            "model": {"path": "unused"},
            "data": {"prompts": "unused"},
            "reward": {"rule": "arithmetic"},
            "sampling": {"max_new_tokens": 8, "temperature": 1.0},
            "rollout": {
                "prompts_per_iteration": 4,
                "samples_per_prompt": 4,
                "ppo_epochs": ppo_epochs,
            },
            "kl": kl.model_dump(),
            "train": {"batch_size": batch_size, "seed": 3},
        }
        | extra
    )
    return OnlineRun(
        config=config,
        out=None,
        checkpoint=None,
        train=config.derived_train(),
        prompts=Prompts(PROMPTS),
        eval_prompts=Prompts([]),
        policy=model,
        tokenizer=tokenizer,
        reference=reference,
        reward=length_reward,
        gold=None,
        engine=build_engine(model, tokenizer, batch_size=64),
        kl_controller=AdaptiveKLController(kl.coef, kl.target, kl.horizon),
        old_logps=True,
    )


def make_buffer(run, make_experience, state=None):
    config = run.config
    return ExperienceBuffer(
        make_experience,
        episodes=config.episodes_per_iteration,
        micro_batch_size=config.train.batch_size,
        ppo_epochs=config.rollout.ppo_epochs,
        seed=config.train.seed,
        state=state,
    )
