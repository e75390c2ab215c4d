"""Offline preference-optimisation losses: DPO and its family, and KTO.

DPO (Rafailov et al., 2023) trains the policy directly on preference pairs ``(x, y_w, y_l)``:
the Bradley–Terry model of :mod:`rlhf.losses.reward` with the reward replaced by the policy's
*implicit reward* ``r(x, y) = β · log π(y|x) / π_ref(y|x)``. Every pairwise loss here is a
function of the same four sequence log-probabilities, through the log-ratio difference::

    ρ = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]

(reference-free losses, SimPO and ORPO, use the policy alone).

Convention, as in :mod:`rlhf.losses.reward`: every loss returns ``(loss_sum, metrics)`` with
the *sum* over the P pairs (the caller divides by the pairs of the whole optimiser step, so
gradient accumulation 4 × 2 equals a batch of 8) and metrics that are sums too (floats), so
they add over micro-batches. The pairwise losses share one set of metric keys, computed by
:func:`pair_metrics`: ``pairs``, ``correct_pairs``, ``chosen_reward_sum``,
``rejected_reward_sum``, ``margin_sum``, ``chosen_logps_sum``, ``rejected_logps_sum``.

All math is float32 (inputs are cast with ``.float()``, so half-precision log-probs do not
lose the small differences that ρ is made of) and written with ``softplus`` / ``logsigmoid``
so that no input overflows. Pure torch; P is the number of pairs, B the number of unpaired
examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf.losses.reward import wins

Metrics = dict[str, float]
LossOutput = tuple[Tensor, Metrics]

# ORPO's odds need log(1 − p) of the mean token probability p = e^m; a fully confident float32
# model can report m = 0 exactly (odds = ∞), so m is capped just below 0 (odds ≤ ~1.4e6).
_MAX_MEAN_LOGP = -1e-6


@dataclass
class PairLogps:
    """Sequence log-probabilities of P preference pairs, all [P].

    Attributes:
        chosen_logps: [P] policy ``log π(y_w|x)``, summed over the chosen completion's tokens.
        rejected_logps: [P] policy ``log π(y_l|x)``, summed over the rejected completion's tokens.
        chosen_tokens: [P] number of completion tokens of ``y_w`` (float or long), for the losses
            that normalise by length (IPO, SimPO, ORPO, RPO's NLL). Counts below 1 are read as 1.
        rejected_tokens: [P] number of completion tokens of ``y_l``.
        ref_chosen_logps: [P] reference ``log π_ref(y_w|x)``; None for reference-free losses.
        ref_rejected_logps: [P] reference ``log π_ref(y_l|x)``; None for reference-free losses.
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None


@dataclass
class UnpairedLogps:
    """Sequence log-probabilities of B unpaired (thumbs up / down) examples for KTO, all [B].

    Attributes:
        logps: [B] policy ``log π(y|x)`` summed over the completion.
        ref_logps: [B] reference ``log π_ref(y|x)``.
        desirable: [B] bool, True for a thumbs-up example.
        kl_logps: [B] policy ``log π(y'|x)`` of mismatched completions (``y'`` from another row).
        ref_kl_logps: [B] reference ``log π_ref(y'|x)`` on the same mismatched completions.
    """

    logps: Tensor
    ref_logps: Tensor
    desirable: Tensor
    kl_logps: Tensor
    ref_kl_logps: Tensor


# --------------------------------------------------------------------------------------------
# validation and shared pieces


def _check_1d(name: str, value: Tensor | None, like: Tensor, like_name: str) -> None:
    if value is None:
        return
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, expected {tuple(like.shape)} like {like_name}"
        )


def _check_pairs(logps: PairLogps, *, needs_reference: bool, loss: str) -> None:
    """Raise ValueError naming the offending field if the pair tensors are not all [P]."""
    if not isinstance(logps, PairLogps):
        raise ValueError(f"{loss} expects PairLogps, got {type(logps).__name__}")
    first = logps.chosen_logps
    if not isinstance(first, Tensor) or first.ndim != 1:
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise ValueError(f"chosen_logps must be a [P] tensor, got {shape}")
    for name in ("rejected_logps", "chosen_tokens", "rejected_tokens"):
        value = getattr(logps, name)
        if value is None:
            raise ValueError(f"{name} is required")
        _check_1d(name, value, first, "chosen_logps")
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        _check_1d(name, getattr(logps, name), first, "chosen_logps")
    if needs_reference and (logps.ref_chosen_logps is None or logps.ref_rejected_logps is None):
        missing = "ref_chosen_logps" if logps.ref_chosen_logps is None else "ref_rejected_logps"
        raise ValueError(f"{loss} needs reference log-probs: {missing} is None")


def _log_ratios(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """[P] ``log π/π_ref`` of the chosen and of the rejected completion, float32."""
    assert logps.ref_chosen_logps is not None and logps.ref_rejected_logps is not None
    chosen = logps.chosen_logps.float() - logps.ref_chosen_logps.float()
    rejected = logps.rejected_logps.float() - logps.ref_rejected_logps.float()
    return chosen, rejected


def _lengths(tokens: Tensor) -> Tensor:
    """[P] token counts as float32, at least 1 (an empty completion then has mean log-prob 0)."""
    return tokens.float().clamp(min=1.0)


def pair_metrics(logps: PairLogps, chosen_rewards: Tensor, rejected_rewards: Tensor) -> Metrics:
    """The metrics every pairwise loss returns, as sums over the P pairs.

    Args:
        logps: the pairs the loss was computed on.
        chosen_rewards: [P] the loss's implicit reward of ``y_w`` (``β · log π/π_ref`` for
            reference losses; the loss's own score for reference-free ones).
        rejected_rewards: [P] the same for ``y_l``.

    Returns:
        ``pairs``; ``correct_pairs`` (chosen reward > rejected, a tie counting ½);
        ``chosen_reward_sum``, ``rejected_reward_sum``, ``margin_sum`` (chosen − rejected);
        ``chosen_logps_sum``, ``rejected_logps_sum`` (policy sequence log-probs).
    """
    with torch.no_grad():
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        margin = chosen_rewards - rejected_rewards
        return {
            "pairs": float(margin.numel()),
            "correct_pairs": float(wins(margin).sum()),
            "chosen_reward_sum": float(chosen_rewards.sum()),
            "rejected_reward_sum": float(rejected_rewards.sum()),
            "margin_sum": float(margin.sum()),
            "chosen_logps_sum": float(logps.chosen_logps.detach().float().sum()),
            "rejected_logps_sum": float(logps.rejected_logps.detach().float().sum()),
        }


def _reference_output(
    logps: PairLogps, losses: Tensor, beta: float, chosen_ratio: Tensor, rejected_ratio: Tensor
) -> LossOutput:
    """Sum of per-pair ``losses`` [P] with the metrics of a reference loss (``β · log π/π_ref``)."""
    return losses.sum(), pair_metrics(logps, beta * chosen_ratio, beta * rejected_ratio)


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


# --------------------------------------------------------------------------------------------
# reference losses


def dpo_loss(logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0) -> LossOutput:
    """Sigmoid DPO (Rafailov et al., 2023, eq. 7), conservative when ``label_smoothing > 0``.

    ``loss = −log σ(βρ)`` per pair. With ``label_smoothing`` ε > 0 it is conservative DPO
    (cDPO, Mitchell, 2023), which assumes each label is flipped with probability ε and fits the
    expected label: ``(1 − ε) · (−log σ(βρ)) + ε · (−log σ(−βρ))``. Every pair costs ln 2 at
    ρ = 0.

    Args:
        logps: [P] pairs with reference log-probs.
        beta: β, the strength of the implicit KL penalty (smaller lets π move further from π_ref).
        label_smoothing: ε in [0, 0.5].

    Returns:
        ``(loss_sum, metrics)``: the sum over pairs, and :func:`pair_metrics` with rewards
        ``β · log π/π_ref``.
    """
    _check_pairs(logps, needs_reference=True, loss="dpo")
    _check_beta(beta)
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    chosen, rejected = _log_ratios(logps)
    logits = beta * (chosen - rejected)  # [P] βρ
    losses = F.softplus(-logits)  # −log σ(βρ)
    if label_smoothing > 0:
        losses = (1 - label_smoothing) * losses + label_smoothing * F.softplus(logits)
    return _reference_output(logps, losses, beta, chosen, rejected)


def robust_dpo_loss(
    logps: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1
) -> LossOutput:
    """Robust DPO, rDPO (Chowdhury et al., 2024, eq. 8): unbiased under label flips.

    With ``ℓ(z) = −log σ(z)`` and flip rate ε::

        loss = [(1 − ε) · ℓ(βρ) − ε · ℓ(−βρ)] / (1 − 2ε)

    whose expectation over the noisy labels is the clean DPO loss. Unlike cDPO it can be
    negative. ε = 0 is DPO; ρ = 0 still costs ln 2.

    Args:
        logps: [P] pairs with reference log-probs.
        beta: β as in DPO.
        label_smoothing: ε, the assumed label-flip rate, in [0, 0.5).
    """
    _check_pairs(logps, needs_reference=True, loss="robust")
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) for robust DPO, got {label_smoothing}"
        )
    chosen, rejected = _log_ratios(logps)
    logits = beta * (chosen - rejected)  # [P]
    eps = label_smoothing
    losses = ((1 - eps) * F.softplus(-logits) - eps * F.softplus(logits)) / (1 - 2 * eps)
    return _reference_output(logps, losses, beta, chosen, rejected)


def ipo_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """IPO (Azar et al., 2023, eq. 17): squared regression of ρ onto 1 / (2τ), with τ = ``beta``.

    ``loss = (ρ̄ − 1/(2β))²`` where ``ρ̄`` is built from *length-normalised* log-ratios, the
    per-token mean log-ratio of the chosen completion minus that of the rejected one::

        ρ̄ = (log π/π_ref)(y_w) / |y_w| − (log π/π_ref)(y_l) / |y_l|

    as IPO's authors intend for sequences. The loss does not saturate like DPO's, so ρ̄ stops at
    the target 1/(2β) instead of growing without bound. A pair at ρ̄ = 0 costs 1/(4β²).

    The metrics' rewards are ``β · log π/π_ref`` of the whole sequences, as for every reference
    loss, so accuracies and margins compare across losses.
    """
    _check_pairs(logps, needs_reference=True, loss="ipo")
    _check_beta(beta)
    chosen, rejected = _log_ratios(logps)
    normalised = chosen / _lengths(logps.chosen_tokens) - rejected / _lengths(
        logps.rejected_tokens
    )  # [P]
    losses = (normalised - 1 / (2 * beta)) ** 2
    return _reference_output(logps, losses, beta, chosen, rejected)


def hinge_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """SLiC's calibration loss on the DPO log-ratio (Zhao et al., 2023): ``max(0, 1 − βρ)``.

    A pair stops contributing once ``βρ ≥ 1``, i.e. once the chosen completion's log-ratio beats
    the rejected one's by ``1/β`` nats. A pair at ρ = 0 costs 1.
    """
    _check_pairs(logps, needs_reference=True, loss="hinge")
    _check_beta(beta)
    chosen, rejected = _log_ratios(logps)
    losses = F.relu(1 - beta * (chosen - rejected))
    return _reference_output(logps, losses, beta, chosen, rejected)


def _logistic(x: Tensor) -> Tensor:
    return F.softplus(-x)  # log(1 + e^{−x})


def _hinge(x: Tensor) -> Tensor:
    return F.relu(1 - x)


def _squared(x: Tensor) -> Tensor:
    return (x - 1) ** 2


def _exponential(x: Tensor) -> Tensor:
    return torch.exp(-x)  # overflows to inf for x < ~−88 in float32: a property of f itself


def _truncated_squared(x: Tensor) -> Tensor:
    return F.relu(1 - x) ** 2


def _savage(x: Tensor) -> Tensor:
    return torch.sigmoid(-x) ** 2  # 1 / (1 + e^x)², via σ(−x) which never overflows


# Convex f for GPO (Tang et al., 2024), each mapping βρ [P] to a loss [P]:
# logistic → DPO, hinge → SLiC, squared → IPO up to scale ((βρ − 1)² = β²(ρ − 1/β)², IPO's
# (ρ − 1/(2τ))² with τ = β/2), exponential → AdaBoost-like, truncated squared, Savage.
CONVEX_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "logistic": _logistic,
    "hinge": _hinge,
    "squared": _squared,
    "exponential": _exponential,
    "truncated_squared": _truncated_squared,
    "savage": _savage,
}


def general_preference_loss(
    logps: PairLogps, f: Callable[[Tensor], Tensor] | str, *, beta: float = 0.1
) -> LossOutput:
    """Generalised preference optimisation, GPO (Tang et al., 2024, §2): ``f(βρ)`` per pair.

    Any convex ``f`` with ``f'(0) < 0`` gives an offline preference loss; the choice of ``f``
    recovers known methods: ``"logistic"`` is DPO, ``"hinge"`` is SLiC (:func:`hinge_loss`),
    ``"squared"`` is IPO up to scale and without IPO's length normalisation.

    Args:
        logps: [P] pairs with reference log-probs.
        f: elementwise convex function [P] → [P], or a name in :data:`CONVEX_FUNCTIONS`.
        beta: β.
    """
    _check_pairs(logps, needs_reference=True, loss="general")
    _check_beta(beta)
    if isinstance(f, str):
        if f not in CONVEX_FUNCTIONS:
            raise ValueError(f"f must be one of {sorted(CONVEX_FUNCTIONS)}, got {f!r}")
        f = CONVEX_FUNCTIONS[f]
    if not callable(f):
        raise ValueError(f"f must be callable or a name in CONVEX_FUNCTIONS, got {f!r}")
    chosen, rejected = _log_ratios(logps)
    logits = beta * (chosen - rejected)
    losses = f(logits)
    if not isinstance(losses, Tensor) or losses.shape != logits.shape:
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"f must map [P] to [P] elementwise, got {shape} from {tuple(logits.shape)}"
        )
    return _reference_output(logps, losses.float(), beta, chosen, rejected)


def rpo_loss(logps: PairLogps, *, beta: float = 0.1, alpha: float = 1.0) -> LossOutput:
    """RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization", the DPO+NLL loss).

    DPO plus α times the chosen completion's negative log-likelihood normalised by its length::

        loss = −log σ(βρ) − α · log π(y_w|x) / |y_w|

    The NLL term keeps the chosen likelihood from falling, which plain DPO allows. As in the
    paper's final version (v3) α weights the NLL term; the paper uses α = 1.
    """
    _check_pairs(logps, needs_reference=True, loss="rpo")
    _check_beta(beta)
    chosen, rejected = _log_ratios(logps)
    nll = -logps.chosen_logps.float() / _lengths(logps.chosen_tokens)  # [P] mean token NLL
    losses = F.softplus(-beta * (chosen - rejected)) + alpha * nll
    return _reference_output(logps, losses, beta, chosen, rejected)


def apo_zero_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """APO-zero (D'Oosterlinck et al., 2024, "Anchored Preference Optimization", eq. 7).

    With ``r = log π/π_ref``::

        loss = (1 − σ(β r_w)) + σ(β r_l)

    pushes the chosen likelihood *up* and the rejected one *down*, each on its own (not only
    their difference): meant for data whose chosen answers are better than the policy's own.
    A pair at r = 0 costs 1.
    """
    _check_pairs(logps, needs_reference=True, loss="apo_zero")
    _check_beta(beta)
    chosen, rejected = _log_ratios(logps)
    # 1 − σ(z) = σ(−z): same value, no cancellation when σ(z) is close to 1
    losses = torch.sigmoid(-beta * chosen) + torch.sigmoid(beta * rejected)
    return _reference_output(logps, losses, beta, chosen, rejected)


# --------------------------------------------------------------------------------------------
# reference-free losses


def simpo_loss(logps: PairLogps, *, beta: float = 2.0, gamma: float = 0.5) -> LossOutput:
    """SimPO (Meng et al., 2024, eq. 6): reference-free, length-normalised, with a margin.

    The reward is the average token log-probability scaled by β, ``r(y) = β/|y| · log π(y|x)``::

        loss = −log σ(r(y_w) − r(y_l) − γ)

    ``gamma`` is the *absolute* target reward margin γ of eq. 6, in reward units (already
    including β). Code that takes a ``gamma_beta_ratio`` (the SimPO repository) uses
    γ = ratio · β: β = 2, γ = 0.5 here is ratio 0.25. Reference log-probs, if present, are
    ignored. The metrics' rewards are ``β/|y| · log π(y|x)``.
    """
    _check_pairs(logps, needs_reference=False, loss="simpo")
    _check_beta(beta)
    chosen = beta * logps.chosen_logps.float() / _lengths(logps.chosen_tokens)  # [P]
    rejected = beta * logps.rejected_logps.float() / _lengths(logps.rejected_tokens)
    losses = F.softplus(-(chosen - rejected - gamma))
    return losses.sum(), pair_metrics(logps, chosen, rejected)


def _log_odds(mean_logps: Tensor) -> Tensor:
    """[P] ``log(p / (1 − p))`` of ``p = e^m`` from the mean token log-prob ``m`` (≤ 0).

    ``log(1 − e^m)`` is computed as ``log(−expm1(m))`` for m close to 0 and ``log1p(−e^m)``
    otherwise, each exact where the other loses digits (Mächler, 2012); m is capped just below
    0 so that a fully confident completion has large, finite odds.
    """
    m = mean_logps.clamp(max=_MAX_MEAN_LOGP)
    near_zero = m > -math.log(2)
    # evaluate each branch on inputs where it is finite, so neither puts NaN in the gradient
    log1m_exp = torch.where(
        near_zero,
        torch.log(-torch.expm1(torch.where(near_zero, m, torch.full_like(m, -1.0)))),
        torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(m, -1.0), m))),
    )
    return m - log1m_exp


def orpo_loss(logps: PairLogps, *, beta: float = 0.1) -> LossOutput:
    """ORPO (Hong et al., 2024, eq. 6–7): SFT plus an odds-ratio penalty, reference-free.

    With the mean token log-prob ``m = log π(y|x) / |y|`` and its odds
    ``odds(y) = e^m / (1 − e^m)``::

        loss = −m(y_w) + λ · −log σ(log odds(y_w) − log odds(y_l)),   λ = beta

    The NLL term is the chosen completion's *per-token mean* NLL, one value per pair (the
    caller's division by the pairs averages it over pairs, not over the step's tokens).
    ``log odds = m − log(1 − e^m)`` is computed stably; see :func:`_log_odds`. Reference
    log-probs, if present, are ignored. The metrics' rewards are the log odds themselves
    (unscaled: λ weights the term, it does not enter σ), so the margin is the log odds ratio.
    """
    _check_pairs(logps, needs_reference=False, loss="orpo")
    _check_beta(beta)
    chosen_mean = logps.chosen_logps.float() / _lengths(logps.chosen_tokens)  # [P]
    rejected_mean = logps.rejected_logps.float() / _lengths(logps.rejected_tokens)
    chosen_odds, rejected_odds = _log_odds(chosen_mean), _log_odds(rejected_mean)
    losses = -chosen_mean + beta * F.softplus(-(chosen_odds - rejected_odds))
    return losses.sum(), pair_metrics(logps, chosen_odds, rejected_odds)


# --------------------------------------------------------------------------------------------
# KTO


def kto_loss(
    logps: UnpairedLogps,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_estimate: Tensor | float | None = None,
) -> LossOutput:
    """KTO (Ethayarajh et al., 2024, eq. 8): prospect-theoretic loss on unpaired thumbs.

    With ``r = log π(y|x) − log π_ref(y|x)`` and the reference point
    ``z_ref = max(0, mean_B(log π(y'|x) − log π_ref(y'|x)))`` over mismatched completions
    ``y'`` (the batch estimate of KL(π‖π_ref), detached: no gradient flows through it)::

        loss = λ_D · (1 − σ(β(r − z_ref)))   for desirable y
        loss = λ_U · (1 − σ(β(z_ref − r)))   for undesirable y

    The paper advises ``λ_D n_D / (λ_U n_U)`` in [1, 4/3] for imbalanced data.

    Args:
        logps: [B] examples.
        beta: β.
        desirable_weight: λ_D.
        undesirable_weight: λ_U.
        kl_estimate: optional KL estimate to use instead of this batch's mean (e.g. the mean
            over the whole optimiser step when it is split into micro-batches); it is clamped
            at 0 and detached like the batch one.

    Returns:
        ``(loss_sum, metrics)`` with the sum over the B examples; metrics (sums):
        ``examples``, ``desirable``, ``undesirable`` (counts), ``desirable_reward_sum``,
        ``undesirable_reward_sum`` (of ``β · r``), ``desirable_logps_sum``,
        ``undesirable_logps_sum``, ``kl_sum`` (Σ over rows of ``log π(y') − log π_ref(y')``,
        unclamped; divide by ``examples`` for the mean) and ``z_ref`` (the clamped reference
        point used, times B so it adds like the rest).
    """
    if not isinstance(logps, UnpairedLogps):
        raise ValueError(f"kto expects UnpairedLogps, got {type(logps).__name__}")
    first = logps.logps
    if not isinstance(first, Tensor) or first.ndim != 1:
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise ValueError(f"logps must be a [B] tensor, got {shape}")
    for name in ("ref_logps", "desirable", "kl_logps", "ref_kl_logps"):
        value = getattr(logps, name)
        if value is None:
            raise ValueError(f"{name} is required")
        _check_1d(name, value, first, "logps")
    _check_beta(beta)
    rewards = logps.logps.float() - logps.ref_logps.float()  # [B] r
    kl_rows = (logps.kl_logps.float() - logps.ref_kl_logps.float()).detach()  # [B]
    if kl_estimate is None:
        kl = kl_rows.mean() if kl_rows.numel() else kl_rows.new_zeros(())
    else:
        kl = torch.as_tensor(kl_estimate, dtype=torch.float32, device=rewards.device)
    z_ref = kl.detach().clamp(min=0.0)
    desirable = logps.desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * torch.sigmoid(-beta * (rewards - z_ref)),  # 1 − σ(z) = σ(−z)
        undesirable_weight * torch.sigmoid(-beta * (z_ref - rewards)),
    )
    with torch.no_grad():
        scaled = beta * rewards.detach()
        policy = logps.logps.detach().float()
        metrics = {
            "examples": float(rewards.numel()),
            "desirable": float(desirable.sum()),
            "undesirable": float((~desirable).sum()),
            "desirable_reward_sum": float(scaled[desirable].sum()),
            "undesirable_reward_sum": float(scaled[~desirable].sum()),
            "desirable_logps_sum": float(policy[desirable].sum()),
            "undesirable_logps_sum": float(policy[~desirable].sum()),
            "kl_sum": float(kl_rows.sum()),
            "z_ref": float(z_ref) * rewards.numel(),
        }
    return losses.sum(), metrics


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class LossSpec:
    """A pairwise loss by name.

    Attributes:
        fn: the loss, ``fn(logps, **hyperparameters) -> (loss_sum, metrics)``; for ``general``
            the convex function comes second: ``fn(logps, f, beta=...)``.
        needs_reference: whether it reads ``ref_chosen_logps`` / ``ref_rejected_logps`` (if not,
            no reference model need be loaded or run).
        hyperparameters: the keyword arguments it reads (besides ``f`` for ``general``).
    """

    fn: Callable[..., LossOutput]
    needs_reference: bool
    hyperparameters: tuple[str, ...] = ("beta",)


PREFERENCE_LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo_loss, True, ("beta", "label_smoothing")),
    "robust": LossSpec(robust_dpo_loss, True, ("beta", "label_smoothing")),
    "ipo": LossSpec(ipo_loss, True),
    "hinge": LossSpec(hinge_loss, True),
    "general": LossSpec(general_preference_loss, True),
    "simpo": LossSpec(simpo_loss, False, ("beta", "gamma")),
    "orpo": LossSpec(orpo_loss, False),
    "rpo": LossSpec(rpo_loss, True, ("beta", "alpha")),
    "apo_zero": LossSpec(apo_zero_loss, True),
}
