"""DAPO: decoupled clip and dynamic sampling policy optimisation (Yu et al. 2025, "DAPO: An
Open-Source LLM Reinforcement Learning System at Scale").

GRPO's group-normalised advantages with the paper's four changes:

* **Clip-higher** (§3.1): separate ``ε_low = 0.2`` and ``ε_high = 0.28``, so a
  low-probability token whose advantage is positive can grow further before the clip stops it
  (``policy.clip_eps`` / ``policy.clip_eps_high``), against entropy collapse.
* **Dynamic sampling** (§3.2, eq. 11): a group whose K rewards all tie has zero advantage
  and no gradient, so such groups are dropped and more prompts sampled until the batch holds
  ``rollout.prompts_per_iteration`` groups that carry signal (at most
  ``dapo.max_sampling_rounds`` rounds; how many prompts each round draws is
  :func:`rlhf.losses.advantages.dynamic_sampling_refill`). A batch still short after the last
  round is filled with tied groups, kept out of the loss (``rollout_short_groups``).
* **Token-level policy loss** (§3.3, eq. 12): the loss is a mean over all tokens of the batch
  (``policy.aggregation=token``), so long responses weigh by their length.
* **Overlong reward shaping** (§3.4, eq. 13): a response in the last
  ``dapo.overlong_cache`` tokens of the budget loses reward linearly, down to −1 at
  ``sampling.max_new_tokens`` (:func:`rlhf.losses.shaping.overlong_penalty`).

No KL term (β = 0), as in the paper.

    rlhf dapo --preset tiny
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.losses.advantages import dynamic_sampling_refill, grpo_advantages, informative_groups
from rlhf.losses.shaping import overlong_penalty
from rlhf.online.experience import Experience
from rlhf.online.phases import rollout_metrics
from rlhf.online.settings import KLSettings, PolicyLossSettings
from rlhf.recipes.common import RunResult, round_prompts
from rlhf.recipes.online_common import (
    IterationPrompts,
    OnlineConfig,
    OnlineRun,
    prepare_online,
    run_online,
)
from rlhf.rewards.base import RewardOutput, score_rollout
from rlhf.rollout.types import RolloutBatch

# ------------------------------------------------------------------------------ config


class DAPOSettings(StrictModel):
    dynamic_sampling: bool = Field(
        True, description="Drop groups whose rewards all tie and sample more prompts instead."
    )
    max_sampling_rounds: int = Field(
        3, ge=1, description="Sampling rounds per iteration at most (dynamic sampling)."
    )
    overlong_cache: int = Field(
        4,
        ge=0,
        description="L_cache: the last tokens of sampling.max_new_tokens in which a response's "
        "reward falls linearly to −1 (0: no overlong shaping).",
    )
    overlong_factor: float = Field(
        1.0, ge=0, description="Weight of the overlong penalty added to the reward."
    )


class DAPOConfig(OnlineConfig):
    """DAPO: clip-higher, dynamic sampling, token-level loss, overlong shaping."""

    kl: KLSettings = Field(
        default_factory=lambda: KLSettings(coef=0.0, estimator="k3", in_reward=False),
        description="KL to the reference (DAPO: none, β = 0).",
    )
    policy: PolicyLossSettings = Field(
        default_factory=lambda: PolicyLossSettings(
            clip_eps=0.2, clip_eps_high=0.28, aggregation="token"
        ),
        description="Clip-higher: ε_low = 0.2, ε_high = 0.28; the loss a mean over tokens.",
    )
    dapo: DAPOSettings = Field(default_factory=DAPOSettings, description="DAPO's settings.")

    @model_validator(mode="after")
    def _dapo(self) -> DAPOConfig:
        if self.rollout.samples_per_prompt < 2:
            raise ValueError("rollout.samples_per_prompt: DAPO compares ≥ 2 samples per prompt")
        if self.dapo.overlong_cache >= self.sampling.max_new_tokens:
            raise ValueError(
                f"dapo.overlong_cache {self.dapo.overlong_cache} must be below "
                f"sampling.max_new_tokens {self.sampling.max_new_tokens}"
            )
        return self


# ------------------------------------------------------------------------------ experience


def shaped_rewards(
    run: OnlineRun[DAPOConfig], batch: RolloutBatch, reward: RewardOutput
) -> torch.Tensor:
    """[N] the score plus the overlong penalty (eq. 13), before any KL."""
    settings, budget = run.config.dapo, run.config.sampling.max_new_tokens
    if settings.overlong_cache == 0:
        return reward.scores
    penalty = overlong_penalty(batch.response_lengths, budget, settings.overlong_cache)
    return reward.scores + settings.overlong_factor * penalty


def refill_prompts(
    run: OnlineRun[DAPOConfig], iteration: int, round_: int, count: int
) -> IterationPrompts:
    """``count`` more prompts for round ``round_`` (≥ 1) of iteration ``iteration``: a seeded
    draw of its own, so a resumed run draws the same ones."""
    texts, metadata = run.prompts
    seed = run.config.train.seed * 1_000_003 + iteration * 1_009 + round_
    indices = round_prompts(list(range(len(texts))), count, 0, seed)
    return IterationPrompts(
        [texts[i] for i in indices], None if metadata is None else [metadata[i] for i in indices]
    )


def make_experience(run: OnlineRun[DAPOConfig], iteration: int) -> Experience:
    """One DAPO rollout, phase by phase: sample and score until the batch holds enough groups
    with signal, then the reference, group advantages and the experience."""
    config = run.config
    k, target = config.rollout.samples_per_prompt, config.rollout.prompts_per_iteration
    kept: list[tuple[RolloutBatch, RewardOutput, torch.Tensor, IterationPrompts]] = []
    tied: list[tuple[RolloutBatch, RewardOutput, torch.Tensor, IterationPrompts]] = []
    prompts, rounds, sampled, informative_count = run.prompts_for(iteration), 0, 0, 0
    while True:
        params = run.sampling_params(iteration)
        batch = run.engine.generate(
            prompts.texts, replace(params, seed=params.seed + rounds * 7_919)
        )
        reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [n·K]
        rewards = shaped_rewards(run, batch, reward)
        informative = informative_groups(rewards, k)  # [n]
        if not config.dapo.dynamic_sampling:
            informative = torch.ones_like(informative)
        for wanted, into in ((True, kept), (False, tied)):
            chosen = [g for g in range(len(prompts.texts)) if bool(informative[g]) == wanted]
            if chosen:
                into.append(subset(batch, reward, rewards, prompts, chosen, k))
        rounds, sampled = rounds + 1, sampled + len(prompts.texts)
        informative_count += int(informative.sum())
        more = dynamic_sampling_refill(
            informative_count,
            target,
            rounds_done=rounds,
            max_rounds=config.dapo.max_sampling_rounds,
            sampled_groups=sampled,
        )
        if more == 0:
            break
        prompts = refill_prompts(run, iteration, rounds, more)

    # the batch: the first `target` informative groups, topped up with tied ones if short
    batch, reward, rewards, _ = take_groups(run, kept + tied, target, k)
    keep = torch.zeros(target, dtype=torch.bool)
    keep[: min(informative_count, target)] = True
    overlong = float((rewards - reward.scores).mean())  # the shaping's mean, ≤ 0
    reference = run.reference_term(batch)  # log π_ref and the KL, with β (none by default)
    rewards = reference.penalised(rewards)
    advantages, _ = grpo_advantages(rewards, k)  # each sample against its group
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_sampling_rounds": float(rounds),
        "rollout_sampled_prompts": float(sampled),
        "rollout_informative_groups": float(informative_count),
        "rollout_short_groups": float(max(target - informative_count, 0)),
        "rollout_overlong_penalty": overlong,
    }
    return run.experience(
        batch, reward, reference, advantages, keep=keep.repeat_interleave(k), metrics=metrics
    )


def subset(
    batch: RolloutBatch,
    reward: RewardOutput,
    rewards: torch.Tensor,
    prompts: IterationPrompts,
    groups: list[int],
    k: int,
) -> tuple[RolloutBatch, RewardOutput, torch.Tensor, IterationPrompts]:
    """The rows of prompts ``groups`` (K each) of one sampling round."""
    rows = torch.tensor([g * k + i for g in groups for i in range(k)])
    return (
        batch.select_prompts(groups),
        reward.select(rows),
        rewards[rows],
        IterationPrompts(
            [prompts.texts[g] for g in groups],
            None if prompts.metadata is None else [prompts.metadata[g] for g in groups],
        ),
    )


def take_groups(
    run: OnlineRun[DAPOConfig],
    parts: list[tuple[RolloutBatch, RewardOutput, torch.Tensor, IterationPrompts]],
    target: int,
    k: int,
) -> tuple[RolloutBatch, RewardOutput, torch.Tensor, IterationPrompts]:
    """The first ``target`` groups of ``parts`` as one rollout."""
    batch = RolloutBatch.concatenate([part[0] for part in parts], run.tokenizer.pad_token_id)
    reward = RewardOutput.concatenate([part[1] for part in parts])
    rewards = torch.cat([part[2] for part in parts])
    texts = [text for part in parts for text in part[3].texts]
    metadata = None
    if parts[0][3].metadata is not None:
        metadata = [entry for part in parts for entry in part[3].metadata or []]
    chosen = list(range(target))
    return subset(batch, reward, rewards, IterationPrompts(texts, metadata), chosen, k)


def run_dapo(config: DAPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run))
