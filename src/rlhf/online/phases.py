"""The phases of making online experience that more than one algorithm runs.

* :func:`reference_phase`: log π_ref of the sampled tokens and the per-token KL estimate to
  the reference (with the β of this rollout, from the :class:`AdaptiveKLController`);
* :func:`rollout_metrics`: what a rollout says about the policy that sampled it;
* :func:`needs_old_logps`: whether sampling must recompute the sampling policy's log-probs;
* :func:`compile_scoring_models`: ``train.compile`` for the reference and reward models.

Sampling is the engine's (``engine.generate``), scoring :func:`rlhf.rewards.base.score_rollout`,
advantages :mod:`rlhf.losses.advantages`; each algorithm's file composes them.

Shapes: N rows (prompts × samples), R response tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.losses.importance import mismatch_metrics
from rlhf.losses.kl import per_token_kl, sequence_kl
from rlhf.models.reference import ReferenceModel
from rlhf.online.settings import KLSettings, RolloutSettings
from rlhf.rewards.base import RewardFunction, RewardOutput
from rlhf.rollout.measure import reference_logps
from rlhf.rollout.types import RolloutBatch

Metrics = dict[str, float]


class AdaptiveKLController:
    """Ziegler et al. (2019, §2.2) adaptive β: after a rollout of ``n`` episodes with mean
    sequence KL ``KL``, ``β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n / horizon)``.
    ``target`` None keeps β fixed."""

    def __init__(self, coef: float, target: float | None, horizon: int) -> None:
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, episodes: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * episodes / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(state["coef"])


@dataclass
class ReferenceTerm:
    """A rollout's relation to π_ref: what the KL regulariser of this rollout works with."""

    ref_logps: torch.Tensor | None  # [N, R] float32 log π_ref of the sampled tokens, 0 on pad
    kl: torch.Tensor | None  # [N, R] float32 per-token KL estimate (kl.estimator), 0 on pad;
    # None without a reference or without the sampling policy's log-probs
    coef: float  # β of this rollout
    in_reward: bool  # β·KL is subtracted from the reward (else it is a loss term)

    def penalised(self, scores: torch.Tensor) -> torch.Tensor:
        """[N] ``score − β · Σ_t kl_t`` when the KL goes into the reward (the sequence form of
        Ziegler et al.'s penalty), else the scores as they are."""
        if not self.in_reward or self.kl is None or self.coef == 0:
            return scores
        return scores - self.coef * self.kl.sum(-1)


def reference_phase(
    reference: ReferenceModel | None,
    batch: RolloutBatch,
    *,
    temperature: float,
    batch_size: int,
    kl: KLSettings,
    controller: AdaptiveKLController,
) -> ReferenceTerm:
    """log π_ref of the batch's tokens at ``temperature`` (the sampling policy's log-prob
    temperature) and the per-token KL estimate, with this rollout's β; then β adapts to the
    rollout's mean sequence KL (Ziegler's controller; a fixed β stays)."""
    ref_logps = kl_estimate = None
    if (
        reference is not None
        and kl.coef > 0
        and batch.logps is None
        and (kl.in_reward or kl.target is not None)
    ):
        raise ValueError(
            "the KL in the reward (or an adaptive β) needs the sampling policy's log-probs: "
            "sample with return_logps (rlhf.online.phases.needs_old_logps says when)"
        )
    if reference is not None:
        ref_logps = reference_logps(reference, batch, temperature, batch_size)
    if ref_logps is not None and batch.logps is not None:
        kl_estimate = per_token_kl(
            batch.logps,
            ref_logps,
            batch.response_mask,
            **kl.estimator_options(),
        )
    term = ReferenceTerm(ref_logps, kl_estimate, controller.coef, kl.in_reward)
    if kl_estimate is not None:
        controller.update(float(kl_estimate.sum(-1).mean()), len(batch))
    return term


def rollout_metrics(
    batch: RolloutBatch, reward: RewardOutput, reference: ReferenceTerm, iteration: int
) -> Metrics:
    """What a rollout says about the policy that sampled it (logged as ``rollout_*``)."""
    metrics = reward.metrics(prefix="rollout_reward")
    metrics |= {"rollout_iteration": float(iteration), "rollout_episodes": float(len(batch))}
    metrics |= batch.response_stats(prefix="rollout_")  # response tokens, EOS rate
    metrics |= {
        "rollout_kl_coef": reference.coef,
        # prompts whose start was cut to leave room for the response in the model's positions
        "rollout_truncated_prompts": float(batch.truncated_prompts),
    }
    if reference.ref_logps is not None and batch.logps is not None:
        # the k1 sequence KL (unbiased) whatever the estimator, and the configured one
        # (without old log-probs the loss reports both, from the update's forward pass)
        kl = sequence_kl(batch.logps, reference.ref_logps, batch.response_mask)
        metrics["rollout_kl"] = float(kl.mean())
    if reference.kl is not None:
        metrics["rollout_kl_estimate"] = float(reference.kl.sum(-1).mean())
    if batch.engine_logps is not None and batch.logps is not None:
        # the train–inference mismatch of an engine sampling from a copy of the weights
        gap = mismatch_metrics(batch.logps, batch.engine_logps, batch.response_mask)
        metrics |= {f"rollout_mismatch_{key}": value for key, value in gap.items()}
    # the engine's own timings (vLLM: weight-sync and generation seconds, tokens/s)
    metrics |= {f"rollout_engine_{key}": value for key, value in batch.engine_stats.items()}
    return metrics


def one_step_per_rollout(rollout: RolloutSettings, episodes: int, minibatch_size: int) -> bool:
    """Whether each rollout trains exactly one optimiser step (one epoch, one minibatch)."""
    return rollout.ppo_epochs == 1 and minibatch_size == episodes


def needs_old_logps(
    rollout: RolloutSettings,
    kl: KLSettings,
    *,
    episodes: int,
    minibatch_size: int,
    advantages_read_them: bool = False,
) -> bool:
    """Whether a rollout must recompute the sampling policy's log-probs (``batch.logps``).

    Not when each rollout trains one optimiser step and nothing else reads them: that step's
    policy *is* the sampling policy, so its own log-probs, detached, are the old ones (the
    ratio is exactly 1, as in TRL's GRPO with ``num_iterations=1``) and the forward pass is
    saved. They are needed for several steps per rollout (the ratio moves away from 1), for
    the KL in the reward and the adaptive KL coefficient (both read the rollout's KL before
    the update), and when the algorithm's advantages read them (``advantages_read_them``:
    PPO's per-token rewards).
    """
    return (
        not one_step_per_rollout(rollout, episodes, minibatch_size)
        or (kl.in_reward and kl.coef > 0)
        or kl.target is not None
        or advantages_read_them
    )


def compile_scoring_models(
    reference: ReferenceModel | None, reward: RewardFunction, policy: torch.nn.Module
) -> None:
    """With ``train.compile``, compile the blocks of the frozen reference and of any reward
    model too: with a small policy, their forward passes take as long per step as the
    policy's own (the reference of a LoRA policy is the policy, compiled already)."""
    from rlhf.models.compile import compile_blocks
    from rlhf.rewards.composite import CompositeReward
    from rlhf.rewards.model import RewardModelReward

    if reference is not None and reference.module not in (None, policy):  # None: on workers
        compile_blocks(reference.module)
    pending = [reward]
    while pending:
        function = pending.pop()
        if isinstance(function, CompositeReward):
            pending.extend(part for _, part in function.parts.values())
        elif isinstance(function, RewardModelReward):
            compile_blocks(function.model.model)
