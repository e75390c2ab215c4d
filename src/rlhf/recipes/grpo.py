"""GRPO: group relative policy optimisation (Shao et al. 2024, "DeepSeekMath", §4).

No critic: each prompt gets K samples and each sample's advantage is its reward relative to
its group, ``(r_i − mean(r)) / (std(r) + eps)`` (or only centred: Dr. GRPO, Liu et al. 2025,
``grpo.scale_rewards=false``), on every token of the response
(:func:`rlhf.losses.advantages.grpo_advantages`). The loss is PPO's clipped surrogate with the
rollout's old log-probs plus ``β · k3`` KL to the reference as a loss term (eq. 3–4; β = 0.04
by default, 0 runs without a reference model). A group whose rewards all tie carries no signal:
such groups are counted (``rollout_tied_groups``) and, with ``grpo.tied_groups=drop``, left
out of the loss altogether (their KL term too), as DAPO's dynamic sampling filters them.

    rlhf grpo --preset tiny
    rlhf grpo --config grpo.yaml model.path=runs/sft/model data.prompts=gsm8k.jsonl \\
        data.answer_field=answer reward.rule=gsm8k

Everything else (rollouts, reference, evaluation, resume) is :mod:`rlhf.recipes.online`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.losses.advantages import grpo_advantages, tied_groups
from rlhf.recipes.common import RunResult
from rlhf.recipes.online import (
    Advantages,
    KLSettings,
    OnlineConfig,
    Rollout,
    StatelessEstimator,
    run_online,
)


class GRPOSettings(StrictModel):
    scale_rewards: bool = Field(
        True, description="Divide by the group's reward std (false: Dr. GRPO, centred only)."
    )
    eps: float = Field(1e-4, ge=0, description="Added to the group std.")
    tied_groups: Literal["keep", "drop"] = Field(
        "keep",
        description="Groups whose rewards all tie (zero advantage): keep them in the loss "
        "(their KL term still counts) or drop them from it.",
    )


class GRPOConfig(OnlineConfig):
    """Group relative policy optimisation."""

    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.04, estimator="k3", in_reward=False),
        description="KL to the reference: GRPO adds β·k3 to the loss (β = 0.04).",
    )
    grpo: GRPOSettings = Field(default_factory=GRPOSettings, description="GRPO's advantages.")

    @model_validator(mode="after")
    def _groups(self) -> GRPOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: GRPO compares ≥ 2 samples per prompt")
        return self


class GRPOEstimator(StatelessEstimator):
    """Group-normalised sequence advantages; tied groups counted and optionally dropped."""

    def __init__(self, settings: GRPOSettings) -> None:
        self.settings = settings

    def __call__(self, rollout: Rollout) -> Advantages:
        rewards, k = rollout.sequence_rewards(), rollout.group_size
        advantages, sums = grpo_advantages(
            rewards, k, scale=self.settings.scale_rewards, eps=self.settings.eps
        )
        tied = tied_groups(rewards, k)  # [P]
        keep = None
        if self.settings.tied_groups == "drop":
            keep = ~tied.repeat_interleave(k)  # [N]
        metrics = {
            "tied_groups": sums["tied_groups"],
            "tied_fraction": sums["tied_groups"] / max(sums["groups"], 1.0),
        }
        return Advantages(advantages, keep=keep, metrics=metrics)


def run_grpo(config: GRPOConfig, resume: bool = False) -> RunResult:
    return run_online(config, resume, estimator=GRPOEstimator(config.grpo))
