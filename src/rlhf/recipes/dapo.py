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

from dataclasses import dataclass, replace
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
    OnlineConfig,
    OnlineRun,
    Prompts,
    prepare_online,
    run_online,
)
from rlhf.rewards.base import RewardOutput, score_rollout
from rlhf.rollout.types import RolloutBatch

# ------------------------------------------------------------------------------ config


class DAPOSettings(StrictModel):
    dynamic_sampling: bool = Field(
        True,
        description="Drop groups whose scores all tie (all right or all wrong) and sample more "
        "prompts instead.",
    )
    max_sampling_rounds: int = Field(
        3, ge=1, description="Sampling rounds per iteration at most (dynamic sampling)."
    )
    max_round_prompts: int | None = Field(
        None,
        ge=1,
        description="Prompts one refill round samples at most (null: 4 × "
        "rollout.prompts_per_iteration), so a round with few informative groups cannot ask "
        "for a huge generation.",
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
        if self.distributed.max_staleness > 0:
            raise ValueError(
                "distributed.max_staleness: DAPO's dynamic sampling draws more rounds from the "
                "current policy until enough groups carry signal, so its rollouts cannot be "
                "sampled ahead; leave it at 0 (rollout workers still do the sampling)"
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
    run: OnlineRun[DAPOConfig], iteration: int, round_: int, count: int, used: set[str]
) -> Prompts:
    """``count`` more prompts for round ``round_`` (≥ 1) of iteration ``iteration``: the first
    of a seeded shuffle of the training prompts (its own per iteration and round, so a resumed
    run draws the same ones) that this iteration has not sampled yet (``used``: their texts,
    updated); only when every prompt has been used do they repeat."""
    texts = run.prompts.texts
    seed = run.config.train.seed * 1_000_003 + iteration * 1_009 + round_
    order = round_prompts(list(range(len(texts))), len(texts), 0, seed)
    fresh = [i for i in order if str(texts[i]) not in used]
    indices = (fresh + order * count)[:count]  # repeats only once the fresh ones run out
    used.update(str(texts[i]) for i in indices)
    return run.prompts.select(indices)


@dataclass
class Groups:
    """Sampled groups of K rows each (prompt-major), with their rewards."""

    batch: RolloutBatch  # [n·K] responses
    reward: RewardOutput  # [n·K] the reward's scores and components
    shaped: torch.Tensor  # [n·K] score + overlong penalty (what the groups are judged on)

    def pick(self, groups: list[int], k: int) -> Groups:
        """Groups ``groups`` (indices of this batch's prompts), in that order."""
        rows = torch.tensor([g * k + i for g in groups for i in range(k)], dtype=torch.long)
        return Groups(
            self.batch.select_prompts(groups), self.reward.select(rows), self.shaped[rows]
        )

    @staticmethod
    def join(parts: list[Groups], pad_id: int) -> Groups:
        return Groups(
            RolloutBatch.concatenate([part.batch for part in parts], pad_id),
            RewardOutput.concatenate([part.reward for part in parts]),
            torch.cat([part.shaped for part in parts]),
        )


def make_experience(run: OnlineRun[DAPOConfig], iteration: int) -> Experience:
    """One DAPO rollout, phase by phase: sample and score until the batch holds enough groups
    with signal (dynamic sampling), then the reference, group advantages and the experience."""
    config, dapo = run.config, run.config.dapo
    k, target = config.rollout.samples_per_prompt, config.rollout.prompts_per_iteration
    kept: list[Groups] = []  # groups whose scores differ, in the order sampled
    tied: list[Groups] = []  # the others: fillers if the rounds run out
    scores: list[torch.Tensor] = []  # every sampled response's score, for the log
    prompts = run.prompts_for(iteration)
    used = {str(text) for text in prompts.texts}
    rounds = sampled = informative = filled = truncated = 0  # filled: groups kept so far
    while True:
        params = run.sampling_params(iteration)  # each round its own seed
        batch = run.engine.generate(
            prompts.texts, replace(params, seed=params.seed + rounds * 7_919)
        )
        reward = score_rollout(run.reward, prompts.texts, batch, prompts.metadata)  # [n·K]
        groups = Groups(batch, reward, shaped_rewards(run, batch, reward))
        # eq. 11: a group carries signal when its K answers are neither all right nor all
        # wrong, judged on the score (the overlong shaping only adjusts the reward after)
        signal = informative_groups(reward.scores, k)  # [n]
        keep = signal if dapo.dynamic_sampling else torch.ones_like(signal)
        kept.append(groups.pick([g for g in range(len(keep)) if keep[g]], k))
        tied.append(groups.pick([g for g in range(len(keep)) if not keep[g]], k))
        scores.append(reward.scores)
        rounds, sampled = rounds + 1, sampled + len(signal)
        informative, filled = informative + int(signal.sum()), filled + int(keep.sum())
        truncated += batch.truncated_prompts
        more = dynamic_sampling_refill(
            filled,
            target,
            rounds_done=rounds,
            max_rounds=dapo.max_sampling_rounds,
            sampled_groups=sampled,
            max_prompts=dapo.max_round_prompts or 4 * target,
        )
        if more == 0:
            break
        prompts = refill_prompts(run, iteration, rounds, more, used)

    # the rollout: the first `target` informative groups, topped up with tied ones if short
    parts = [part for part in kept + tied if len(part.batch)]
    rollout = Groups.join(parts, run.tokenizer.pad_token_id).pick(list(range(target)), k)
    batch, reward = rollout.batch, rollout.reward
    batch.truncated_prompts = truncated  # prompts cut in any of the rounds' sampling
    in_loss = (torch.arange(target) < filled).repeat_interleave(k)  # fillers: out of the loss
    reference = run.reference_term(batch)  # log π_ref and the KL, with β (none by default)
    rewards = reference.penalised(rollout.shaped)
    advantages, _ = grpo_advantages(rewards, k)  # each sample against its group
    metrics = rollout_metrics(batch, reward, reference, iteration) | {
        "rollout_sampled_reward": float(torch.cat(scores).mean()),  # before any filtering
        "rollout_sampling_rounds": float(rounds),
        "rollout_sampled_prompts": float(sampled),
        "rollout_informative_groups": float(informative),
        "rollout_short_groups": float(max(target - filled, 0)),
        "rollout_overlong_penalty": float((rollout.shaped - reward.scores).mean()),  # ≤ 0
    }
    return run.experience(batch, reward, reference, advantages, keep=in_loss, metrics=metrics)


def run_dapo(config: DAPOConfig, resume: bool = False) -> RunResult:
    run = prepare_online(config, resume)
    return run_online(run, partial(make_experience, run))
