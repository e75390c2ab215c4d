"""Self-play against a preference: the pieces of Nash-MD and SPPO that are pure tensor math.

A pairwise preference P(y ≻ y′ | x) need not come from any scalar reward (it may be
non-transitive), so these methods do not maximise a reward: they look for the policy that no
other policy is preferred to (the Nash equilibrium of the two-player game whose payoff is P).

* **Nash-MD** (Munos et al. 2024, "Nash Learning from Human Feedback", §6–7): mirror descent
  towards the equilibrium of the KL-regularised game. Its opponent is the *geometric mixture*
  of the policy and the reference, π^β_mix(y|x) ∝ π(y|x)^{1−β} π_ref(y|x)^β (eq. 7), which
  autoregressive models approximate token by token (:func:`geometric_mixture_logprobs`, as
  Munos et al.'s experiments and TRL's Nash-MD do). The policy-gradient form (Nash-MD-PG,
  §7) updates π with the advantage P(y ≻ y′) − ½ of a sample y ~ π against y′ ~ π^β_mix,
  plus τ·KL(π‖π_ref).
* **SPPO** (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
  eq. 3.6 and Alg. 1): with π_t the policy that sampled, regress the log-ratio
  log π(y|x)/π_t(y|x) onto η (P(y ≻ π_t | x) − ½), where the win rate against the policy is
  estimated from the other samples to the same prompt (:func:`win_rates`). Its fixed point is
  the multiplicative-weights update π_{t+1} ∝ π_t · exp(η P(y ≻ π_t)).

All math in float32. Shapes: B rows, V the vocabulary, N sequences, K samples per prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def geometric_mixture_logprobs(
    policy_logits: Tensor, reference_logits: Tensor, beta: float
) -> Tensor:
    """[B, V] log π^β_mix(· | prefix) = log-softmax((1 − β) log π + β log π_ref) of one decoding
    step: the normalised geometric mixture of the two next-token distributions (Munos et al.
    2024, eq. 7, token by token). β = 0 is the policy, β = 1 the reference.

    Args:
        policy_logits: [B, V] the policy's next-token logits.
        reference_logits: [B, V] the reference's, same vocabulary.
        beta: the mixture's weight on the reference, in [0, 1].
    """
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(
            f"policy logits {tuple(policy_logits.shape)} and reference logits "
            f"{tuple(reference_logits.shape)} must have one shape"
        )
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    mixed = (1.0 - beta) * F.log_softmax(policy_logits.float(), dim=-1) + beta * F.log_softmax(
        reference_logits.float(), dim=-1
    )
    return F.log_softmax(mixed, dim=-1)


def win_rates(preferences: Tensor) -> Tensor:
    """[N] each sample's estimated win rate against the policy, P̂(y_k ≻ π | x), from the
    preferences among one prompt's K samples: ``preferences`` [P, K, K] with entry [p, k, j] =
    P(y_k ≻ y_j | x_p) (antisymmetric: [p, j, k] = 1 − [p, k, j]; the diagonal is ignored).
    The mean over the K − 1 *other* samples, an unbiased estimate for independent samples
    (Wu et al. 2024 average over the K samples; a sample against itself adds a constant ½).
    Rows prompt-major: N = P·K."""
    if preferences.ndim != 3 or preferences.shape[1] != preferences.shape[2]:
        raise ValueError(f"preferences must be [P, K, K], got {tuple(preferences.shape)}")
    k = preferences.shape[1]
    if k < 2:
        raise ValueError("a win rate needs K ≥ 2 samples per prompt")
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=preferences.device)
    wins = (preferences.float() * off_diagonal).sum(-1) / (k - 1)  # [P, K]
    return wins.reshape(-1)


def sppo_loss(
    logps: Tensor, old_logps: Tensor, win_rate: Tensor, *, eta: float
) -> tuple[Tensor, dict[str, float]]:
    """SPPO's square loss (Wu et al. 2024, eq. 3.6), summed over N sequences::

        ( log π(y|x) − log π_t(y|x) − η (P̂(y ≻ π_t | x) − ½) )²

    Args:
        logps: [N] sequence log-probs log π(y|x) under the policy being trained (gradients).
        old_logps: [N] the same under π_t, the policy that sampled (frozen).
        win_rate: [N] P̂(y ≻ π_t | x) in [0, 1] (:func:`win_rates`).
        eta: η > 0, the step size of the multiplicative-weights update it approximates.

    Returns:
        ``(loss_sum, sums)``: ``sequences``, ``loss_sum``, ``log_ratio_sum`` (log π/π_t) and
        ``target_sum`` (η (P̂ − ½)).
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    for name, value in (("old_logps", old_logps), ("win_rate", win_rate)):
        if value.shape != logps.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, expected {tuple(logps.shape)} like logps"
            )
    log_ratio = logps.float() - old_logps.float().detach()
    target = eta * (win_rate.float().detach() - 0.5)
    losses = (log_ratio - target) ** 2
    loss = losses.sum()
    return loss, {
        "sequences": float(logps.numel()),
        "loss_sum": float(loss.detach()),
        "log_ratio_sum": float(log_ratio.detach().sum()),
        "target_sum": float(target.sum()),
    }
