"""The losses of online RL on a minibatch of :class:`Experience`.

PPO's clipped surrogate on the advantages (:func:`rlhf.losses.policy.ppo_policy_loss`), plus
``β · KL`` as a loss term (k2/k3) when the KL is not in the reward; PPO adds its value loss
and entropy bonus to it, GSPO replaces the surrogate by its sequence-level one. Online
preference optimisation (online DPO and its family) trains on pairs of the policy's samples
instead: :func:`pair_preference_loss`; SPPO regresses log-ratios on win rates:
:func:`sppo_policy_loss`.

Shapes: n rows of a micro-batch, R response tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch

from rlhf.losses.kl import per_token_kl, sequence_kl
from rlhf.losses.nash import sppo_loss
from rlhf.losses.policy import kl_penalty_loss, ppo_policy_loss
from rlhf.losses.preference import PairLogps
from rlhf.models.parallel import is_distributed
from rlhf.models.teacher_forcing import response_logprobs
from rlhf.online.experience import Experience
from rlhf.online.settings import KLSettings, PolicyLossSettings

Metrics = dict[str, float]
# (logps, old_logps, advantages, mask) [n, R] each -> (summed loss, sums)
Surrogate = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]
]


def nothing_to_learn(model: torch.nn.Module, batch: Experience) -> tuple[torch.Tensor, Metrics]:
    """The loss of a micro-batch of which nothing enters the loss: 0, without a forward pass
    in one process. With several training ranks the forward and backward still run, giving
    zero gradients: FSDP2 gathers and reduces every unit's parameters in them, and a rank that
    skipped them would leave the others waiting in those collectives for ever."""
    if is_distributed():  # a forward over each row's first response token is enough
        first = torch.zeros_like(batch.mask)
        first[:, 0] = 1.0
        logps = policy_logps(model, replace(batch, mask=first))
        return (logps * 0.0).sum(), dict(batch.metrics)
    return torch.zeros((), device=batch.mask.device), dict(batch.metrics)


def policy_logps(model: torch.nn.Module, batch: Experience) -> torch.Tensor:
    """[n, R] log π_θ of the batch's response tokens at its temperature, with gradients."""
    return response_logprobs(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.mask,
        temperature=batch.temperature,
        batch_size=len(batch),
        groups=batch.group,
    )


def policy_gradient_loss(
    model: torch.nn.Module,
    batch: Experience,
    *,
    policy: PolicyLossSettings,
    kl: KLSettings,
    grad_accum: int = 1,
    logps: torch.Tensor | None = None,
    surrogate: Surrogate | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The critic-free methods' loss: PPO's clipped surrogate on the advantages
    (:func:`rlhf.losses.policy.ppo_policy_loss`), plus ``β · KL`` (k2/k3,
    :func:`rlhf.losses.policy.kl_penalty_loss`) when the KL is a loss term (GRPO, eq. 3).

    Returns the summed loss over ``batch.loss_units`` (the Trainer divides by the step's
    units) and metrics as means over the micro-batch divided by ``grad_accum``, so the
    Trainer's sum over a step's micro-batches is their mean.

    Experience without old log-probs (one optimiser step per rollout) takes ``logps``
    detached as π_old: the ratio is exactly 1 and the gradient that of the recomputed ones.
    The rollout's KL to the reference (``rollout_kl``, ``rollout_kl_estimate``) then comes
    from these log-probs, over the rows in the loss.

    ``surrogate(logps, old_logps, advantages, mask) -> (loss_sum, sums)`` replaces PPO's
    token-level clipped surrogate (GSPO's sequence-level one); its sums hold the keys of
    :func:`rlhf.losses.policy.ppo_policy_loss`'s.
    """
    if not batch.mask.any():  # every row left out of the loss (dropped tied groups, fillers)
        return nothing_to_learn(model, batch)
    if logps is None:  # PPO passes its own (computed with the entropy in one forward)
        logps = policy_logps(model, batch)  # [n, R]
    old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
    options = dict(aggregation=batch.aggregation, max_length=batch.max_length)
    if surrogate is None:
        surrogate = partial(
            ppo_policy_loss, clip_eps=policy.clip_eps, clip_eps_high=policy.clip_eps_high, **options
        )
    loss, sums = surrogate(logps, old_logps, batch.advantages, batch.mask)
    tokens = max(sums["tokens"], 1.0)
    metrics = {
        "policy_loss": sums["policy_loss_sum"] / max(batch.loss_units, 1),
        "clip_frac": sums["clipped_tokens"] / tokens,
        "ratio": sums["ratio_sum"] / tokens,
        "approx_kl": sums["approx_kl_sum"] / tokens,
    }
    if not kl.in_reward and batch.kl_coef > 0 and batch.ref_logps is not None:
        kl_loss, kl_sums = kl_penalty_loss(
            logps,
            batch.ref_logps,
            batch.mask,
            **kl.estimator_options(),
            **options,
        )
        loss = loss + batch.kl_coef * kl_loss
        metrics["kl_loss"] = kl_sums["kl_sum"] / tokens
    if batch.old_logps is None and batch.ref_logps is not None:
        metrics |= on_policy_kl_metrics(logps.detach(), batch, kl)
    metrics = {key: value / grad_accum for key, value in metrics.items()}
    return loss, metrics | batch.metrics


def on_policy_kl_metrics(logps: torch.Tensor, batch: Experience, kl: KLSettings) -> Metrics:
    """``rollout_kl`` (k1) and ``rollout_kl_estimate`` (``kl.estimator``): the mean sequence
    KL to the reference of the rows in the loss, from log-probs [n, R] of the policy that
    sampled them (what :func:`rlhf.online.phases.rollout_metrics` reads from ``batch.logps`` otherwise)."""
    assert batch.ref_logps is not None
    rows = max(int(batch.mask.bool().any(-1).sum()), 1)
    k1 = sequence_kl(logps, batch.ref_logps, batch.mask).sum()
    estimate = per_token_kl(
        logps,
        batch.ref_logps,
        batch.mask,
        **kl.estimator_options(),
    ).sum()
    return {"rollout_kl": float(k1) / rows, "rollout_kl_estimate": float(estimate) / rows}


def pair_preference_loss(
    model: torch.nn.Module,
    batch: Experience,
    *,
    loss: Callable[[PairLogps], tuple[torch.Tensor, dict[str, float]]],
    grad_accum: int = 1,
) -> tuple[torch.Tensor, Metrics]:
    """Online preference optimisation's loss: any DPO-family ``loss`` (Guo et al. 2024, "Direct
    Language Model Alignment from Online AI Feedback", Alg. 1) on the policy's own samples.

    ``batch`` holds pairs (``batch.pairs``): rows 2i and 2i+1 are the chosen and the rejected
    response to one prompt, as the labeller ordered them; a pair whose rows are masked (a tie)
    is left out. Sequence log-probs are sums over each response's tokens of the policy's
    log-probs (with gradients) and of ``batch.ref_logps`` (π_ref, frozen; None for the
    reference-free losses).

    Returns the loss summed over the pairs (the Trainer divides by the step's pairs,
    ``batch.loss_units``) and metrics as means over the micro-batch's pairs divided by
    ``grad_accum``: ``policy_loss``, ``accuracy`` (the implicit reward orders the pair as the
    labeller did), ``margin``, ``chosen_reward`` and ``rejected_reward`` (the implicit rewards
    β·log π/π_ref), plus the sampled KL to π_ref of the rows (``rollout_kl``).
    """
    if not batch.pairs or len(batch) % 2:
        raise ValueError(
            "pair_preference_loss needs an Experience of pairs (rows 2i, 2i+1: chosen, rejected)"
        )
    kept = batch.mask.bool().any(-1)  # [n]
    pair_kept = kept[0::2] & kept[1::2]  # [n/2]
    if not pair_kept.any():  # every pair tied: nothing to learn from this micro-batch
        return nothing_to_learn(model, batch)
    logps = policy_logps(model, batch)  # [n, R]
    mask = batch.mask
    sequence = (logps * mask).sum(-1)  # [n] log π(y|x)
    tokens = mask.sum(-1)  # [n]
    reference = None if batch.ref_logps is None else (batch.ref_logps * mask).sum(-1)
    pairs = PairLogps(
        chosen_logps=sequence[0::2][pair_kept],
        rejected_logps=sequence[1::2][pair_kept],
        chosen_tokens=tokens[0::2][pair_kept],
        rejected_tokens=tokens[1::2][pair_kept],
        ref_chosen_logps=None if reference is None else reference[0::2][pair_kept],
        ref_rejected_logps=None if reference is None else reference[1::2][pair_kept],
    )
    loss_sum, sums = loss(pairs)
    count = max(sums["pairs"], 1.0)
    metrics = {
        "policy_loss": float(loss_sum.detach()) / count,
        "accuracy": sums["correct_pairs"] / count,
        "margin": sums["margin_sum"] / count,
        "chosen_reward": sums["chosen_reward_sum"] / count,
        "rejected_reward": sums["rejected_reward_sum"] / count,
    }
    if batch.ref_logps is not None:
        rows = max(int(kept.sum()), 1)
        metrics["rollout_kl"] = (
            float(sequence_kl(logps.detach(), batch.ref_logps, mask).sum()) / rows
        )
    metrics = {key: value / grad_accum for key, value in metrics.items()}
    return loss_sum, metrics | batch.metrics


def sppo_policy_loss(
    model: torch.nn.Module, batch: Experience, *, eta: float, grad_accum: int = 1
) -> tuple[torch.Tensor, Metrics]:
    """SPPO's square loss (:func:`rlhf.losses.nash.sppo_loss`) on a micro-batch whose
    ``scores`` are each response's win rate against the sampling policy π_t. π_t's sequence
    log-probs are the rollout's old ones, or this step's own, detached, when the rollout
    trains one optimiser step (the log-ratio then starts at 0).

    Returns the loss summed over the sequences in the loss (the Trainer divides by
    ``batch.loss_units``, aggregation "sequence") and metrics as means over them divided by
    ``grad_accum``: ``policy_loss``, ``log_ratio`` (log π/π_t), ``target`` (η (P̂ − ½)).
    """
    rows = batch.mask.bool().any(-1)  # [n]
    if not rows.any():
        return nothing_to_learn(model, batch)
    logps = policy_logps(model, batch)  # [n, R]
    old = logps.detach() if batch.old_logps is None else batch.old_logps
    sequence = (logps * batch.mask).sum(-1)[rows]
    old_sequence = (old * batch.mask).sum(-1)[rows]
    loss, sums = sppo_loss(sequence, old_sequence, batch.scores.to(sequence.device)[rows], eta=eta)
    count = max(sums["sequences"], 1.0)
    metrics = {
        "policy_loss": sums["loss_sum"] / count,
        "log_ratio": sums["log_ratio_sum"] / count,
        "target": sums["target_sum"] / count,
    }
    metrics = {key: value / grad_accum for key, value in metrics.items()}
    return loss, metrics | batch.metrics
