"""The train–inference mismatch: how far the engine that sampled a rollout (vLLM) is from
the trainer's policy on the same tokens, and the per-token weights that correct for it.

Tokens are drawn from the engine's π_engine, but the gradient is the trainer's π_train's: the
two differ by kernels, precision and (when a sync fails) weights. With log-probs of the sampled
tokens under both, ``Δ = log π_train − log π_engine`` per token:

* **Truncated importance sampling** (Yao et al. 2025, "Your Efficient RL Framework Secretly
  Brings You Off-Policy RL Training"; Ionides 2008): weight each token's policy-gradient term
  by ``min(π_train / π_engine, C)``, the importance ratio that turns the engine's samples into
  the trainer's, truncated at C to bound its variance.
* **Masking**: drop tokens whose ratio leaves ``[low, high]`` (weight 0), keep the rest at 1:
  no variance added, the few tokens the two disagree most on left out.

Shapes: B rows, R response tokens; ``mask`` [B, R] is 1 on real response tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(train_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> None:
    if not (train_logps.shape == engine_logps.shape == mask.shape) or train_logps.dim() != 2:
        raise ValueError(
            f"train_logps {tuple(train_logps.shape)}, engine_logps "
            f"{tuple(engine_logps.shape)} and mask {tuple(mask.shape)} must be one [B, R] shape"
        )


def truncated_importance_weights(
    train_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float
) -> Tensor:
    """[B, R] ``min(exp(train_logps − engine_logps), cap)`` on real tokens, 0 elsewhere.

    train_logps / engine_logps [B, R]: log-probs of the sampled tokens under the trainer's
    policy (at sampling time) and under the engine; cap C > 0.
    """
    _check(train_logps, engine_logps, mask)
    if cap <= 0:
        raise ValueError(f"cap: must be > 0, got {cap}")
    ratio = torch.exp((train_logps - engine_logps).float())
    return ratio.clamp(max=cap) * mask.float()


def ratio_band_mask(
    train_logps: Tensor, engine_logps: Tensor, mask: Tensor, low: float, high: float
) -> Tensor:
    """[B, R] 1 on real tokens whose ratio ``π_train / π_engine`` lies in ``[low, high]``,
    0 elsewhere (on the tokens masked out and on padding)."""
    _check(train_logps, engine_logps, mask)
    if not 0 <= low < 1 < high:
        raise ValueError(f"the band [{low}, {high}] must hold 1 (0 <= low < 1 < high)")
    ratio = torch.exp((train_logps - engine_logps).float())
    return ((ratio >= low) & (ratio <= high)).float() * mask.float()


def mismatch_metrics(train_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the two policies are apart on the sampled tokens, over real tokens:

    * ``logp_abs_mean`` / ``logp_abs_max``: mean and largest ``|Δ log p|``;
    * ``kl``: KL(π_engine ‖ π_train) per token by the k3 estimator ``r − 1 − log r`` with
      ``r = π_train / π_engine`` (Schulman 2020), unbiased under the engine's samples and never
      negative;
    * ``kl_k1``: the plain estimate ``E[log π_engine − log π_train]`` (unbiased, noisier).
    """
    _check(train_logps, engine_logps, mask)
    real = mask.bool()
    if not real.any():
        return {"logp_abs_mean": 0.0, "logp_abs_max": 0.0, "kl": 0.0, "kl_k1": 0.0}
    log_ratio = (train_logps - engine_logps).float()[real]  # log r, real tokens only
    return {
        "logp_abs_mean": float(log_ratio.abs().mean()),
        "logp_abs_max": float(log_ratio.abs().max()),
        "kl": float((torch.expm1(log_ratio) - log_ratio).mean()),
        "kl_k1": float((-log_ratio).mean()),
    }
