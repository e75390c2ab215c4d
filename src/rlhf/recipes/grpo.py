"""GRPO: group relative policy optimisation (Shao et al. 2024, "DeepSeekMath", §4).

With ``grpo.process`` and a process reward model as the reward (``reward.prm``), the
advantages are step-level instead (§4.1.3, process supervision): each step's P(correct) is
normalised over the group's steps and a token's advantage is the sum of those from its step on
(:func:`rlhf.losses.advantages.process_advantages`).

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

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.losses.advantages import grpo_advantages, process_advantages, tied_groups
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings
from rlhf.recipes.common import RunResult
from rlhf.recipes.online_common import OnlineConfig, OnlineRun, prepare_online, run_online
from rlhf.rewards.base import RewardOutput, score_rollout
from rlhf.rewards.prm import ProcessReward
from rlhf.rollout.tokens import token_text_ends
from rlhf.rollout.types import RolloutBatch

# ------------------------------------------------------------------------------ config


class GRPOSettings(StrictModel):
    scale_rewards: bool = Field(
        True, description="Divide by the group's reward std (false: Dr. GRPO, centred only)."
    )
    eps: float = Field(1e-4, ge=0, description="Added to the group std.")
    process: bool = Field(
        False,
        description="Process supervision (DeepSeekMath §4.1.3): the reward is a process reward "
        "model (reward.prm); each step's P(correct), normalised over the group's steps, "
        "credits the tokens of its step and those before it.",
    )
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
        reward = self.reward
        wrapped = reward.length_penalty or reward.missing_eos_penalty is not None
        if self.grpo.process and (
            reward.prm is None or wrapped or reward.missing_eos_reward is not None
        ):
            raise ValueError(
                "grpo.process: the reward must be a process reward model alone (reward.prm, "
                "without length or missing-EOS penalties)"
            )
        if self.grpo.process and self.distributed.reward_workers > 0:
            raise ValueError(
                "grpo.process reads the PRM's steps in the trainer: set "
                "distributed.reward_workers=0"
            )
        if self.grpo.process and self.kl.in_reward:
            raise ValueError(
                "grpo.process with kl.in_reward: step-level advantages take the KL as a loss "
                "term only (kl.in_reward=false)"
            )
        return self


# ------------------------------------------------------------------------------ experience


def make_experience(
    run: OnlineRun[GRPOConfig], settings: GRPOSettings, iteration: int
) -> Experience:
    """One GRPO rollout, phase by phase."""
    k = run.config.rollout.samples_per_prompt
    prompts = run.prompts_for(iteration)  # [P]
    batch = run.sample(prompts, iteration)  # [P·K] responses, prompt-major
    reference = run.reference_term(batch)  # log π_ref [P·K, R] and the KL, with β
    if settings.process:  # step-level advantages from the PRM's steps (§4.1.3)
        reward, advantages, sums = process_supervision(run, prompts.texts, batch, k, settings)
        tied = (advantages.view(-1, k * advantages.shape[1]) == 0).all(dim=1)  # [P]
    else:
        reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [P·K]
        rewards = reference.penalised(reward.scores)  # β·KL is a loss term by default: same
        # advantages: each sample against its own group (the one line GRPO adds)
        advantages, sums = grpo_advantages(
            rewards, k, scale=settings.scale_rewards, eps=settings.eps
        )
        tied = tied_groups(rewards, k)  # [P]
    keep = ~tied.repeat_interleave(k) if settings.tied_groups == "drop" else None  # [P·K]
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_tied_groups": sums["tied_groups"],
        "rollout_tied_fraction": sums["tied_groups"] / max(sums["groups"], 1.0),
    }
    if settings.process:
        metrics["rollout_prm_steps"] = sums["steps"] / len(batch)  # steps scored a response
    return run.experience(batch, reward, reference, advantages, keep=keep, metrics=metrics)


def process_supervision(
    run: OnlineRun[GRPOConfig],
    prompts: Sequence[Text],
    batch: RolloutBatch,
    k: int,
    settings: GRPOSettings,
) -> tuple[RewardOutput, torch.Tensor, dict[str, Any]]:
    """The PRM's steps of each response, placed on the tokens where they end, and GRPO's
    process-supervised advantages [P·K, R]; the reward's scores are the PRM's aggregate."""
    prm = run.reward
    if not isinstance(prm, ProcessReward):  # the config checks this; a hand-built run may not
        raise ValueError("grpo.process needs a process reward model as the reward (reward.prm)")
    ends = token_text_ends(
        run.tokenizer, batch.response_ids, batch.response_mask, batch.response_texts
    )
    rows = [prompts[i] for i in batch.prompt_index.tolist()]
    placed = prm.steps_on_tokens(rows, batch.response_texts, ends)
    advantages, sums = process_advantages(
        [steps for steps, _ in placed], [tokens for _, tokens in placed],
        batch.response_mask, k, scale=settings.scale_rewards, eps=settings.eps,
    )  # fmt: skip
    reward = RewardOutput(prm.aggregate([steps for steps, _ in placed]))
    return reward, advantages, sums


def run_grpo(config: GRPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run, config.grpo))
