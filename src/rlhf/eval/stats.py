"""The small statistics of a run report: means, win rates, KL of best-of-N, and the verdicts.

Pure functions of Python numbers (no torch): a report can be re-rendered from its JSON alone.
Every verdict takes a tolerance and says which one it used, because on a few hundred prompts
a gold-reward difference of a few hundredths is usually noise.

Over-optimisation (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"): as a
policy moves away from its start (measured by sqrt(KL)), the proxy reward it is optimised
for keeps rising while the gold reward it stands in for rises, peaks, and falls. A KL penalty
(β > 0) slows the walk; the expectation is that gold then holds up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal, NamedTuple

from rlhf.eval.results import (
    BestOfNPoint,
    CurvePoint,
    OptimisationCurve,
    PolicyEval,
    Report,
    RewardModelEval,
)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator) of ``values`` [N].

    One value has standard deviation 0; no values is an error.
    """
    if not values:
        raise ValueError("mean_std of no values")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of ``values`` [N] and its standard error, sample std / sqrt(N) (0 for one value)."""
    mean, std = mean_std(values)
    return mean, std / math.sqrt(len(values))


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of ``values`` [N]: sample std / sqrt(N); NaN below N = 2."""
    if len(values) < 2:
        return math.nan
    return mean_std(values)[1] / math.sqrt(len(values))


class WinRate(NamedTuple):
    rate: float  # share of prompts where a beats b, ties counting ½
    se: float  # standard error of ``rate`` over prompts
    wins: int
    ties: int
    losses: int


def win_rate(
    gold_a: Sequence[float], gold_b: Sequence[float], tie_tolerance: float = 0.0
) -> WinRate:
    """How often policy a's response beats policy b's on the same prompt, by gold reward.

    ``gold_a`` [P] and ``gold_b`` [P] hold the two policies' gold rewards, prompt by prompt.
    Rewards closer than ``tie_tolerance`` tie and count ½. The standard error treats the
    per-prompt scores (1, ½, 0) as independent draws: sample std / sqrt(P).
    """
    if len(gold_a) != len(gold_b):
        raise ValueError(f"win_rate needs paired rewards: {len(gold_a)} against {len(gold_b)}")
    if not gold_a:
        raise ValueError("win_rate of no prompts")
    scores = []
    for a, b in zip(gold_a, gold_b, strict=True):
        scores.append(0.5 if abs(a - b) <= tie_tolerance else float(a > b))
    wins, ties = scores.count(1.0), scores.count(0.5)
    return WinRate(
        rate=math.fsum(scores) / len(scores),
        se=standard_error(scores),
        wins=wins,
        ties=ties,
        losses=len(scores) - wins - ties,
    )


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ policy) = log n − (n − 1)/n nats (Stiennon et al. 2020, appendix G.3;
    used as the x-axis by Gao et al. 2022). 0 for n = 1, log 2 − ½ for n = 2.

    Exact for N samples with distinct rewards, an upper bound in general (tight when ties are
    rare; Beirami et al. 2024)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_curve(points: Sequence[BestOfNPoint], label: str = "best-of-N") -> OptimisationCurve:
    """Best-of-N as an optimisation curve (``step`` = N), so the same verdicts apply to it.

    Its ``kl_coef`` is NaN: best-of-N has no KL penalty, its KL is set by N alone.
    """
    return OptimisationCurve(
        label=label,
        kl_coef=math.nan,
        points=[
            CurvePoint(
                step=p.n,
                kl=p.kl,
                proxy=p.proxy,
                gold=p.gold,
                proxy_se=p.proxy_se,
                gold_se=p.gold_se,
            )
            for p in points
        ],
    )


def gold_peak(curve: OptimisationCurve) -> CurvePoint:
    """The point with the highest finite gold reward (the first one, on a tie).

    Non-finite points are skipped; a curve without a finite gold value is an error.
    """
    finite = [p for p in curve.points if math.isfinite(p.gold)]
    if not finite:
        raise ValueError(f"curve {curve.label!r} has no finite gold reward")
    return max(finite, key=lambda p: p.gold)  # max keeps the first of equal values


ToleranceSource = Literal["given", "standard errors", "none"]


def _tolerance(
    given: float | None, se_a: float | None, se_b: float | None, z: float
) -> tuple[float, ToleranceSource]:
    """The tolerance of a difference a − b: ``given``, or z standard errors of the difference
    from the two points' own standard errors, or 0 when neither is known."""
    if given is not None:
        return given, "given"
    if se_a is not None and se_b is not None and math.isfinite(se_a) and math.isfinite(se_b):
        return z * math.hypot(se_a, se_b), "standard errors"
    return 0.0, "none"


@dataclass(frozen=True)
class CurveFindings:
    """What one curve shows. Differences are final − peak (or final − start); a verdict is
    True only when its difference exceeds the tolerance it names."""

    label: str
    kl_coef: float
    start: CurvePoint  # the first finite point
    peak: CurvePoint  # highest gold
    final: CurvePoint  # the last finite point
    gold_tolerance: float
    gold_tolerance_source: ToleranceSource
    proxy_tolerance: float
    proxy_tolerance_source: ToleranceSource
    gold_fell: bool  # gold peaked before the end and then fell by more than its tolerance
    proxy_still_rising: bool  # proxy ended higher than at gold's peak, by more than its tolerance
    gold_improved: bool  # gold ended higher than it started, by more than its tolerance

    @property
    def gold_drop(self) -> float:
        """peak gold − final gold (≥ 0)."""
        return self.peak.gold - self.final.gold

    @property
    def proxy_rise_after_peak(self) -> float:
        """final proxy − proxy at gold's peak."""
        return self.final.proxy - self.peak.proxy

    @property
    def gold_gain(self) -> float:
        """final gold − first gold."""
        return self.final.gold - self.start.gold

    @property
    def overoptimised(self) -> bool:
        """Gao et al.'s picture: gold has peaked and fallen while the proxy still rises."""
        return self.gold_fell and self.proxy_still_rising

    @property
    def gold_held(self) -> bool:
        """Gold did not fall from its peak by more than the tolerance."""
        return not self.gold_fell

    @property
    def peak_at_end(self) -> bool:
        return self.peak is self.final


def curve_findings(
    curve: OptimisationCurve,
    *,
    gold_tolerance: float | None = None,
    proxy_tolerance: float | None = None,
    z: float = 2.0,
) -> CurveFindings:
    """Judge one curve: did gold peak and fall, does proxy still rise, did gold hold up?

    Points with a non-finite KL, proxy or gold are left out. Each tolerance is the one given,
    else ``z`` standard errors of the difference (from the points' ``gold_se`` / ``proxy_se``),
    else 0 (every difference counts; the findings say so). The peak is the maximum of noisy
    means, so it is biased upwards: a generous tolerance is the honest choice.
    """
    finite = [
        p
        for p in curve.points
        if math.isfinite(p.gold) and math.isfinite(p.proxy) and math.isfinite(p.kl)
    ]
    if not finite:
        raise ValueError(f"curve {curve.label!r} has no point with finite KL, proxy and gold")
    start, final = finite[0], finite[-1]
    peak = gold_peak(OptimisationCurve(curve.label, curve.kl_coef, finite))
    gold_tol, gold_source = _tolerance(gold_tolerance, peak.gold_se, final.gold_se, z)
    proxy_tol, proxy_source = _tolerance(proxy_tolerance, peak.proxy_se, final.proxy_se, z)
    gain_tol, _ = _tolerance(gold_tolerance, start.gold_se, final.gold_se, z)
    return CurveFindings(
        label=curve.label,
        kl_coef=curve.kl_coef,
        start=start,
        peak=peak,
        final=final,
        gold_tolerance=gold_tol,
        gold_tolerance_source=gold_source,
        proxy_tolerance=proxy_tol,
        proxy_tolerance_source=proxy_source,
        gold_fell=peak is not final and peak.gold - final.gold > gold_tol,
        proxy_still_rising=final.proxy - peak.proxy > proxy_tol,
        gold_improved=final.gold - start.gold > gain_tol,
    )


Verdict = Literal["better", "worse", "within noise", "unknown"]


@dataclass(frozen=True)
class GoldComparison:
    """A policy's gold reward against the baseline's (SFT's)."""

    name: str
    baseline: str
    difference: float  # policy gold mean − baseline gold mean
    se: float  # standard error of the difference (independent samples; conservative when paired)
    tolerance: float
    verdict: Verdict
    win_rate: float | None
    win_rate_se: float | None


def compare_gold(
    policy: PolicyEval, baseline: PolicyEval, *, tolerance: float | None = None, z: float = 2.0
) -> GoldComparison:
    """Is ``policy`` better than ``baseline`` on mean gold reward, beyond noise?

    The tolerance is the one given, else ``z`` standard errors of the difference of means,
    sqrt(se_a² + se_b²) with se = std / sqrt(n_prompts). "unknown" where a number is not
    finite.
    """
    difference = policy.gold_mean - baseline.gold_mean
    se = math.hypot(policy.gold_se, baseline.gold_se)
    limit = tolerance if tolerance is not None else z * se
    if not (math.isfinite(difference) and math.isfinite(limit)):
        verdict: Verdict = "unknown"
    elif difference > limit:
        verdict = "better"
    elif difference < -limit:
        verdict = "worse"
    else:
        verdict = "within noise"
    return GoldComparison(
        name=policy.name,
        baseline=baseline.name,
        difference=difference,
        se=se,
        tolerance=limit,
        verdict=verdict,
        win_rate=policy.win_rate_vs_sft,
        win_rate_se=policy.win_rate_se,
    )


@dataclass(frozen=True)
class RewardModelFindings:
    accuracy: float  # [0, 1]
    ceiling: float  # [0, 1]
    n_pairs: int
    within_points: float  # the target, in percentage points
    gap_points: float  # (ceiling − accuracy) × 100; negative when the RM beats the gold reward
    near_ceiling: bool | None  # gap ≤ within_points; None when a number is not finite


def reward_model_findings(rm: RewardModelEval, within_points: float = 5.0) -> RewardModelFindings:
    """Is the reward model's held-out accuracy within ``within_points`` percentage points of
    the ceiling (the gold reward's own accuracy on the same noisy labels)?"""
    gap = (rm.ceiling - rm.accuracy) * 100
    return RewardModelFindings(
        accuracy=rm.accuracy,
        ceiling=rm.ceiling,
        n_pairs=rm.n_pairs,
        within_points=within_points,
        gap_points=gap,
        near_ceiling=gap <= within_points if math.isfinite(gap) else None,
    )


def _walk(value: Any, path: str) -> Iterable[tuple[str, float]]:
    if isinstance(value, float):
        yield path, value
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _walk(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            name = (
                getattr(item, "name", None)
                or getattr(item, "label", None)
                or getattr(item, "stage", None)
            )
            yield from _walk(
                item, f"{path}[{name!r}]" if isinstance(name, str) else f"{path}[{index}]"
            )


def non_finite_fields(report: Report) -> list[str]:
    """Where the report holds NaN or ±inf, as readable paths with the value:
    ``"policies['PPO β=0.0'].gold_mean = nan"``, ``"curves['PPO β=0.0'].points[3].kl = inf"``.
    Config values are included."""
    return [f"{path} = {value}" for path, value in _walk(report, "") if not math.isfinite(value)]


# ---------------------------------------------------------------- curves at matched KL


class AtKL(NamedTuple):
    gold: float  # the curve's gold reward where its KL first reaches the matched KL
    se: float | None  # its standard error (interpolated like the gold), if the points have one
    step: float  # the (fractional) training step there


def _finite_points(curve: OptimisationCurve) -> list[CurvePoint]:
    return [p for p in curve.points if math.isfinite(p.kl) and math.isfinite(p.gold)]


def matched_kl(curves: Sequence[OptimisationCurve]) -> float | None:
    """The largest KL every curve reaches: the smallest of their largest KLs (None if a curve
    has no finite point). Comparing at this KL asks how far each method got for the same
    distance from the reference (Tang et al. 2024; Gao et al. 2022 plot against it too)."""
    reached = []
    for curve in curves:
        points = _finite_points(curve)
        if not points:
            return None
        reached.append(max(max(p.kl for p in points), 0.0))
    return min(reached) if reached else None


def gold_at_kl(curve: OptimisationCurve, kl: float) -> AtKL | None:
    """The curve's gold reward where its KL first reaches ``kl``, by linear interpolation
    between the two evaluations around that crossing (in step order: the KL of a noisy
    estimate need not rise monotonically, and the first crossing is where training got
    there). None if the curve never reaches ``kl``."""
    points = _finite_points(curve)
    for index, point in enumerate(points):
        if point.kl >= kl:
            if index == 0 or point.kl == points[index - 1].kl:
                return AtKL(point.gold, point.gold_se, float(point.step))
            before = points[index - 1]
            share = (kl - before.kl) / (point.kl - before.kl)
            se = None
            if before.gold_se is not None and point.gold_se is not None:
                se = before.gold_se + share * (point.gold_se - before.gold_se)
            return AtKL(
                before.gold + share * (point.gold - before.gold),
                se,
                before.step + share * (point.step - before.step),
            )
    return None


def preference_rate(probabilities: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of P(a ≻ b) over independent comparisons [N] (N ≥ 1; the
    standard error is NaN below N = 2)."""
    if not probabilities:
        raise ValueError("preference_rate of no comparisons")
    return math.fsum(probabilities) / len(probabilities), standard_error(list(probabilities))
