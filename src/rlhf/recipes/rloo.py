"""RLOO: REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

No critic: each prompt gets K ≥ 2 samples and each sample is baselined by the mean reward of
the other K − 1 (:func:`rlhf.losses.advantages.rloo_advantages`), an unbiased baseline. The
KL to the reference goes into the reward by default (``score − β Σ_t k1_t`` per response,
β = 0.05), and the update is PPO's clipped surrogate on the rollout's old log-probs (with
``rollout.ppo_epochs=1`` and one minibatch per rollout it is plain on-policy REINFORCE).

    rlhf rloo --preset tiny

Everything else (rollouts, reference, evaluation, resume) is :mod:`rlhf.recipes.online`.
"""

from __future__ import annotations

from pydantic import model_validator

from rlhf.losses.advantages import rloo_advantages
from rlhf.recipes.common import RunResult
from rlhf.recipes.online import Advantages, OnlineConfig, Rollout, StatelessEstimator, run_online


class RLOOConfig(OnlineConfig):
    """REINFORCE leave-one-out."""

    @model_validator(mode="after")
    def _groups(self) -> RLOOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: RLOO needs ≥ 2 samples per prompt")
        return self


class RLOOEstimator(StatelessEstimator):
    """Leave-one-out baselines over each prompt's K samples."""

    def __call__(self, rollout: Rollout) -> Advantages:
        return Advantages(rloo_advantages(rollout.sequence_rewards(), rollout.group_size))


def run_rloo(config: RLOOConfig, resume: bool = False) -> RunResult:
    return run_online(config, resume, estimator=RLOOEstimator())
