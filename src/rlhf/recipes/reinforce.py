"""REINFORCE with a moving-average baseline (Williams 1992).

Each response's advantage is its reward minus an exponential moving average of the rewards of
*earlier* rollouts (:func:`rlhf.losses.advantages.reinforce_advantages`), so the baseline does
not depend on the responses it is subtracted from. The baseline is checkpointed with the
run: a resumed run continues with the same one. The KL to the reference goes into the reward
by default (β = 0.05, k1); the update is PPO's clipped surrogate on the rollout's old
log-probs.

    rlhf reinforce --preset tiny
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from pydantic import Field

from rlhf.config import StrictModel
from rlhf.losses.advantages import reinforce_advantages
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout


class ReinforceSettings(StrictModel):
    momentum: float = Field(
        0.9, ge=0, lt=1, description="Moving-average baseline: b ← m·b + (1 − m)·mean reward."
    )


class ReinforceConfig(OnlineConfig):
    """REINFORCE with a moving-average baseline."""

    reinforce: ReinforceSettings = Field(
        default_factory=ReinforceSettings, description="The baseline."
    )


class MovingBaseline:
    """``b``: the moving average of earlier rollouts' mean reward (None before the first)."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.value: float | None = None

    def advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``A = r − b`` [N] with the baseline before this rollout (the first rollout's own
        mean), which is returned too; then ``b`` moves towards this rollout's mean."""
        used = self.value
        advantages, baseline = reinforce_advantages(rewards, used, momentum=self.momentum)
        self.value = float(baseline)
        return advantages, float(rewards.mean() if used is None else used)

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.value = state["baseline"]


def make_experience(
    run: OnlineRun[ReinforceConfig], baseline: MovingBaseline, iteration: int
) -> Experience:
    """One REINFORCE rollout, phase by phase."""
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref and the KL, with β
    rewards = reference.penalised(reward.scores)  # score − β·Σ KL (the KL is in the reward)
    advantages, used = baseline.advantages(rewards)  # r − b
    metrics = rollout_metrics(batch, reward, reference, iteration) | {"rollout_baseline": used}
    return run.experience(batch, reward, reference, advantages, metrics=metrics)


def run_reinforce(config: ReinforceConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    baseline = MovingBaseline(config.reinforce.momentum)
    return run_online(run, partial(make_experience, run, baseline), state={"estimator": baseline})
