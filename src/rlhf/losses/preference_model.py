"""Pairwise preference model losses: P(a ≻ b | x) from one number per *ordered* pair.

A general (pairwise) preference model reads the prompt and both responses and gives a logit
g(x, a, b) (Jiang et al., 2023, PairRM; Ye et al., 2024, "Online iterative RLHF with a general
preference model", §2; Munos et al., 2023, whose Nash learning needs exactly such a P). Read
in one order only, g carries a position bias and P(a ≻ b) + P(b ≻ a) need not be 1. Reading
both orders and taking the difference makes the probability antisymmetric *by construction*::

    d(x, a, b) = g(x, a, b) − g(x, b, a) = −d(x, b, a)
    P(a ≻ b | x) = σ(d(x, a, b)),  so  P(a ≻ b | x) + P(b ≻ a | x) = 1

and any bias that g gives a position cancels in d. Unlike Bradley–Terry (``σ(r(a) − r(b))``,
:mod:`rlhf.losses.reward`), d need not be a difference of per-response scores, so P can be
non-transitive (a ≻ b ≻ c ≻ a, each with probability > ½).

The loss is the binary cross-entropy of P(a ≻ b | x) against the label y = P*(a ≻ b | x)
(1 when a is the chosen response; soft labels allowed)::

    loss(a, b) = −y log σ(d) − (1 − y) log σ(−d) = y · softplus(−d) + (1 − y) · softplus(d)

Each comparison trains on both orders: d holds g(x, a, b) and g(x, b, a), and the cross-entropy
of the reverse order, −(1 − y) log σ(−d) − y log σ(d), is the same number, so a comparison is
one loss unit and the loss does not change with the order a pair is given in.

Every function here is pure torch. P is the number of comparisons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(forward_logits: torch.Tensor, reverse_logits: torch.Tensor) -> None:
    if forward_logits.ndim != 1 or forward_logits.shape != reverse_logits.shape:
        raise ValueError(
            f"forward_logits {tuple(forward_logits.shape)} and reverse_logits "
            f"{tuple(reverse_logits.shape)} must both be [P]"
        )


def antisymmetric_sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """σ(logits) elementwise, with ``σ(−x) == 1 − σ(x)`` exactly in floating point.

    σ(|x|) lies in [½, 1], where ``1 − s`` is exact (Sterbenz's lemma), and negative logits
    get ``1 − σ(|x|)``: a swapped pair's probability is exactly one minus the other's, as
    torch's own ``sigmoid`` does not promise. Any shape; NaN stays NaN.
    """
    upper = torch.sigmoid(logits.abs())
    return torch.where(logits >= 0, upper, 1.0 - upper)


def preference_probability(
    forward_logits: torch.Tensor, reverse_logits: torch.Tensor
) -> torch.Tensor:
    """P(a ≻ b | x) = σ(g(x, a, b) − g(x, b, a)): [P] float32 in [0, 1].

    Args:
        forward_logits: [P] g(x, a, b), the model's logit with a read first.
        reverse_logits: [P] g(x, b, a), the logit of the same comparison in the other order.

    Swapping the arguments gives exactly ``1 − P`` (:func:`antisymmetric_sigmoid`); a pair of
    equal logits gives ½.
    """
    _check_pair(forward_logits, reverse_logits)
    return antisymmetric_sigmoid(forward_logits.float() - reverse_logits.float())


def pairwise_preference_loss(
    forward_logits: torch.Tensor,
    reverse_logits: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed binary cross-entropy of P(a ≻ b | x) = σ(d), d = g(x, a, b) − g(x, b, a), against
    the labels (see the module docstring).

    Args:
        forward_logits: [P] g(x, a, b).
        reverse_logits: [P] g(x, b, a).
        labels: [P] target P(a ≻ b | x) in [0, 1]: 1 when a is the preferred response, 0 when
            b is, anything between for soft labels.

    Returns:
        ``(loss_sum, metrics)``: the *sum* over the P comparisons of ``y · softplus(−d) +
        (1 − y) · softplus(d)`` (stable for any d; ln 2 per comparison at d = 0); the caller
        divides by the comparisons of the whole optimiser step. ``metrics`` are sums too, so
        they add over micro-batches: ``pairs``, ``correct_pairs`` (the model's preferred side,
        d > 0 or d < 0, is the label's, y > ½ or y < ½; a tie of either counts ½) and
        ``loss_sum``.
    """
    _check_pair(forward_logits, reverse_logits)
    if labels.shape != forward_logits.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must be [P] like the logits")
    labels = labels.float()
    if labels.numel() and not bool(((labels >= 0) & (labels <= 1)).all()):
        raise ValueError("labels are probabilities: every one must lie in [0, 1]")
    d = forward_logits.float() - reverse_logits.float()  # [P], antisymmetric in (a, b)
    losses = labels * F.softplus(-d) + (1.0 - labels) * F.softplus(d)  # [P], −log σ(±d)
    loss_sum = losses.sum()
    with torch.no_grad():
        metrics = {
            "pairs": float(d.numel()),
            "correct_pairs": float(agreement(d, labels).sum()),
            "loss_sum": float(loss_sum),
        }
    return loss_sum, metrics


def agreement(d: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[P]: 1 where the model and the label prefer the same side (sign of d against y − ½),
    0 where they differ, ½ where either is a tie."""
    model_side, label_side = torch.sign(d), torch.sign(labels.float() - 0.5)
    tie = (model_side == 0) | (label_side == 0)
    return torch.where(tie, 0.5, (model_side == label_side).float())
