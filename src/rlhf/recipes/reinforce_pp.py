"""REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
Language Models").

No critic and no per-prompt normalisation: each response's reward (optionally minus its
group's mean reward: ``reinforce_pp.baseline=group``, the paper's "REINFORCE++-baseline" for
K > 1 samples per prompt) sits on every token of the response and is then normalised over the
**global batch** — mean 0, std 1 over all real tokens of the rollout
(:func:`rlhf.losses.advantages.reinforce_pp_advantages`, eq. 8–10) — which keeps the
advantage scale stable without GRPO's per-prompt std (biased towards easy and hard prompts).
The KL to the reference is a loss term with the k2 estimator (``½ (log π − log π_ref)²``,
β = 0.01), and the update is PPO's clipped surrogate.

    rlhf reinforce-pp --preset tiny
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.losses.advantages import reinforce_pp_advantages
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout


class ReinforcePPSettings(StrictModel):
    baseline: Literal["none", "group"] = Field(
        "none",
        description="Subtract each prompt's mean reward over its K samples before the global "
        "normalisation (group: REINFORCE++-baseline, needs K ≥ 2) or not (none).",
    )


class ReinforcePPConfig(OnlineConfig):
    """REINFORCE++: global-batch advantage normalisation, k2 KL in the loss."""

    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.01, estimator="k2", in_reward=False),
        description="KL to the reference: β·k2 as a loss term (β = 0.01).",
    )
    reinforce_pp: ReinforcePPSettings = Field(
        default_factory=ReinforcePPSettings, description="REINFORCE++'s baseline."
    )

    @model_validator(mode="after")
    def _groups(self) -> ReinforcePPConfig:
        if self.kl.in_reward and self.kl.coef > 0:
            # eq. 8 puts the KL into a per-token reward-to-go, which a sequence advantage
            # spread over the tokens is not; the k2 loss term is the variant implemented
            raise ValueError(
                "kl.in_reward: REINFORCE++ here keeps the KL as a loss term; set "
                "kl.in_reward=false (k2 by default)"
            )
        if self.reinforce_pp.baseline == "group" and self.rollout.samples_per_prompt < 2:
            raise ValueError(
                "reinforce_pp.baseline=group: the group mean needs rollout.samples_per_prompt ≥ 2"
            )
        return self


def make_experience(
    run: OnlineRun[ReinforcePPConfig], settings: ReinforcePPSettings, iteration: int
) -> Experience:
    """One REINFORCE++ rollout, phase by phase."""
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref and the KL, with β
    rewards = reference.penalised(reward.scores)  # the KL is a loss term by default: unchanged
    # advantages: normalised over every real token of the rollout, not per prompt
    group = run.config.rollout.samples_per_prompt if settings.baseline == "group" else None
    advantages = reinforce_pp_advantages(rewards, batch.response_mask.float(), group_size=group)
    return run.experience(
        batch,
        reward,
        reference,
        advantages,
        metrics=rollout_metrics(batch, reward, reference, iteration),
    )


def run_reinforce_pp(config: ReinforcePPConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run, config.reinforce_pp))
