"""Policy-gradient losses for online RL: PPO's clipped surrogate, the clipped value loss, the
entropy bonus and a KL-to-reference loss term, with one set of token aggregations.

Every loss here is per token first, ``L[b, t]`` on a [B, T] grid of response tokens with a
``mask`` of the real ones, then reduced by :func:`aggregate` to a *sum* that the engine divides
by ``loss_units`` summed over the optimiser step's micro-batches (``Trainer`` computes
``Σ loss_sum / Σ loss_units``). The three aggregations, and what the caller's batch reports as
``loss_units`` (:func:`loss_units`) so that the update is the same for any micro-batch ×
accumulation split of the step::

    "sequence"  Σ_b (Σ_t L·m / n_b)          loss_units = sequences*  mean per response, then
                                                                      over responses (GRPO)
    "token"     Σ_b Σ_t L·m                  loss_units = real tokens every token weighs the
                                                                      same (DAPO, Yu et al. 2025)
    "constant"  Σ_b Σ_t L·m / max_length     loss_units = sequences*  Σ / (B · max_length),
                                                                      Dr. GRPO (Liu et al. 2025)

with ``n_b`` the real tokens of response b, and ``sequences*`` the rows with at least one real
token (a row with none adds nothing to the sum, so nothing to the divisor). GSPO
(:func:`gspo_policy_loss`) is not a per-token loss: its ratio, clip and objective are per
sequence, summed over sequences, so its ``loss_units`` are those of "sequence".

All of these are exactly split-invariant: a response never straddles micro-batches, so each
micro-batch's sum is its share of the step's numerator, and ``Σ loss_units`` is the step's
denominator (the engine sums it over micro-batches *before* the backward passes; data-parallel
ranks would all-reduce it). What is not invariant, and is avoided here, is dividing each
micro-batch by its *own* token count. Under "token" the
per-token weight still varies between optimiser steps (PPO minibatches of unequal length);
"constant" is the aggregation whose per-token weight never changes. Losses combined into one
objective (policy + value + entropy + KL) must share an aggregation, since the engine applies
one divisor.

Every function returns ``(loss_sum, metrics)``, the metrics sums (floats) that add over
micro-batches: ``sequences`` and ``tokens`` to divide them by. Math in float32; padded
positions are replaced by zeros *before* any arithmetic, so padding that holds −inf or NaN
(common for log-probs) reaches neither the loss nor the gradient. Pure torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.losses.kl import per_token_kl

Metrics = dict[str, float]
LossOutput = tuple[Tensor, Metrics]

AGGREGATIONS = ("sequence", "token", "constant")


# --------------------------------------------------------------------------------------------
# validation and aggregation


def _check_2d(name: str, value: Tensor) -> None:
    if not isinstance(value, Tensor) or value.ndim != 2:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a [B, T] tensor, got {shape}")


def _check_like(tensors: Mapping[str, Tensor], like: Tensor, like_name: str) -> None:
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.shape != like.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, expected {tuple(like.shape)} "
                f"like {like_name}"
            )


def _check_aggregation(aggregation: str, max_length: int | None) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "constant" and (max_length is None or not max_length > 0):
        raise ValueError(
            f"max_length must be a positive number for aggregation 'constant', got {max_length}"
        )


def _zero_padding(value: Tensor, real: Tensor) -> Tensor:
    """``value`` as float32 with 0 at padding, so no −inf / NaN there enters any arithmetic."""
    value = value.float()
    return torch.where(real, value, torch.zeros_like(value))


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    aggregation: str = "token",
    *,
    max_length: int | None = None,
) -> Tensor:
    """Reduce a per-token loss [B, T] to the summed numerator of ``aggregation`` (0-d tensor).

    See the module docstring for the three modes and the ``loss_units`` each expects.

    Args:
        per_token: [B, T] loss per token.
        mask: [B, T] nonzero at real tokens; padding is ignored (even inf or NaN there).
        aggregation: "sequence", "token" or "constant".
        max_length: the constant of "constant" (the generation's max new tokens); ignored
            otherwise.
    """
    _check_2d("per_token", per_token)
    _check_like({"mask": mask}, per_token, "per_token")
    _check_aggregation(aggregation, max_length)
    real = mask.bool()
    kept = torch.where(real, per_token, torch.zeros_like(per_token))
    if aggregation == "token":
        return kept.sum()
    if aggregation == "constant":
        assert max_length is not None
        return kept.sum() / max_length
    lengths = real.sum(dim=1).clamp(min=1)  # [B]; an empty row contributes 0
    return (kept.sum(dim=1) / lengths).sum()


def loss_units(mask: Tensor, aggregation: str) -> int:
    """What a batch with this ``mask`` [B, T] contributes to the step's ``loss_units``.

    The number of real tokens for "token"; for "sequence" and "constant" the number of rows
    with at least one real token. A row with none (all padding, or dropped by an estimator,
    e.g. a tied GRPO group) adds 0 to every aggregation's sum, so it must not add to the
    divisor either. This is the one definition: recipes' batches report ``loss_units`` through
    it. :func:`gspo_policy_loss` is a sum over sequences: ``loss_units(mask, "sequence")``.
    """
    _check_2d("mask", mask)
    _check_aggregation(aggregation, 1)
    real = mask.bool()
    if aggregation == "token":
        return int(real.sum())
    return int(real.any(dim=1).sum())


def _counts(real: Tensor) -> Metrics:
    """``sequences`` (rows with a real token, as :func:`loss_units` counts them) and ``tokens``."""
    return {"sequences": float(real.any(dim=1).sum()), "tokens": float(real.sum())}


# --------------------------------------------------------------------------------------------
# PPO


def ppo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token",
    max_length: int | None = None,
) -> LossOutput:
    """PPO's clipped surrogate (Schulman et al., 2017, eq. 7), per token, as a loss.

    With the probability ratio ``ρ_t = π_θ(y_t|·) / π_old(y_t|·) = exp(logps − old_logps)``::

        L_t = −min(ρ_t · A_t, clip(ρ_t, 1 − ε, 1 + ε_high) · A_t)

    reduced by :func:`aggregate`. ``ε_high`` defaults to ε; a larger one is DAPO's
    "clip-higher" (Yu et al., 2025), which leaves low-probability tokens more room to rise.

    Args:
        logps: [B, T] log-probs of the sampled tokens under the policy being trained (with
            gradient).
        old_logps: [B, T] the same under the policy that sampled them, frozen for the rollout.
        advantages: [B, T] per-token advantages, or [B] one per sequence (broadcast over its
            tokens: RLOO, GRPO, ...). Detached here.
        mask: [B, T] nonzero at real response tokens.
        clip_eps: ε > 0.
        clip_eps_high: ε_high > 0, or None for ε.
        aggregation, max_length: see :func:`aggregate`; ``loss_units`` from :func:`loss_units`.

    Returns:
        ``(loss_sum, metrics)``; metrics (sums over real tokens): ``sequences``, ``tokens``,
        ``policy_loss_sum`` (the returned loss), ``clipped_tokens`` (tokens where the clipped
        term is the one taken and the gradient is 0; ``/ tokens`` is the clip fraction),
        ``ratio_sum`` and ``approx_kl_sum``: Schulman's k3 of KL(π_old‖π_θ) from the samples
        of π_old, ``(ρ − 1) − log ρ``, the early-stopping signal.
    """
    _check_2d("logps", logps)
    _check_like({"old_logps": old_logps, "mask": mask}, logps, "logps")
    if isinstance(advantages, Tensor) and advantages.shape == logps.shape[:1]:
        advantages = advantages[:, None].expand(logps.shape)
    _check_like({"advantages": advantages}, logps, "logps (or [B])")
    for name, value in (("clip_eps", clip_eps), ("clip_eps_high", clip_eps_high)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    _check_aggregation(aggregation, max_length)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    real = mask.bool()
    log_ratio = _zero_padding(logps, real) - _zero_padding(old_logps, real).detach()
    ratio = torch.exp(log_ratio)
    adv = _zero_padding(advantages, real).detach()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_eps, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    loss_sum = aggregate(per_token, mask, aggregation, max_length=max_length)
    with torch.no_grad():
        log_ratio = log_ratio.detach()
        metrics = _counts(real) | {
            "policy_loss_sum": float(loss_sum.detach()),
            "clipped_tokens": float(((clipped > unclipped) & real).sum()),
            "ratio_sum": float(ratio.detach()[real].sum()),
            "approx_kl_sum": float((torch.expm1(log_ratio) - log_ratio)[real].sum()),
        }
    return loss_sum, metrics


def _sequence_advantages(advantages: Tensor, real: Tensor) -> Tensor:
    """[N] or [N, R] advantages → [N] one per sequence (0 for a row with no real token).

    An [N, R] tensor must hold one value on each row's real tokens (as
    :func:`rlhf.losses.advantages.expand_to_tokens` or ``reinforce_pp_advantages`` give);
    per-token advantages (GAE) have no sequence-level meaning and are refused.
    """
    if not isinstance(advantages, Tensor):
        raise ValueError(f"advantages must be a tensor, got {type(advantages).__name__}")
    if advantages.shape == real.shape[:1]:
        return torch.where(real.any(dim=1), advantages.float(), 0.0)
    _check_like({"advantages": advantages}, real, "logps (or [N])")
    values = advantages.float()
    high = torch.where(real, values, -torch.inf).amax(dim=1)  # [N]
    low = torch.where(real, values, torch.inf).amin(dim=1)  # [N]
    rows = real.any(dim=1)
    varying = rows & (high != low)
    if varying.any():
        row = int(varying.nonzero()[0])
        raise ValueError(
            f"advantages [N, R] must be constant over each row's real tokens (GSPO's advantage "
            f"is per sequence); row {row} ranges from {float(low[row])} to {float(high[row])}"
        )
    return torch.where(rows, high, 0.0)


def gspo_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float,
    clip_eps_high: float | None = None,
) -> LossOutput:
    """GSPO's sequence-level clipped objective (Zheng et al., 2025, eq. 5 and 7), as a loss.

    With the length-normalised sequence importance ratio (eq. 7)::

        s_i = (π_θ(y_i|x) / π_old(y_i|x))^{1/|y_i|} = exp( (1/|y_i|) Σ_t (log π_θ − log π_old) )

    the loss of response i is (eq. 5, negated)::

        L_i = −min(s_i · Â_i, clip(s_i, 1 − ε, 1 + ε_high) · Â_i)

    and the returned loss is ``Σ_i L_i`` over the rows with at least one real token. Its units
    are *sequences*: divide by ``loss_units(mask, "sequence")`` summed over the step's
    micro-batches to get eq. 5's mean over the G responses (split-invariant, as a response
    never straddles micro-batches). There is no ``aggregation`` argument: the length
    normalisation lives inside s_i, so every token of a response gets the same weight
    ``Â_i · s_i / |y_i|`` in the gradient (eq. 10), and a whole response is clipped or not.

    ε is on the scale of a *per-token geometric mean* ratio and so much smaller than PPO's: the
    paper uses ε = 3e-4, ε_high = 4e-4.

    Args:
        logps: [N, R] log-probs of the sampled tokens under the policy being trained (with
            gradient).
        old_logps: [N, R] the same under the policy that sampled them (detached here).
        advantages: [N] one per response (GSPO uses GRPO's group-normalised Â, eq. 6), or
            [N, R] holding that value on each real token (detached here).
        mask: [N, R] nonzero at real response tokens; a row with none is left out (0 loss,
            not counted).
        clip_eps: ε > 0.
        clip_eps_high: ε_high > 0, or None for ε.

    Returns:
        ``(loss_sum, metrics)``; metrics are sums that add over micro-batches:
        ``sequences`` (rows with a real token: the loss units), ``tokens``, ``policy_loss_sum``
        (the returned loss), ``clipped_sequences`` (responses where the clipped term is taken
        and the gradient is 0; ``/ sequences``), ``clipped_tokens`` (the tokens of those
        responses; ``/ tokens`` is the clip fraction the paper plots in Fig. 4, comparable with
        :func:`ppo_policy_loss`'s), ``ratio_sum`` (Σ_i |y_i| · s_i, each token carrying its
        response's ratio; ``/ tokens``), ``sequence_ratio_sum`` (Σ_i s_i; ``/ sequences``) and
        ``approx_kl_sum`` (Σ over real tokens of the per-token k3 ``(ρ_t − 1) − log ρ_t``,
        exactly as :func:`ppo_policy_loss`; ``/ tokens``). So the keys the two losses share mean
        the same thing divided by ``tokens``.
    """
    _check_2d("logps", logps)
    _check_like({"old_logps": old_logps, "mask": mask}, logps, "logps")
    for name, value in (("clip_eps", clip_eps), ("clip_eps_high", clip_eps_high)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    real = mask.bool()
    rows = real.any(dim=1)  # [N] responses in the loss
    lengths = real.sum(dim=1)  # [N] |y_i|
    adv = _sequence_advantages(advantages, real).detach()  # [N]
    log_ratio = _zero_padding(logps, real) - _zero_padding(old_logps, real).detach()  # [N, R]
    seq_log_ratio = log_ratio.sum(dim=1) / lengths.clamp(min=1)  # [N]; 0 for an empty row
    ratio = torch.exp(seq_log_ratio)  # [N] s_i
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_eps, 1 + high)
    per_sequence = torch.where(rows, torch.maximum(unclipped, clipped), 0.0)  # [N]
    loss_sum = per_sequence.sum()
    with torch.no_grad():
        is_clipped = (clipped > unclipped) & rows  # [N]
        token_log_ratio = log_ratio.detach()
        ratio = ratio.detach()
        metrics = _counts(real) | {
            "policy_loss_sum": float(loss_sum.detach()),
            "clipped_sequences": float(is_clipped.sum()),
            "clipped_tokens": float(lengths[is_clipped].sum()),
            "ratio_sum": float((lengths * ratio)[rows].sum()),
            "sequence_ratio_sum": float(ratio[rows].sum()),
            "approx_kl_sum": float((torch.expm1(token_log_ratio) - token_log_ratio)[real].sum()),
        }
    return loss_sum, metrics


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_eps: float | None = 0.2,
    aggregation: str = "token",
    max_length: int | None = None,
) -> LossOutput:
    """PPO's clipped value loss (OpenAI baselines' ppo2 ``vf_losses``; Engstrom et al., 2020).

    With ``V_clip = V_old + clip(V − V_old, −ε, ε)`` and the return target ``R``::

        L_t = ½ · max((V − R)², (V_clip − R)²)          (½ (V − R)² when clip_eps is None)

    The max is pessimistic: the value head gets no gradient from moving more than ε away from
    the rollout's estimate in the direction that helps.

    Args:
        values: [B, T] current value predictions (with gradient).
        old_values: [B, T] the predictions made at rollout time (frozen).
        returns: [B, T] targets, e.g. the λ-returns of :func:`rlhf.losses.advantages.gae`.
        mask: [B, T] nonzero at real response tokens.
        clip_eps: ε > 0 in value units (rewards' scale), or None for no clipping.
        aggregation, max_length: see :func:`aggregate`.

    Returns:
        ``(loss_sum, metrics)``; metrics: ``sequences``, ``tokens``, ``value_loss_sum``,
        ``value_clipped_tokens`` (tokens where the clipped error is the larger) and
        ``value_sum`` (Σ of the current predictions).
    """
    _check_2d("values", values)
    _check_like({"old_values": old_values, "returns": returns, "mask": mask}, values, "values")
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    _check_aggregation(aggregation, max_length)
    real = mask.bool()
    values = _zero_padding(values, real)
    old_values = _zero_padding(old_values, real).detach()
    returns = _zero_padding(returns, real).detach()
    unclipped = (values - returns).square()
    if clip_eps is None:
        clipped = unclipped
        per_token = 0.5 * unclipped
    else:
        clipped = (old_values + (values - old_values).clamp(-clip_eps, clip_eps) - returns).square()
        per_token = 0.5 * torch.maximum(unclipped, clipped)
    loss_sum = aggregate(per_token, mask, aggregation, max_length=max_length)
    with torch.no_grad():
        metrics = _counts(real) | {
            "value_loss_sum": float(loss_sum.detach()),
            "value_clipped_tokens": float(((clipped > unclipped) & real).sum()),
            "value_sum": float(values.detach()[real].sum()),
        }
    return loss_sum, metrics


# --------------------------------------------------------------------------------------------
# entropy and KL terms


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[B, T, V] logits → [B, T] entropy ``H = logsumexp(z) − Σ softmax(z) · z`` in float32.

    Apply the sampling temperature to the logits first if the entropy should be that of the
    sampling distribution.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a [B, T, V] tensor, got {shape}")
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(dim=-1)


def entropy_loss(
    mask: Tensor,
    *,
    logits: Tensor | None = None,
    entropies: Tensor | None = None,
    aggregation: str = "token",
    max_length: int | None = None,
) -> LossOutput:
    """The entropy bonus as a loss term: ``−H`` per token, reduced by :func:`aggregate`.

    Add ``entropy_coef · loss`` to the objective to *raise* entropy (Mnih et al., 2016;
    Schulman et al., 2017, eq. 9's ``+ c₂ S[π_θ]``).

    Args:
        mask: [B, T] nonzero at real response tokens.
        logits: [B, T, V] the policy's logits at the response positions, or
        entropies: [B, T] per-token entropies already computed (e.g. by a fused kernel, or
            :func:`entropy_from_logits` on chunks). Exactly one of the two.
        aggregation, max_length: see :func:`aggregate`.

    Returns:
        ``(loss_sum, metrics)``: ``loss_sum`` is −(aggregated entropy); metrics ``sequences``,
        ``tokens``, ``entropy_sum`` (Σ of H over real tokens, positive).
    """
    _check_2d("mask", mask)
    if (logits is None) == (entropies is None):
        raise ValueError("give exactly one of logits and entropies")
    if logits is not None:
        if not isinstance(logits, Tensor) or logits.shape[:-1] != mask.shape or logits.ndim != 3:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"logits must be [B, T, V] with [B, T] = {tuple(mask.shape)}, got {shape}"
            )
        entropies = entropy_from_logits(logits)
    assert entropies is not None
    _check_like({"entropies": entropies}, mask, "mask")
    _check_aggregation(aggregation, max_length)
    real = mask.bool()
    entropies = _zero_padding(entropies, real)
    loss_sum = -aggregate(entropies, mask, aggregation, max_length=max_length)
    metrics = _counts(real) | {"entropy_sum": float(entropies.detach().sum())}
    return loss_sum, metrics


def kl_penalty_loss(
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    estimator: str = "k3",
    clamp: float | None = None,
    max_kl: float | None = None,
    aggregation: str = "token",
    max_length: int | None = None,
) -> LossOutput:
    """A KL-to-reference term in the loss, as in GRPO (Shao et al., 2024, eq. 3–4).

    Per token the estimator ``k`` of :func:`rlhf.losses.kl.per_token_kl` with ``log r =
    ref_logps − logps`` (GRPO's eq. 4 is k3), reduced by :func:`aggregate`; add ``β · loss`` to
    the objective. On-policy, ``E[∇k2] = ∇KL(π‖π_ref)`` and ``E[∇k3] = ∇KL(π_ref‖π)``. k1 is
    refused: ``E_π[∇k1] = E_π[∇log π] = 0``, so as a loss it only adds noise; put k1 in the
    reward instead (:func:`rlhf.losses.advantages.ppo_token_rewards`).

    Args:
        logps: [B, T] policy log-probs of the sampled tokens (with gradient).
        ref_logps: [B, T] reference log-probs of the same tokens (detached here).
        mask: [B, T] nonzero at real response tokens.
        estimator: "k2" or "k3".
        clamp, max_kl: bounds on log r and on the estimate (see :mod:`rlhf.losses.kl`).
        aggregation, max_length: see :func:`aggregate`.

    Returns:
        ``(loss_sum, metrics)``; metrics ``sequences``, ``tokens``, ``kl_sum`` (Σ of the
        per-token estimate over real tokens).
    """
    if estimator == "k1":
        raise ValueError(
            "estimator 'k1' has zero expected gradient as a loss term; use 'k2' or 'k3' here, "
            "or put k1 in the reward"
        )
    _check_2d("logps", logps)
    _check_like({"ref_logps": ref_logps, "mask": mask}, logps, "logps")
    _check_aggregation(aggregation, max_length)
    kl = per_token_kl(
        logps, ref_logps.detach(), mask, estimator=estimator, clamp=clamp, max_kl=max_kl
    )
    loss_sum = aggregate(kl, mask, aggregation, max_length=max_length)
    real = mask.bool()
    metrics = _counts(real) | {"kl_sum": float(kl.detach()[real].sum())}
    return loss_sum, metrics
