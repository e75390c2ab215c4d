"""Per-token estimators of KL(π‖π_ref) from samples of π (Schulman, 2020).

J. Schulman, "Approximating KL divergence" (2020, http://joschu.net/blog/kl-approx.html):
to estimate ``KL[q, p] = E_{x~q}[log q(x)/p(x)]`` from samples ``x ~ q`` with the ratio
``r = p(x)/q(x)``, three estimators::

    k1 = −log r                 unbiased, high variance, negative on some samples
    k2 = ½ (log r)²             biased (low bias when p ≈ q), low variance, ≥ 0
    k3 = (r − 1) − log r        unbiased, low variance, ≥ 0 pointwise (log r ≤ r − 1)

In RLHF the samples come from the policy, ``q = π`` and ``p = π_ref``, so ``r = π_ref/π`` and
``log r = ref_logps − logps``: k1 is the familiar ``log π − log π_ref``. Summed over a
response's tokens, each estimates the sequence KL(π‖π_ref) (the sum of the per-token KLs of
the conditional distributions along the sampled path).

Which to use where (the reason the choice must be deliberate):

- *In the reward* (PPO, InstructGPT) the estimate is a detached number; k1 is the usual choice
  (its expectation is the KL the objective penalises).
- *In the loss* (GRPO) what matters is the gradient. On-policy, ``E_π[∇k2] = ∇KL(π‖π_ref)``
  exactly, while ``E_π[∇k3] = ∇KL(π_ref‖π)``, the *reverse* KL (DeepSeekMath's choice);
  ``E_π[∇k1] = E_π[∇log π] = 0``, so k1 as a loss term does nothing in expectation.

Extremes: k3 has ``r = exp(log r)``, which overflows float32 past ``log r ≈ 88`` and is huge long
before, e.g. when π puts tiny probability on a token π_ref likes. ``clamp`` bounds ``log r`` to
``[−clamp, clamp]`` before the estimator (verl uses 20), and ``max_kl`` bounds the estimate
itself to ``[−max_kl, max_kl]`` (verl uses 10 for k3). Both are off by default; recipes choose.

Pure torch, float32. Shapes: [B, T] (B sequences, T tokens); any matching shape works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

KLEstimator = Callable[[Tensor], Tensor]


def kl_k1(log_ratio: Tensor) -> Tensor:
    """Schulman's k1 = −log r, elementwise, from ``log_ratio`` = log r = log π_ref − log π."""
    return -log_ratio


def kl_k2(log_ratio: Tensor) -> Tensor:
    """Schulman's k2 = ½ (log r)², elementwise."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 = (r − 1) − log r, elementwise; ``expm1`` keeps it exact for small log r."""
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimator(name: str) -> KLEstimator:
    """The estimator called ``name`` ("k1", "k2" or "k3"), a function of log r."""
    if name not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(KL_ESTIMATORS)}, got {name!r}")
    return KL_ESTIMATORS[name]


def per_token_kl(
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor | None = None,
    *,
    estimator: str = "k1",
    clamp: float | None = None,
    max_kl: float | None = None,
) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) at the sampled tokens.

    Args:
        logps: [B, T] ``log π(y_t | x, y_<t)`` of the sampled tokens under the policy (the
            sampling distribution).
        ref_logps: [B, T] ``log π_ref(y_t | x, y_<t)`` of the same tokens.
        mask: [B, T] optional, nonzero at real tokens; the estimate is 0 elsewhere (computed on
            zeros there, so padding holding −inf or NaN leaks into neither value nor gradient).
        estimator: "k1", "k2" or "k3" (see the module docstring).
        clamp: if given, ``log r`` is clamped to ``[−clamp, clamp]`` first (> 0).
        max_kl: if given, the estimate is clamped to ``[−max_kl, max_kl]`` (> 0).

    Returns:
        [B, T] float32 estimates; differentiable in both log-prob inputs (detach what should
        not be trained; in the reward, detach the whole result).
    """
    fn = kl_estimator(estimator)
    if logps.shape != ref_logps.shape:
        raise ValueError(
            f"ref_logps has shape {tuple(ref_logps.shape)}, expected {tuple(logps.shape)} "
            "like logps"
        )
    if mask is not None and mask.shape != logps.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected {tuple(logps.shape)} like logps"
        )
    for name, value in (("clamp", clamp), ("max_kl", max_kl)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 or None, got {value}")
    log_ratio = ref_logps.float() - logps.float()
    if mask is not None:
        log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio))
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    kl = fn(log_ratio)
    if max_kl is not None:
        kl = kl.clamp(-max_kl, max_kl)
    return kl


def sequence_kl(logps: Tensor, ref_logps: Tensor, mask: Tensor) -> Tensor:
    """[B] the k1 estimate of each response's sequence-level KL(π‖π_ref):
    ``Σ_t (log π − log π_ref) · mask`` over its tokens, for responses sampled from π
    (unbiased; Schulman 2020). ``logps``, ``ref_logps`` [B, T]; ``mask`` [B, T] nonzero on real
    tokens (padding, even −inf, never enters)."""
    return per_token_kl(logps, ref_logps, mask, estimator="k1").sum(-1)
