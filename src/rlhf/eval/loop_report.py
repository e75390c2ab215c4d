"""The report of an ``rlhf loop`` run: one row per round, and the plot of what the labels
bought: the policy's gold reward against the labels spent, the reward model's accuracy on
each round's fresh labels, and the policy's win rate over the round before.

:func:`plot_label_efficiency` draws several loops on one plot (gold against labels spent):
active selection against random, the figure ``benchmarks/loop_active.py`` makes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf.eval.report import plain_text, save_figure

COLUMNS = (
    ("round", "round", "{:d}"),
    ("labels", "labels", "{:d}"),
    ("labels_total", "labels so far", "{:d}"),
    ("selection", "selection", "{}"),
    ("alpha", "agreement (α)", "{:.3f}"),
    ("rm_accuracy_fresh", "RM accuracy on fresh labels", "{:.3f}"),
    ("rm_gold_accuracy", "RM accuracy vs gold", "{:.3f}"),
    ("gold", "gold", "{:.4f}"),
    ("best_of_n_gold", "best-of-n gold", "{:.4f}"),
    ("kl", "KL to initial", "{:.3f}"),
    ("win_rate_vs_previous", "win rate vs previous (gold)", "{:.3f}"),
    ("human_win_rate", "win rate vs previous (people)", "{:.3f}"),
)


def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key == "gold" and row.get("gold_se") is not None:
        return f"{value:.4f} ± {row['gold_se']:.4f}"
    return fmt.format(value)


def rounds_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rounds as a Markdown table."""
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def ratings_table(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The checkpoints' Bradley–Terry ratings after the last round that has them."""
    latest = next((r["ratings"] for r in reversed(rows) if r.get("ratings")), None)
    if not latest:
        return None
    lines = ["| checkpoint | Elo | ± | comparisons |", "|---|---|---|---|"]
    for model, rating in sorted(latest.items(), key=lambda item: -item[1]["elo"]):
        lines.append(f"| {model} | {rating['elo']:.0f} | {rating['elo_se']:.0f} | "
                     f"{rating['games']:g} |")  # fmt: skip
    return "\n".join(lines)


def labels_points(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float, float]]:
    """(labels spent, the rounds' ``key``, its standard error or 0) for each round that has
    it; for ``gold``, the initial policy's at 0 labels first."""
    points = [
        (r.get("labels_total", 0), r[key], r.get(f"{key}_se") or 0.0)
        for r in rows
        if r.get(key) is not None
    ]
    if key == "gold" and rows and rows[0].get("gold_initial") is not None:
        points.insert(0, (0, rows[0]["gold_initial"], 0.0))
    return points


def plot_loop(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Gold against labels spent (left); RM accuracy on fresh labels and win rate over the
    previous round, per round (right)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    gold_axes, rate_axes = figure.subplots(1, 2)
    points = labels_points(rows, "gold")
    if points:
        xs, ys, errors = zip(*points, strict=True)
        gold_axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3)
    gold_axes.set_xlabel("labels spent")
    gold_axes.set_ylabel("policy gold reward")
    gold_axes.grid(alpha=0.3)
    series = (
        ("rm_accuracy_fresh", "RM accuracy on the round's fresh labels"),
        ("win_rate_vs_previous", "win rate over the previous round (gold)"),
        ("human_win_rate", "win rate over the previous round (people)"),
    )
    for key, label in series:
        found = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if found:
            xs, ys = zip(*found, strict=True)
            rate_axes.plot(xs, ys, marker="o", label=label)
    rate_axes.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    rate_axes.set_xlabel("round")
    rate_axes.set_ylim(0, 1)
    rate_axes.grid(alpha=0.3)
    if rate_axes.get_legend_handles_labels()[0]:
        rate_axes.legend(fontsize=8)
    return save_figure(figure, title, 0, path)


def write_loop_report(rows: Sequence[Mapping[str, Any]], out: Path, title: str) -> Path:
    """``report.md`` (the rounds, the ratings) beside ``loop.png``; returns the report's path."""
    lines = [f"# {title}", ""]
    if not rows:
        lines.append("No round finished.")
    else:
        plot_loop(rows, out / "loop.png", title)
        lines += [rounds_table(rows), "", "![the loop, round by round](loop.png)", ""]
        ratings = ratings_table(rows)
        if ratings:
            lines += ["## Checkpoints rated by people (Bradley–Terry, Elo points)", "", ratings]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


EFFICIENCY = (
    ("gold", "policy gold reward"),
    ("best_of_n_gold", "gold of the RM's best-of-n pick"),
    ("rm_gold_accuracy", "RM accuracy against gold"),
)


def plot_label_efficiency(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str
) -> Path:
    """What each loop reached against the labels it spent (e.g. active against random
    selection), one panel per measure of :data:`EFFICIENCY`, each point with its standard
    error where it has one; the policy's starting gold at 0 labels."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2))
    panels = figure.subplots(1, len(EFFICIENCY))
    for axes, (key, label) in zip(panels, EFFICIENCY, strict=True):
        for name, rows in runs.items():
            points = labels_points(rows, key)
            if points:
                xs, ys, errors = zip(*points, strict=True)
                axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=plain_text(name))
        axes.set_xlabel("labels spent")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    panels[0].legend()
    return save_figure(figure, title, 0, path)
