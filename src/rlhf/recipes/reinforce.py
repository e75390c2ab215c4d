"""REINFORCE with a moving-average baseline (Williams 1992).

Each response's advantage is its reward minus an exponential moving average of the rewards of
*earlier* rollouts (:func:`rlhf.losses.advantages.reinforce_advantages`), so the baseline does
not depend on the responses it is subtracted from. The baseline is part of the loader's
checkpointed state: a resumed run continues with the same one. The KL to the reference goes
into the reward by default (β = 0.05, k1); the update is PPO's clipped surrogate on the
rollout's old log-probs.

    rlhf reinforce --preset tiny

Everything else (rollouts, reference, evaluation, resume) is :mod:`rlhf.recipes.online`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from rlhf.config import StrictModel
from rlhf.losses.advantages import reinforce_advantages
from rlhf.recipes.common import RunResult
from rlhf.recipes.online import Advantages, OnlineConfig, Rollout, run_online


class ReinforceSettings(StrictModel):
    momentum: float = Field(
        0.9, ge=0, lt=1, description="Moving-average baseline: b ← m·b + (1 − m)·mean reward."
    )


class ReinforceConfig(OnlineConfig):
    """REINFORCE with a moving-average baseline."""

    reinforce: ReinforceSettings = Field(
        default_factory=ReinforceSettings, description="The baseline."
    )


class ReinforceEstimator:
    """``A = r − b`` with ``b`` the moving average of earlier rollouts' mean reward."""

    needs_greedy = False

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.baseline: float | None = None

    def __call__(self, rollout: Rollout) -> Advantages:
        rewards = rollout.sequence_rewards()
        used = self.baseline
        advantages, baseline = reinforce_advantages(rewards, used, momentum=self.momentum)
        self.baseline = float(baseline)
        return Advantages(
            advantages, metrics={"baseline": float(rewards.mean() if used is None else used)}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.baseline = state["baseline"]


def run_reinforce(config: ReinforceConfig, resume: bool = False) -> RunResult:
    return run_online(config, resume, estimator=ReinforceEstimator(config.reinforce.momentum))
