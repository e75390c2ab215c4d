"""RLOO: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

No critic: each prompt gets K ≥ 2 samples and each sample is baselined by the mean reward of
the other K − 1 (:func:`rlhf.losses.advantages.rloo_advantages`), an unbiased baseline. The
KL to the reference goes into the reward by default (``score − β Σ_t k1_t`` per response,
β = 0.05), and the update is PPO's clipped surrogate on the rollout's old log-probs (with
``rollout.ppo_epochs=1`` and one minibatch per rollout it is plain on-policy REINFORCE).

    rlhf rloo --preset tiny
"""

from __future__ import annotations

from functools import partial

from pydantic import model_validator

from rlhf.losses.advantages import rloo_advantages
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout


class RLOOConfig(OnlineConfig):
    """REINFORCE leave-one-out."""

    @model_validator(mode="after")
    def _groups(self) -> RLOOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: RLOO needs ≥ 2 samples per prompt")
        return self


def make_experience(run: OnlineRun[RLOOConfig], iteration: int) -> Experience:
    """One RLOO rollout, phase by phase."""
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref and the KL, with β
    rewards = reference.penalised(reward.scores)  # score − β·Σ KL (the KL is in the reward)
    # advantages: each sample against the mean of the other K − 1
    advantages = rloo_advantages(rewards, run.config.rollout.samples_per_prompt)
    return run.experience(
        batch,
        reward,
        reference,
        advantages,
        metrics=rollout_metrics(batch, reward, reference, iteration),
    )


def run_rloo(config: RLOOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run))
