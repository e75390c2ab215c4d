"""Evaluation: the measured numbers of a run, their statistics and verdicts, and the report.

``results`` holds the dataclasses the pipeline fills, ``stats`` the small statistics (win
rate, best-of-N KL, gold peak, verdicts), ``findings`` what a report concludes, and ``report``
writes the plots, ``report.md``, ``report.html`` and ``report.json``. ``ratings`` turns
model-against-model comparisons (checkpoints of successive rounds) into win rates,
Bradley–Terry / Elo ratings and the classic sequential Elo.
"""

from rlhf.eval.findings import Expectation, Findings, assess, summary
from rlhf.eval.ratings import (
    Comparison,
    Rating,
    Ratings,
    bradley_terry,
    elo_sequential,
    win_rates,
)
from rlhf.eval.report import ReportPaths, load_report, summary_table, write_report
from rlhf.eval.results import (
    BestOfNPoint,
    Criteria,
    CurvePoint,
    HeadToHead,
    OptimisationCurve,
    PolicyEval,
    Report,
    RewardModelEval,
    Sample,
    StageTiming,
)
from rlhf.eval.stats import (
    CurveFindings,
    GoldComparison,
    RewardModelFindings,
    WinRate,
    best_of_n_curve,
    best_of_n_kl,
    compare_gold,
    curve_findings,
    gold_at_kl,
    gold_peak,
    matched_kl,
    mean_std,
    non_finite_fields,
    reward_model_findings,
    standard_error,
    win_rate,
)

__all__ = [
    "BestOfNPoint",
    "Comparison",
    "Criteria",
    "CurveFindings",
    "CurvePoint",
    "Expectation",
    "Findings",
    "GoldComparison",
    "HeadToHead",
    "OptimisationCurve",
    "PolicyEval",
    "Rating",
    "Ratings",
    "Report",
    "ReportPaths",
    "RewardModelEval",
    "RewardModelFindings",
    "Sample",
    "StageTiming",
    "WinRate",
    "assess",
    "best_of_n_curve",
    "best_of_n_kl",
    "bradley_terry",
    "compare_gold",
    "curve_findings",
    "elo_sequential",
    "gold_at_kl",
    "gold_peak",
    "load_report",
    "matched_kl",
    "mean_std",
    "non_finite_fields",
    "reward_model_findings",
    "standard_error",
    "summary",
    "summary_table",
    "win_rate",
    "win_rates",
    "write_report",
]
