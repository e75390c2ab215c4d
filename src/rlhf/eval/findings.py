"""What a report concludes, as data (:func:`assess`) and as plain sentences (:func:`summary`).

The expected results of the over-optimisation experiment, each checked and reported as met,
not met, or not judged (a number was missing or not finite):

* the PPO curve with the smallest KL coefficient (of two or more) over-optimises: its gold
  reward peaks and falls while the proxy keeps rising (Gao et al. 2022);
* every other PPO curve's gold reward holds up;
* every other policy beats the baseline (SFT) on gold, except one whose own curve
  over-optimised (its final policy is past the peak, so losing is then the expected result);
* the reward model's held-out accuracy is within a few points of the ceiling.

And, where the run has the runs they need, the claims of "online vs offline RLHF":

* offline DPO over-optimises along training: its gold reward first rises, then falls
  (Rafailov et al. 2024, "Scaling laws for reward model overoptimization in direct alignment
  algorithms");
* the offline losses (DPO's logistic, IPO's squared, SLiC's hinge) reach the same gold at
  matched KL (the largest KL every curve reaches);
* online DPO reaches more gold than offline DPO at matched KL (Tang et al. 2024, "Understanding
  the performance gap between online and offline alignment algorithms");
* where the gold preference is not transitive, the Nash policies (Nash-MD, SPPO) are preferred
  to PPO against a Bradley-Terry reward model, under that preference (Munos et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from rlhf.eval.results import OptimisationCurve, Report
from rlhf.eval.stats import (
    AtKL,
    CurveFindings,
    GoldComparison,
    RewardModelFindings,
    best_of_n_curve,
    compare_gold,
    curve_findings,
    gold_at_kl,
    matched_kl,
    non_finite_fields,
    reward_model_findings,
)


@dataclass(frozen=True)
class Expectation:
    claim: str  # what the experiment is expected to show
    met: bool | None  # None: could not be judged
    detail: str  # the numbers behind the verdict, one clause


@dataclass(frozen=True)
class Findings:
    curves: list[CurveFindings]  # one per PPO curve, in increasing kl_coef
    unjudged_curves: list[str]  # labels of curves without a finite point
    best_of_n: CurveFindings | None
    comparisons: list[GoldComparison]  # every non-baseline policy against the baseline
    reward_model: RewardModelFindings | None
    expectations: list[Expectation]
    non_finite: list[str]  # non_finite_fields(report)

    @property
    def unmet(self) -> list[Expectation]:
        return [e for e in self.expectations if e.met is not True]


def fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    """A number for the report: "–" for None, "NaN" / "inf" / "-inf" spelled out."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _tolerance_words(value: float, source: str) -> str:
    if source == "none":
        return "no noise estimate, so any difference counts"
    return f"tolerance {fmt(value)}" + (
        ", from standard errors" if source == "standard errors" else ""
    )


def assess(report: Report) -> Findings:
    criteria = report.criteria
    judge = dict(
        gold_tolerance=criteria.gold_tolerance,
        proxy_tolerance=criteria.proxy_tolerance,
        z=criteria.z,
    )
    curves, unjudged = [], []
    for curve in sorted(report.curves, key=lambda c: c.kl_coef):
        try:
            curves.append(curve_findings(curve, **judge))
        except ValueError:
            unjudged.append(curve.label)
    best_of_n = None
    if report.best_of_n:
        try:
            best_of_n = curve_findings(best_of_n_curve(report.best_of_n), **judge)
        except ValueError:
            best_of_n = None
    baseline = report.policy(report.baseline)
    comparisons = []
    if baseline is not None:
        comparisons = [
            compare_gold(p, baseline, z=criteria.z) for p in report.policies if p is not baseline
        ]
    rm = (
        reward_model_findings(report.reward_model, criteria.rm_within_points)
        if report.reward_model is not None
        else None
    )
    findings = Findings(
        curves=curves,
        unjudged_curves=unjudged,
        best_of_n=best_of_n,
        comparisons=comparisons,
        reward_model=rm,
        expectations=[],
        non_finite=non_finite_fields(report),
    )
    expectations = _expectations(report, findings)
    return replace(findings, expectations=expectations)


def _expectations(report: Report, findings: Findings) -> list[Expectation]:
    out = []
    if report.curves:
        lowest = min(report.curves, key=lambda c: c.kl_coef)
        for curve in sorted(report.curves, key=lambda c: c.kl_coef):
            found = next((f for f in findings.curves if f.label == curve.label), None)
            if curve is lowest and len(report.curves) > 1:  # one curve: nothing to contrast
                claim = f"{curve.label} over-optimises: gold peaks and falls while the proxy keeps rising"
                if found is None:
                    out.append(Expectation(claim, None, "the curve has no finite point"))
                else:
                    detail = (
                        f"gold {fmt(found.peak.gold)} at its peak, {fmt(found.final.gold)} at the end "
                        f"(drop {fmt(found.gold_drop)}); proxy {fmt(found.proxy_rise_after_peak, signed=True)} "
                        f"after gold's peak"
                    )
                    out.append(Expectation(claim, found.overoptimised, detail))
            else:
                claim = f"{curve.label} keeps its gold reward"
                if found is None:
                    out.append(Expectation(claim, None, "the curve has no finite point"))
                else:
                    detail = f"gold {fmt(found.final.gold)} at the end, {fmt(found.peak.gold)} at its peak"
                    out.append(Expectation(claim, found.gold_held, detail))
    claims, fell = _preference_claims(report)
    overoptimised = {f.label for f in findings.curves if f.overoptimised} | fell
    if report.policies and report.policy(report.baseline) is None:
        out.append(
            Expectation(
                f"the policies beat {report.baseline} on gold",
                None,
                f"there is no policy named {report.baseline!r} to compare with",
            )
        )
    for comparison in findings.comparisons:
        if comparison.name in overoptimised:
            continue  # past its gold peak by design: losing to SFT is then expected
        met = None if comparison.verdict == "unknown" else comparison.verdict == "better"
        detail = f"gold {fmt(comparison.difference, signed=True)} ± {fmt(comparison.se)}, {comparison.verdict}"
        out.append(
            Expectation(f"{comparison.name} beats {comparison.baseline} on gold", met, detail)
        )
    if findings.reward_model is not None:
        rm = findings.reward_model
        out.append(
            Expectation(
                f"the reward model is within {fmt(rm.within_points, 0)} points of the ceiling",
                rm.near_ceiling,
                f"accuracy {percent(rm.accuracy)} against a ceiling of {percent(rm.ceiling)}",
            )
        )
    return out + claims


def _preference_claims(report: Report) -> tuple[list[Expectation], set[str]]:
    """The offline-vs-online claims (module docstring) the report's runs can judge, and the
    label of the offline run if it over-optimised (its final policy then need not beat SFT)."""
    criteria, z = report.criteria, report.criteria.z
    offline = [c for c in report.preference_curves if not c.online]
    online = [c for c in report.preference_curves if c.online]
    out, fell = [], set()
    if offline:
        out.append(_overoptimisation_claim(offline[0], z))
        fell = {offline[0].label} if out[-1].met else set()

    # without a standard error of its own, a point's is the one the criteria's tolerance implies
    fallback = None
    if criteria.gold_tolerance is not None and criteria.gold_tolerance > 0:
        fallback = criteria.gold_tolerance / (z * math.sqrt(2.0))

    def at(curves: list[OptimisationCurve], claim: str) -> tuple[float, list[AtKL]] | Expectation:
        kl = matched_kl(curves)
        if kl is None or not kl > 0:
            return Expectation(claim, None, "a curve never moved away from the reference")
        points = [gold_at_kl(curve, kl) for curve in curves]
        assert all(p is not None for p in points)  # every curve reaches the matched KL
        return kl, [p if p.se is not None else p._replace(se=fallback) for p in points]  # type: ignore[union-attr]

    def tolerance(a: AtKL, b: AtKL) -> float:
        return z * math.hypot(a.se, b.se) if a.se is not None and b.se is not None else 0.0

    if len(offline) > 1:
        names = ", ".join(c.label for c in offline)
        claim = f"the offline losses ({names}) reach the same gold at matched KL"
        measured = at(offline, claim)
        if isinstance(measured, Expectation):
            out.append(measured)
        else:
            kl, points = measured
            pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1 :]]
            spread = max(abs(a.gold - b.gold) for a, b in pairs)
            alike = all(abs(a.gold - b.gold) <= tolerance(a, b) for a, b in pairs)
            golds = "; ".join(
                f"{c.label} {_gold_with_se(p)}" for c, p in zip(offline, points, strict=True)
            )
            out.append(
                Expectation(
                    claim,
                    alike,
                    f"gold at KL {fmt(kl, 2)} nats: {golds}; largest difference {fmt(spread)}",
                )
            )
    for curve in online:
        if not offline:
            break
        reference = offline[0]
        claim = f"{curve.label} reaches more gold than {reference.label} at matched KL"
        measured = at([curve, reference], claim)
        if isinstance(measured, Expectation):
            out.append(measured)
            continue
        kl, (mine, theirs) = measured
        difference = mine.gold - theirs.gold
        out.append(
            Expectation(
                claim,
                difference > tolerance(mine, theirs),
                f"gold at KL {fmt(kl, 2)} nats: {curve.label} {_gold_with_se(mine)}, "
                f"{reference.label} {_gold_with_se(theirs)}; difference "
                f"{fmt(difference, signed=True)} (tolerance {fmt(tolerance(mine, theirs))})",
            )
        )
    for match in report.head_to_head:
        if match.opponent == report.baseline:
            continue
        claim = f"{match.policy} is preferred to {match.opponent} under the gold preference"
        if not (math.isfinite(match.rate) and math.isfinite(match.se)):
            out.append(Expectation(claim, None, f"P = {fmt(match.rate)} ± {fmt(match.se)}"))
            continue
        out.append(
            Expectation(
                claim,
                match.rate - 0.5 > z * match.se,
                f"P({match.policy} ≻ {match.opponent}) = {fmt(match.rate)} ± {fmt(match.se)} "
                f"over {match.n} comparisons",
            )
        )
    return out, fell


def _gold_with_se(point: AtKL) -> str:
    return fmt(point.gold) + (f" ± {fmt(point.se)}" if point.se is not None else "")


def _overoptimisation_claim(curve: OptimisationCurve, z: float) -> Expectation:
    claim = f"{curve.label} over-optimises along training: gold first rises, then falls"
    try:
        found = curve_findings(curve, z=z)
    except ValueError:
        return Expectation(claim, None, "the curve has no finite point")
    rise_tolerance = (
        z * math.hypot(found.start.gold_se, found.peak.gold_se)
        if found.start.gold_se is not None and found.peak.gold_se is not None
        else 0.0
    )
    rise = found.peak.gold - found.start.gold
    detail = (
        f"gold {fmt(found.start.gold)} at the start, {fmt(found.peak.gold)} at step "
        f"{found.peak.step} (KL {fmt(found.peak.kl, 2)}), {fmt(found.final.gold)} at step "
        f"{found.final.step} (KL {fmt(found.final.kl, 2)}); tolerance "
        f"{fmt(found.gold_tolerance)}; {curve.proxy_name} {fmt(found.start.proxy)} → "
        f"{fmt(found.final.proxy)}"
    )
    return Expectation(claim, rise > rise_tolerance and found.gold_fell, detail)


def percent(share: float | None, digits: int = 1) -> str:
    return fmt(None if share is None else share * 100, digits) + (
        "%" if share is not None and math.isfinite(share) else ""
    )


def _curve_sentence(f: CurveFindings) -> str:
    peak = f"gold reward peaks at {fmt(f.peak.gold)} at √KL = {fmt(f.peak.sqrt_kl, 2)} (step {f.peak.step}, KL {fmt(f.peak.kl, 2)} nats)"
    if f.gold_fell:
        sentence = (
            f"{f.label}: {peak} and then falls by {fmt(f.gold_drop)} to {fmt(f.final.gold)} by the end "
            f"(√KL = {fmt(f.final.sqrt_kl, 2)}; {_tolerance_words(f.gold_tolerance, f.gold_tolerance_source)})"
        )
        if f.proxy_still_rising:
            return (
                sentence
                + f", while the proxy reward keeps rising ({fmt(f.proxy_rise_after_peak, signed=True)} "
                "after gold's peak): the policy over-optimises the reward model."
            )
        return (
            sentence + f", but the proxy reward did not keep rising after gold's peak "
            f"({fmt(f.proxy_rise_after_peak, signed=True)}; "
            f"{_tolerance_words(f.proxy_tolerance, f.proxy_tolerance_source)})."
        )
    if f.peak_at_end:
        held = f"{f.label}: gold reward is highest at the end, {fmt(f.final.gold)} at √KL = {fmt(f.final.sqrt_kl, 2)}"
    else:
        held = (
            f"{f.label}: gold reward holds up: it ends at {fmt(f.final.gold)} (√KL = {fmt(f.final.sqrt_kl, 2)}), "
            f"{fmt(f.gold_drop)} below its peak of {fmt(f.peak.gold)} at √KL = {fmt(f.peak.sqrt_kl, 2)} "
            f"({_tolerance_words(f.gold_tolerance, f.gold_tolerance_source)})"
        )
    if f.gold_improved:
        return f"{held}; gold rose {fmt(f.gold_gain, signed=True)} over the start."
    return f"{held}; gold did not clearly rise over the start ({fmt(f.gold_gain, signed=True)})."


def _comparison_clause(c: GoldComparison) -> str:
    wins = ""
    if c.win_rate is not None:
        wins = f", win rate {percent(c.win_rate)}" + (
            f" ± {percent(c.win_rate_se)}" if c.win_rate_se is not None else ""
        )
    words = {
        "better": "is better",
        "worse": "is worse",
        "within noise": "is within noise",
        "unknown": "cannot be judged",
    }
    return f"{c.name} {words[c.verdict]} ({fmt(c.difference, signed=True)} ± {fmt(c.se)}{wins})"


def _first(items: list[str], count: int) -> str:
    """The first ``count`` items, comma-separated, and how many more there are."""
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more


def summary(findings: Findings) -> list[str]:
    """The report's summary paragraph, one plain sentence per item."""
    sentences = []
    if findings.non_finite:
        sentences.append(
            f"Warning: {len(findings.non_finite)} number(s) in this report are not finite (NaN or "
            f"infinite): {_first(findings.non_finite, 3)}; verdicts that need them are not judged."
        )
    sentences += [_curve_sentence(f) for f in findings.curves]
    sentences += [
        f"{label}: no point with finite KL, proxy and gold, so it is not judged."
        for label in findings.unjudged_curves
    ]
    if findings.best_of_n is not None:
        b = findings.best_of_n
        if b.gold_fell:
            sentences.append(
                f"Best-of-N: gold peaks at N = {b.peak.step} (√KL = {fmt(b.peak.sqrt_kl, 2)}, gold "
                f"{fmt(b.peak.gold)}) and falls to {fmt(b.final.gold)} by N = {b.final.step} "
                f"({_tolerance_words(b.gold_tolerance, b.gold_tolerance_source)})."
            )
        else:
            sentences.append(
                f"Best-of-N: gold reaches {fmt(b.peak.gold)} at N = {b.peak.step} "
                f"(√KL = {fmt(b.peak.sqrt_kl, 2)}) and does not fall by N = {b.final.step} "
                f"(ends at {fmt(b.final.gold)}; {_tolerance_words(b.gold_tolerance, b.gold_tolerance_source)})."
            )
    if findings.comparisons:
        baseline = findings.comparisons[0].baseline
        clauses = "; ".join(_comparison_clause(c) for c in findings.comparisons)
        sentences.append(
            f"Against {baseline} on gold reward (difference ± standard error): {clauses}."
        )
    if findings.reward_model is not None:
        rm = findings.reward_model
        if rm.near_ceiling is None:
            position = "so how close it is to the ceiling cannot be judged"
        elif rm.gap_points < 0:
            position = f"so the RM is {fmt(-rm.gap_points, 1)} points above the ceiling (noise)"
        else:
            within = "within" if rm.near_ceiling else "more than"
            position = f"so the RM is {fmt(rm.gap_points, 1)} points below it, {within} the {fmt(rm.within_points, 0)}-point target"
        sentences.append(
            f"The reward model ranks {percent(rm.accuracy)} of {rm.n_pairs} held-out pairs the way "
            f"the labels do; the gold reward itself agrees with {percent(rm.ceiling)} of the same "
            f"noisy labels (the ceiling), {position}."
        )
    unmet = findings.unmet
    if findings.expectations and not unmet:
        sentences.append("Every expected result came out.")
    elif unmet:
        parts = [
            f"{e.claim}: {'NOT observed' if e.met is False else 'could not be judged'} ({e.detail})"
            for e in unmet
        ]
        sentences.append("Not as expected: " + "; ".join(parts) + ".")
    return sentences
