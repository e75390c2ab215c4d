"""Process reward model losses and step scores: pure tensor functions.

A process reward model (PRM) gives every step k of a solution a logit ℓ_k, and
P(step k correct | x, s₁ … s_k) = σ(ℓ_k). It is trained with the binary cross-entropy of that
probability against each labelled step's target (Lightman et al. 2023, "Let's verify step by
step", §2.4; Math-Shepherd, Wang et al. 2024, eq. 3, whose soft targets in [0, 1] the same loss
takes)::

    L = − Σ_k [ y_k log σ(ℓ_k) + (1 − y_k) log(1 − σ(ℓ_k)) ]

summed over the labelled steps (the Trainer divides by their count). A solution's score
aggregates its steps' probabilities (Lightman et al. 2023, §3: the product; the minimum and
the last step are the usual alternatives): :func:`aggregate_steps`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Aggregation = Literal["min", "product", "last"]


def step_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed binary cross-entropy of the steps in the loss.

    ``logits`` [S] each step's ℓ_k (float), ``targets`` [S] its P(correct) to learn in [0, 1]
    or NaN for a step left out. Returns the summed loss (a scalar) and the sums ``loss_sum``,
    ``steps`` (in the loss), ``correct_steps`` (σ(ℓ) on the target's side of ½; a soft target
    of exactly ½ counts ½), ``positive_steps`` (targets ≥ ½).
    """
    labelled = ~targets.isnan()
    logits, targets = logits[labelled].float(), targets[labelled].float()
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    predicted = (logits > 0).float()
    wanted = (targets > 0.5).float()
    agree = torch.where(
        targets == 0.5, torch.full_like(targets, 0.5), (predicted == wanted).float()
    )
    return loss, {
        "loss_sum": float(loss.detach()),
        "steps": float(logits.numel()),
        "correct_steps": float(agree.sum()),
        "positive_steps": float(wanted.sum()),
    }


def first_error(correct: torch.Tensor | list[bool]) -> int | None:
    """The index of the first step judged wrong in ``correct`` [n] (bools), None if none."""
    for index, ok in enumerate(torch.as_tensor(correct).tolist()):
        if not ok:
            return index
    return None


def aggregate_steps(probabilities: torch.Tensor, how: Aggregation) -> torch.Tensor:
    """A solution's score from its steps' P(correct) [n] (n ≥ 1): the smallest (``min``), the
    product (``product``, the probability that every step is correct if the steps' errors are
    independent; Lightman et al. 2023, §3) or the last step's (``last``)."""
    if probabilities.numel() == 0:
        raise ValueError("a solution with no scored step has no score")
    if how == "min":
        return probabilities.min()
    if how == "product":
        return probabilities.prod()
    if how == "last":
        return probabilities[-1]
    raise ValueError(f"unknown aggregation {how!r} (min, product, last)")
