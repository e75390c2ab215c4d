"""Active selection: which of the sampled items people should label next.

Labels are the scarce resource of RLHF; an item whose label the reward model could already
predict teaches it little. Given candidate items (a prompt and its K sampled responses), each
strategy scores every item and the ``budget`` highest are labelled (``rlhf loop``'s
``selection``):

* ``uncertainty``: the reward models' disagreement about the item's most informative pair.
  With an ensemble of M reward models (scores [M, K]), each gives P_m(i ≻ j) = σ(s_m,i − s_m,j)
  for every pair; the pair's score is the mutual information between its label and the model
  (BALD, Houlsby et al. 2011, eq. 2)::

      I(i, j) = H(p̄) − (1/M) Σ_m H(p_m),    p̄ = (1/M) Σ_m p_m,    H(p) = −p ln p − (1−p) ln(1−p)

  high where the members are each sure but disagree. With one model (M = 1) the mutual
  information is 0, so the pair's entropy H(p̄) is used instead (maximum-entropy sampling:
  the pairs it can least tell apart).
* ``divergence``: how far the policy has moved from the reference on the item: the mean over
  its responses of the sequence log-ratio Σ_t (log π − log π_ref), the k1 estimate of
  KL(π‖π_ref) (Schulman 2020). Where the policy has gone furthest from what was labelled before,
  the reward model is least tested.
* ``random``: a seeded uniform sample (the baseline active selection is measured against).

Pure functions of already computed scores, so a selection can be re-read from its numbers.
Ties are broken by a seeded shuffle, so equal scores do not favour the items listed first.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Strategy = Literal["uncertainty", "divergence", "random"]
STRATEGIES: tuple[Strategy, ...] = ("uncertainty", "divergence", "random")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats, 0 at p ∈ {0, 1}."""
    p = p.clamp(0.0, 1.0)
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


@dataclass(frozen=True)
class PairScore:
    """The most informative pair of one item and its score."""

    first: int  # response indices, first < second
    second: int
    score: float


def pair_uncertainty(scores: torch.Tensor) -> PairScore:
    """The item's most informative pair under the reward models' scores [M, K] (M models,
    K ≥ 2 responses; module docstring): BALD's mutual information with M ≥ 2, the entropy of
    the mean preference with M = 1. Ties go to the first pair in (i, j) order."""
    if scores.dim() != 2 or scores.shape[1] < 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [models ≥ 1, responses ≥ 2], got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    scores = scores.double()
    first, second = torch.triu_indices(scores.shape[1], scores.shape[1], offset=1)  # [C]
    p = torch.sigmoid(scores[:, first] - scores[:, second])  # [M, C]
    mean = p.mean(dim=0)  # [C]
    information = (
        _entropy(mean) - _entropy(p).mean(dim=0) if scores.shape[0] > 1 else _entropy(mean)
    )
    best = int(torch.argmax(information))  # the first maximum
    return PairScore(int(first[best]), int(second[best]), float(information[best]))


def sequence_divergence(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over an item's responses of Σ_t (log π − log π_ref): logps, ref_logps and mask
    [K, T] (mask nonzero on real response tokens)."""
    if logps.shape != ref_logps.shape or logps.shape != mask.shape or logps.dim() != 2:
        raise ValueError(
            f"logps {tuple(logps.shape)}, ref_logps {tuple(ref_logps.shape)} and mask "
            f"{tuple(mask.shape)} must be the same [responses, tokens]"
        )
    ratio = (logps.double() - ref_logps.double()) * mask.double()
    return float(ratio.sum(dim=1).mean())


def select(
    item_scores: Sequence[float], budget: int, strategy: Strategy, *, seed: int = 0
) -> list[int]:
    """The indices of the ``budget`` items to label, best first: the highest ``item_scores``
    (``uncertainty``, ``divergence``) or a seeded uniform sample (``random``, which ignores the
    scores). A budget above the number of items takes them all."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r} ({', '.join(STRATEGIES)})")
    if budget < 0:
        raise ValueError(f"budget must be ≥ 0, got {budget}")
    if strategy != "random" and any(not math.isfinite(score) for score in item_scores):
        raise ValueError("item scores must be finite")
    order = list(range(len(item_scores)))
    random.Random(f"active-selection-{seed}").shuffle(order)  # the tie-break (and `random`)
    if strategy != "random":
        order.sort(key=lambda index: -item_scores[index])  # stable: shuffled among equals
    return order[:budget]
