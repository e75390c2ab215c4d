"""Choosing one of N sampled solutions: by a process reward model, an outcome reward model,
majority voting or PRM-weighted voting, and accuracy against N (Lightman et al. 2023, §3,
figure 3: best-of-N by the PRM against the ORM and majority voting).

Pure functions of already scored candidates, so a selection can be re-read from its numbers:

* ``prm``: the candidate whose steps' probabilities aggregate highest
  (:func:`rlhf.losses.prm.aggregate_steps`: ``min``, ``product`` or ``last``);
* ``orm``: the candidate with the highest outcome reward;
* ``majority``: the most common final answer (self-consistency, Wang et al. 2023); a candidate
  with no final answer does not vote;
* ``weighted_majority``: the final answer whose candidates' aggregated PRM scores sum highest
  (PRM-weighted voting, Uesato et al. 2022; Li et al. 2023).

Ties go to the candidate (or answer) seen first, so a selection is deterministic. Accuracy at
N averages over the ⌊M / N⌋ disjoint groups of N among a problem's M candidates (in sampled
order), then over problems: every sample is used at every N, and the estimate at N = M is the
single group of all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from rlhf.losses.prm import Aggregation, aggregate_steps

Method = Literal["prm", "orm", "majority", "weighted_majority"]
METHODS: tuple[Method, ...] = ("prm", "orm", "majority", "weighted_majority")


@dataclass(frozen=True)
class Candidate:
    """One sampled solution, scored."""

    correct: bool  # its final answer is right (the gold check)
    answer: str | None = None  # the final answer it reaches (None: it reaches none)
    step_scores: tuple[float, ...] = ()  # the PRM's P(step correct), one per scored step
    outcome_score: float | None = None  # an outcome reward model's score


def _prm_score(candidate: Candidate, aggregation: Aggregation) -> float:
    if not candidate.step_scores:
        return float("-inf")  # nothing scored: never preferred to a scored candidate
    return float(aggregate_steps(torch.tensor(candidate.step_scores), aggregation))


def select(
    candidates: Sequence[Candidate], method: Method, aggregation: Aggregation = "product"
) -> Candidate:
    """The candidate ``method`` picks among ``candidates`` (at least one)."""
    if not candidates:
        raise ValueError("no candidate to select from")
    if method == "prm":
        scores = [_prm_score(c, aggregation) for c in candidates]
        return candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]
    if method == "orm":
        if any(c.outcome_score is None for c in candidates):
            raise ValueError("orm selection needs every candidate's outcome_score")
        return candidates[
            max(range(len(candidates)), key=lambda i: (candidates[i].outcome_score, -i))
        ]
    if method in ("majority", "weighted_majority"):
        totals: dict[str, float] = {}
        first: dict[str, int] = {}
        for index, candidate in enumerate(candidates):
            if candidate.answer is None:
                continue
            weight = 1.0 if method == "majority" else _prm_score(candidate, aggregation)
            totals[candidate.answer] = totals.get(candidate.answer, 0.0) + max(weight, 0.0)
            first.setdefault(candidate.answer, index)
        if not totals:
            return candidates[0]  # no candidate reaches an answer: any is as good
        best = max(totals, key=lambda answer: (totals[answer], -first[answer]))
        return candidates[first[best]]
    raise ValueError(f"unknown selection method {method!r} ({', '.join(METHODS)})")


def accuracy_at(
    problems: Sequence[Sequence[Candidate]],
    n: int,
    method: Method,
    aggregation: Aggregation = "product",
) -> float:
    """Share of problems whose selected solution is right, choosing among N candidates,
    averaged over each problem's disjoint groups of N (module docstring)."""
    if n < 1:
        raise ValueError(f"N must be at least 1, got {n}")
    scores = []
    for candidates in problems:
        groups = len(candidates) // n
        if groups == 0:
            raise ValueError(f"a problem has {len(candidates)} candidates, fewer than N = {n}")
        hits = [
            select(candidates[g * n : (g + 1) * n], method, aggregation).correct
            for g in range(groups)
        ]
        scores.append(sum(hits) / groups)
    if not scores:
        raise ValueError("no problem to measure accuracy on")
    return sum(scores) / len(scores)


def selection_curves(
    problems: Sequence[Sequence[Candidate]],
    ns: Sequence[int],
    methods: Sequence[Method] = METHODS,
    aggregation: Aggregation = "product",
) -> dict[str, list[float]]:
    """Accuracy at each N for each method: ``{"prm": [acc at ns[0], ...], ...}``."""
    return {m: [accuracy_at(problems, n, m, aggregation) for n in ns] for m in methods}
