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

With ``--prm`` (a process reward model) and a 0/1 verifier as ``--gold``, the command also
compares ways of *choosing* one of N solutions by accuracy (:mod:`rlhf.eval.step_selection`:
the PRM by each aggregation, the outcome reward, majority and PRM-weighted voting, and the
oracle): ``selection.jsonl``/``.csv`` and one plot of accuracy against N, ``selection.png``.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlhf.eval.best_of_n import BestOfNReport
from rlhf.eval.results import SelectionPoint
from rlhf.eval.step_selection import SELECTOR_MEANINGS

logger = logging.getLogger("rlhf")


def _write_rows(rows: list[dict[str, object]], out: Path, name: str) -> dict[str, Path]:
    """``<name>.jsonl`` and ``<name>.csv`` of ``rows`` (one dict each, the same keys)."""
    paths = {"jsonl": out / f"{name}.jsonl", "csv": out / f"{name}.csv"}
    with paths["jsonl"].open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return paths


def write_report(report: BestOfNReport, out: str | Path) -> dict[str, Path]:
    """``best_of_n.jsonl`` and ``.csv`` (one row per N), ``samples.jsonl`` (every sample with
    its rewards) and, when matplotlib is installed, ``best_of_n.png``."""
    from rlhf.rollout.candidates import write_candidates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_rows([asdict(point) for point in report.points], out, "best_of_n")
    paths["samples"] = write_candidates(out / "samples.jsonl", report.samples)
    plot = _plot(report, out / "best_of_n.png")
    if plot is not None:
        paths["png"] = plot
    return paths


def write_selection(points: list[SelectionPoint], out: str | Path) -> dict[str, Path]:
    """``selection.jsonl`` and ``.csv`` (one row per selector and N) and, when matplotlib is
    installed, ``selection.png``: accuracy against N, one line per selector."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        f"selection_{kind}": path
        for kind, path in _write_rows([asdict(p) for p in points], out, "selection").items()
    }
    if _pyplot("selection.png") is None:
        return paths
    from rlhf.eval.report import plot_selection

    paths["selection_png"] = plot_selection(points, out / "selection.png")
    return paths


def _pyplot(name: str) -> Any:
    """matplotlib's pyplot on the file backend, or None (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s (pip install matplotlib)", name)
        return None
    return plt


def _plot(report: BestOfNReport, path: Path) -> Path | None:
    plt = _pyplot(path.name)
    if plt is None:
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


def selection_table(points: list[SelectionPoint]) -> object:
    """A rich table of the selection comparison: one row per selector, one column per N."""
    from rich.table import Table

    ns = sorted({point.n for point in points})
    table = Table(title="accuracy of the chosen solution, choosing among N")
    table.add_column("selector")
    for n in ns:
        table.add_column(f"N={n}", justify="right")
    for selector in dict.fromkeys(point.selector for point in points):
        by_n = {p.n: p for p in points if p.selector == selector}
        table.add_row(selector, *(f"{by_n[n].accuracy:.3f}" if n in by_n else "" for n in ns))
    return table


def write_markdown(
    report: BestOfNReport, points: list[SelectionPoint], out: str | Path, source: str
) -> Path:
    """``report.md``: the best-of-N curve and, with ``points``, the selection comparison, each
    as a table beside its plot (``source`` says what was sampled: the command's arguments)."""
    out = Path(out)
    has_gold = report.points[0].gold is not None
    lines = [
        "# Best-of-N",
        "",
        f"{source}: {report.num_prompts} prompts, {report.max_n} samples each "
        f"({report.finished_rate:.0%} ended with EOS).",
        "",
        "| N | KL (nats) | reward | " + ("gold |" if has_gold else ""),
        "|---|---|---|" + ("---|" if has_gold else ""),
    ]
    for point in report.points:
        row = f"| {point.n} | {point.kl:.3f} | {point.reward:.4f} ± {point.reward_se:.4f} |"
        if has_gold:
            row += f" {point.gold:.4f} ± {point.gold_se:.4f} |"
        lines.append(row)
    if (out / "best_of_n.png").exists():
        lines += ["", "![best-of-N](best_of_n.png)"]
    if points:
        from rlhf.eval.report import selection_rows

        header, rows = selection_rows(points)
        lines += [
            "",
            "## Choosing one of N solutions",
            "",
            "Accuracy of the chosen solution under the gold verifier, over disjoint groups of N "
            "of each prompt's samples (± standard error over prompts).",
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
        lines += ["", "![accuracy against N](selection.png)", ""]
        meanings = dict(SELECTOR_MEANINGS)
        if any(point.selector.startswith("prm beam search") for point in points):
            meanings["prm beam search (B×E)"] = (
                "step by step, B partial solutions each continued E times a step, the PRM "
                "keeping the best B (shown at N = B × E)"
            )
        for name, meaning in meanings.items():
            lines.append(f"- **{name}**: {meaning}.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
