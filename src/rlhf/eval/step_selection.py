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
  (PRM-weighted voting, Uesato et al. 2022; Li et al. 2023);
* ``oracle``: a right candidate whenever there is one (pass@N, the ceiling of every method).

Ties go to the candidate (or answer) seen first, so a selection is deterministic. Accuracy at
N averages over the ⌊M / N⌋ disjoint groups of N among a problem's M candidates (in sampled
order), then over problems: every sample is used at every N, and the estimate at N = M is the
single group of all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from rlhf.eval.results import SelectionPoint
from rlhf.eval.stats import mean_and_se
from rlhf.losses.prm import Aggregation, aggregate_steps
from rlhf.rewards.rules import response_answer
from rlhf.rollout.candidates import CandidateRecord

if TYPE_CHECKING:
    from rlhf.rewards.prm import ProcessReward

Method = Literal["prm", "orm", "majority", "weighted_majority", "oracle"]
METHODS: tuple[Method, ...] = ("prm", "orm", "majority", "weighted_majority", "oracle")


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
    if method == "oracle":
        return next((c for c in candidates if c.correct), candidates[0])
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


def problem_accuracies(
    problems: Sequence[Sequence[Candidate]],
    n: int,
    method: Method,
    aggregation: Aggregation = "product",
) -> list[float]:
    """Each problem's share of disjoint groups of N whose selected solution is right (module
    docstring)."""
    if n < 1:
        raise ValueError(f"N must be at least 1, got {n}")
    if not problems:
        raise ValueError("no problem to measure accuracy on")
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
    return scores


def accuracy_at(
    problems: Sequence[Sequence[Candidate]],
    n: int,
    method: Method,
    aggregation: Aggregation = "product",
) -> float:
    """Share of problems whose selected solution is right, choosing among N candidates,
    averaged over each problem's disjoint groups of N (module docstring)."""
    scores = problem_accuracies(problems, n, method, aggregation)
    return sum(scores) / len(scores)


def selection_curves(
    problems: Sequence[Sequence[Candidate]],
    ns: Sequence[int],
    methods: Sequence[Method] = METHODS,
    aggregation: Aggregation = "product",
) -> dict[str, list[float]]:
    """Accuracy at each N for each method: ``{"prm": [acc at ns[0], ...], ...}``."""
    return {m: [accuracy_at(problems, n, m, aggregation) for n in ns] for m in methods}


# what each selector picks, for reports (a beam-search line adds its own)
SELECTOR_MEANINGS = {
    "oracle": "a right solution whenever one of the N is right (the ceiling)",
    "prm": "the solution whose step probabilities aggregate highest",
    "orm": "the solution the outcome reward model scores highest",
    "majority": "the most common final answer",
    "weighted majority": "the final answer whose solutions' PRM scores (product) sum highest",
}


@dataclass(frozen=True)
class Selector:
    """One line of the comparison: a method, with the PRM aggregation it uses (if any)."""

    label: str  # e.g. "prm (product)"
    method: Method
    aggregation: Aggregation = "product"


def comparison(with_outcome: bool) -> list[Selector]:
    """The selectors ``rlhf best-of-n --prm`` compares (issue: Lightman et al. 2023, fig. 3):
    the oracle, the PRM by each aggregation, the ORM (``with_outcome``), majority voting and
    PRM-weighted majority (product)."""
    selectors = [Selector("oracle (any right)", "oracle")]
    selectors += [Selector(f"prm ({how})", "prm", how) for how in ("product", "min", "last")]
    if with_outcome:
        selectors.append(Selector("orm", "orm"))
    selectors.append(Selector("majority", "majority"))
    selectors.append(Selector("weighted majority", "weighted_majority", "product"))
    return selectors


def selection_points(
    problems: Sequence[Sequence[Candidate]], ns: Sequence[int], selectors: Sequence[Selector]
) -> list[SelectionPoint]:
    """Every selector's accuracy at every N (selector-major, N ascending)."""
    points = []
    for selector in selectors:
        for n in ns:
            accuracy, se = mean_and_se(
                problem_accuracies(problems, n, selector.method, selector.aggregation)
            )
            points.append(SelectionPoint(n, selector.label, accuracy, se))
    return points


def scored_candidates(
    samples: Sequence[CandidateRecord], prm: ProcessReward, *, with_outcome: bool = True
) -> list[list[Candidate]]:
    """Each prompt's sampled responses (``rlhf best-of-n``'s samples: ``gold`` per response, a
    0/1 verifier's verdict; ``rewards``, the outcome reward) as candidates: right when the
    gold is 1, the final answer the response gives (:func:`rlhf.rewards.rules.response_answer`:
    after ``####``, in ``\\boxed{}``, else its last number), the PRM's step scores, and the
    outcome reward as the ORM's score when ``with_outcome``."""
    problems = []
    for index, sample in enumerate(samples):
        gold = sample.extra.get("gold")
        if gold is None:
            raise ValueError("choosing by accuracy needs a gold verifier (--gold rule=...)")
        unsure = [value for value in gold if value not in (0.0, 1.0)]
        if unsure:
            raise ValueError(
                f"the gold reward gave {unsure[0]!r} to a response of prompt {index}: accuracy "
                "needs a 0/1 verifier as gold (e.g. rule=step_world or rule=gsm8k)"
            )
        prompts = [sample.prompt] * len(sample.responses)
        steps = prm.step_scores(prompts, list(sample.responses))
        outcome = sample.extra.get("rewards") if with_outcome else None
        candidates = []
        for k, response in enumerate(sample.responses):
            answer = response_answer(response)
            candidates.append(
                Candidate(
                    correct=gold[k] == 1.0,
                    answer=None if answer is None else str(answer),
                    step_scores=tuple(steps[k].tolist()),
                    outcome_score=None if outcome is None else float(outcome[k]),
                )
            )
        problems.append(candidates)
    return problems
