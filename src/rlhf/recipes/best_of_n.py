"""Best-of-N: sample N responses, keep the one (or the k) a reward likes best.

Best-of-N is the simplest way to optimise a reward without training, and the yardstick the
trained methods are measured against (Nakano et al. 2021, "WebGPT"; Gao et al. 2022,
"Scaling Laws for Reward Model Overoptimization"). Its distance from the policy has a closed
form: for N samples with distinct rewards,

    KL(π_bestofN ‖ π) = log N − (N − 1) / N                      (Stiennon et al. 2020)

(an upper bound in general, tight when ties are rare; Beirami et al. 2024), so a curve of
reward against N is a reward-against-KL curve at no training cost.

``rlhf best-of-n`` samples N_max responses per prompt **once** and estimates, for every
N = 1, 2, 4, ..., N_max, the expected reward (and gold reward, where the task has one) of the
best of N from those samples (:func:`rlhf.eval.best_of_n.evaluate_best_of_n`, which the
pipeline's report uses too); this module writes what the command shows: the curve as JSON
Lines, CSV and a plot, every sample, and the console table. Sampling candidates and keeping the
best k of each prompt is :mod:`rlhf.eval.sampling`.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path

from rlhf.eval.best_of_n import BestOfNReport

logger = logging.getLogger("rlhf")


def write_report(report: BestOfNReport, out: str | Path) -> dict[str, Path]:
    """``best_of_n.jsonl`` and ``.csv`` (one row per N), ``samples.jsonl`` (every sample with
    its rewards) and, when matplotlib is installed, ``best_of_n.png``."""
    from rlhf.rollout.candidates import write_candidates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(point) for point in report.points]
    paths = {"jsonl": out / "best_of_n.jsonl", "csv": out / "best_of_n.csv"}
    with paths["jsonl"].open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["samples"] = write_candidates(out / "samples.jsonl", report.samples)
    plot = _plot(report, out / "best_of_n.png")
    if plot is not None:
        paths["png"] = plot
    return paths


def _plot(report: BestOfNReport, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no best_of_n.png (pip install matplotlib)")
        return None
    kl = [point.kl for point in report.points]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.errorbar(
        kl, [p.reward for p in report.points], [p.reward_se for p in report.points],
        marker="o", label="reward",
    )  # fmt: skip
    if report.points[0].gold is not None:
        axes.errorbar(
            kl, [p.gold for p in report.points], [p.gold_se for p in report.points],
            marker="s", label="gold reward",
        )  # fmt: skip
    for point in report.points:
        axes.annotate(f"N={point.n}", (point.kl, point.reward), fontsize=7)
    axes.set_xlabel("KL(best-of-N ‖ policy) = log N − (N−1)/N  [nats]")
    axes.set_ylabel("expected reward of the best")
    axes.set_title(f"best-of-N, {report.num_prompts} prompts")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report_table(report: BestOfNReport) -> object:
    """A rich table of the curve, for the console."""
    from rich.table import Table

    has_gold = report.points[0].gold is not None
    table = Table(title=f"best-of-N over {report.num_prompts} prompts")
    for name in ("N", "KL (nats)", "reward", *(["gold"] if has_gold else [])):
        table.add_column(name, justify="right")
    for point in report.points:
        cells = [str(point.n), f"{point.kl:.3f}", f"{point.reward:.4f} ± {point.reward_se:.4f}"]
        if has_gold:
            cells.append(f"{point.gold:.4f} ± {point.gold_se:.4f}")
        table.add_row(*cells)
    return table
