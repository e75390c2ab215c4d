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
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.losses.advantages import grpo_advantages, tied_groups
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import score_rollout

# ------------------------------------------------------------------------------ config


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


# ------------------------------------------------------------------------------ experience


def make_experience(
    run: OnlineRun[GRPOConfig], settings: GRPOSettings, iteration: int
) -> Experience:
    """One GRPO rollout, phase by phase."""
    k = run.config.rollout.samples_per_prompt
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
    reference = run.reference_term(batch)  # log π_ref [P·K, R] and the KL, with β
    rewards = reference.penalised(reward.scores)  # β·KL is a loss term by default: unchanged

    # advantages: each sample against its own group (the one line GRPO adds)
    advantages, sums = grpo_advantages(rewards, k, scale=settings.scale_rewards, eps=settings.eps)
    keep = None
    if settings.tied_groups == "drop":
        keep = ~tied_groups(rewards, k).repeat_interleave(k)  # [P·K]
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_tied_groups": sums["tied_groups"],
        "rollout_tied_fraction": sums["tied_groups"] / max(sums["groups"], 1.0),
    }
    return run.experience(batch, reward, reference, advantages, keep=keep, metrics=metrics)


def run_grpo(config: GRPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run, config.grpo))
