"""Render a :class:`~rlhf.eval.results.Report`: plots, ``report.md``, ``report.html``, ``report.json``.

The page is built once as a list of plain blocks (heading, paragraph, table, ...) holding plain
text, then written twice: as markdown and as a self-contained HTML page. Every piece of text is
escaped by the writer, because responses (and prompts) are model output, i.e. untrusted: in
the markdown, HTML specials become entities and markdown specials (``|``, ``*``, ``[`` ...) are
backslash-escaped; in the HTML everything is ``html.escape``-d and a Content-Security-Policy
forbids scripts anyway.

Plots use matplotlib's object API (``Figure`` with the Agg canvas): no pyplot, no display, no
global backend switch.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table as RichTable
from rich.text import Text

from rlhf.eval.findings import Expectation, Findings, assess, fmt, percent, summary
from rlhf.eval.results import (
    Report,
    SelectionPoint,
    json_safe,
)
from rlhf.eval.stats import best_of_n_curve, matched_kl

__all__ = [
    "ReportPaths",
    "load_report",
    "plot_overoptimisation",
    "plot_policies",
    "plot_preference_curves",
    "plot_selection",
    "summary_table",
    "to_html",
    "to_markdown",
    "write_report",
]

REPORT_JSON = "report.json"
OVEROPTIMISATION_PNG = "overoptimisation.png"
POLICIES_PNG = "policies.png"
PREFERENCE_CURVES_PNG = "preference_curves.png"
SELECTION_PNG = "selection.png"


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    json: Path
    plots: dict[str, Path] = field(default_factory=dict)  # "overoptimisation", "policies"


def write_report(report: Report, out_dir: str | Path) -> ReportPaths:
    """Write ``report.json``, the PNG plots, ``report.md`` and ``report.html`` to ``out_dir``.

    Non-finite numbers do not stop it: they are listed at the top of the report, shown as
    "NaN" / "inf" in the tables and left out of the plots.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    json_path.write_text(
        json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    plots = {}
    if report.curves or report.best_of_n:
        plots["overoptimisation"] = plot_overoptimisation(report, out / OVEROPTIMISATION_PNG)
    if report.policies:
        plots["policies"] = plot_policies(report, out / POLICIES_PNG)
    if report.preference_curves:
        plots["preference_curves"] = plot_preference_curves(report, out / PREFERENCE_CURVES_PNG)
    if report.selection:
        plots["selection"] = plot_selection(report.selection, out / SELECTION_PNG)
    blocks = _document(report, assess(report), {name: path.name for name, path in plots.items()})
    markdown_path = out / "report.md"
    markdown_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(to_html(blocks, report.title, out), encoding="utf-8")
    return ReportPaths(markdown=markdown_path, html=html_path, json=json_path, plots=plots)


def load_report(path: str | Path) -> Report:
    """Read a report back from its ``report.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    return Report.from_dict(json.loads(path.read_text(encoding="utf-8")))


# ---------------------------------------------------------------- plots


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def plain_text(text: str) -> str:
    """Text that matplotlib draws as written: a ``$`` would otherwise start mathtext."""
    return text.replace("$", r"\$")


def save_figure(figure: Any, title: str, left_out: int, path: Path) -> Path:
    """Title the figure, note the points it could not draw, and write it as a PNG."""
    if left_out:
        figure.text(
            0.01, 0.01, f"{left_out} non-finite point(s) not shown", fontsize=8, color="red"
        )
    figure.suptitle(plain_text(title))
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    return path


def plot_overoptimisation(report: Report, path: Path) -> Path:
    """Proxy (left) and gold (right) reward against sqrt(KL) for every PPO curve and best-of-N,
    each curve's gold peak starred (Gao et al. 2022, figure 1)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    proxy_axes, gold_axes = figure.subplots(1, 2, sharex=True)
    curves = sorted(report.curves, key=lambda c: c.kl_coef)
    styles = [(c.label, c, {"marker": "o", "linestyle": "-"}) for c in curves]
    best_of_n_index = len(styles) if report.best_of_n else None
    if report.best_of_n:
        styles.append(
            (
                "best-of-N",
                best_of_n_curve(report.best_of_n),
                {"marker": "s", "linestyle": "--", "color": "black"},
            )
        )
    left_out = 0
    for index, (label, curve, style) in enumerate(styles):
        style = {"color": f"C{index}", **style}
        points = [p for p in curve.points if _finite(p.kl, p.proxy, p.gold)]
        left_out += len(curve.points) - len(points)
        if not points:
            continue
        x = [p.sqrt_kl for p in points]
        for axes, attr in ((proxy_axes, "proxy"), (gold_axes, "gold")):
            errors = [getattr(p, f"{attr}_se") for p in points]
            yerr = errors if all(_finite(e) for e in errors) else None
            axes.errorbar(
                x,
                [getattr(p, attr) for p in points],
                yerr=yerr,
                label=plain_text(label),
                capsize=2,
                markersize=4,
                **style,
            )
        peak = max(points, key=lambda p: p.gold)
        gold_axes.plot(
            [peak.sqrt_kl],
            [peak.gold],
            marker="*",
            markersize=16,
            color=style["color"],
            markeredgecolor="black",
            zorder=5,
        )
        proxy_axes.axvline(peak.sqrt_kl, color=style["color"], linestyle=":", alpha=0.7)
        if index == best_of_n_index:
            for p in points:
                gold_axes.annotate(
                    f"N={p.step}",
                    (p.sqrt_kl, p.gold),
                    fontsize=7,
                    xytext=(3, -10),
                    textcoords="offset points",
                )
    proxy_axes.set_title("proxy reward (reward model: what is optimised)")
    gold_axes.set_title("gold reward (what is wanted); ★ = gold peak")
    proxy_axes.set_ylabel("mean reward-model score")
    gold_axes.set_ylabel("mean gold reward")
    for axes in (proxy_axes, gold_axes):
        axes.set_xlabel("√KL(π ‖ π_SFT)   [√nats]")
        axes.grid(alpha=0.3)
    if gold_axes.get_legend_handles_labels()[0]:
        gold_axes.legend(fontsize=8)
    return save_figure(figure, report.title, left_out, path)


def plot_preference_curves(report: Report, path: Path) -> Path:
    """The DPO family along training: the offline runs' implicit reward margin on held-out
    labels against the step (left), and every run's gold reward against √KL (right), each gold
    peak starred and the matched KL (the largest every curve reaches) dotted."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    implicit_axes, gold_axes = figure.subplots(1, 2)
    left_out = 0
    for index, curve in enumerate(report.preference_curves):
        color = f"C{index}"
        points = [p for p in curve.points if _finite(p.kl, p.proxy, p.gold)]
        left_out += len(curve.points) - len(points)
        if not points:
            continue
        style = {"color": color, "marker": "o", "linestyle": "--" if curve.online else "-"}
        label = plain_text(curve.label + (" (online)" if curve.online else ""))
        if not curve.online:
            implicit_axes.plot(
                [p.step for p in points], [p.proxy for p in points], label=label, **style
            )
        errors = [p.gold_se for p in points]
        gold_axes.errorbar(
            [p.sqrt_kl for p in points],
            [p.gold for p in points],
            yerr=errors if all(_finite(e) for e in errors) else None,
            label=label,
            capsize=2,
            markersize=4,
            **style,
        )
        peak = max(points, key=lambda p: p.gold)
        gold_axes.plot(
            [peak.sqrt_kl], [peak.gold], marker="*", markersize=16, color=color,
            markeredgecolor="black", zorder=5,
        )  # fmt: skip
    kl = matched_kl(report.preference_curves)
    if kl is not None and kl > 0:
        gold_axes.axvline(math.sqrt(kl), color="grey", linestyle=":", label="matched KL")
    implicit_axes.set_title("offline: implicit reward margin on held-out labels")
    implicit_axes.set_xlabel("optimiser step")
    implicit_axes.set_ylabel("β·(log-ratio chosen − rejected)")
    gold_axes.set_title("gold reward against KL; ★ = gold peak")
    gold_axes.set_xlabel("√KL(π ‖ π_SFT)   [√nats]")
    gold_axes.set_ylabel("mean gold reward (±1 s.e.)")
    for axes in (implicit_axes, gold_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return save_figure(figure, report.title, left_out, path)


def plot_selection(points: Sequence[SelectionPoint], path: Path) -> Path:
    """Accuracy of the chosen solution against N (log scale), one line per selector, error
    bars ±1 standard error over problems; the oracle (any right) dotted, as the ceiling."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8))
    axes = figure.subplots()
    left_out = 0
    for selector in dict.fromkeys(point.selector for point in points):
        line = [p for p in points if p.selector == selector and _finite(p.accuracy, p.se)]
        left_out += sum(p.selector == selector for p in points) - len(line)
        axes.errorbar(
            [p.n for p in line], [p.accuracy for p in line], [p.se for p in line],
            marker="o", markersize=3, capsize=2, label=plain_text(selector),
            linestyle=":" if selector.startswith("oracle") else "-",
        )  # fmt: skip
    axes.set_xscale("log", base=2)
    ns = sorted({point.n for point in points})
    axes.set_xticks(ns, [str(n) for n in ns])
    axes.set_xlabel("N (solutions sampled per problem)")
    axes.set_ylabel("accuracy of the chosen solution")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return save_figure(figure, "choosing one of N solutions", left_out, path)


def selection_rows(points: Sequence[SelectionPoint]) -> tuple[list[str], list[list[str]]]:
    """The selection comparison as a table: one row per selector, one column per N, each
    cell the accuracy ± its standard error."""
    ns = sorted({point.n for point in points})
    rows = []
    for selector in dict.fromkeys(point.selector for point in points):
        by_n = {p.n: p for p in points if p.selector == selector}
        rows.append(
            [selector, *(_with_se(by_n[n].accuracy, by_n[n].se) if n in by_n else "" for n in ns)]
        )
    return ["selector", *(f"N = {n}" for n in ns)], rows


def plot_policies(report: Report, path: Path) -> Path:
    """Mean gold reward per policy, error bars ±1 standard error over prompts; a non-finite
    mean is drawn as a hatched empty bar labelled with its value."""
    from matplotlib.figure import Figure

    policies = report.policies
    figure = Figure(figsize=(max(4.5, 1.2 * len(policies) + 2), 3.8))
    axes = figure.subplots()
    heights = [p.gold_mean if _finite(p.gold_mean) else 0.0 for p in policies]
    errors = [p.gold_se if _finite(p.gold_mean, p.gold_se) else 0.0 for p in policies]
    bars = axes.bar(
        range(len(policies)),
        heights,
        yerr=errors,
        capsize=4,
        color=[f"C{i}" for i in range(len(policies))],
    )
    for bar, policy in zip(bars, policies, strict=True):
        if not _finite(policy.gold_mean):
            bar.set_hatch("//")
            bar.set_facecolor("none")
            bar.set_edgecolor("red")
    labels = axes.bar_label(bars, [fmt(p.gold_mean) for p in policies], padding=3, fontsize=8)
    for label, policy in zip(labels, policies, strict=True):
        if not _finite(policy.gold_mean):
            label.set_color("red")
    baseline = report.policy(report.baseline)
    if baseline is not None and _finite(baseline.gold_mean):
        axes.axhline(
            baseline.gold_mean,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=plain_text(f"{baseline.name} level"),
        )
        axes.legend(fontsize=8)
    axes.set_xticks(
        range(len(policies)),
        [plain_text(p.name) for p in policies],
        rotation=15 if len(policies) > 4 else 0,
    )
    axes.set_ylabel("mean gold reward (±1 s.e.)")
    axes.set_title("gold reward per policy")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    return path


# ---------------------------------------------------------------- the document, as blocks


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Alert:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]  # per column: right-aligned


@dataclass
class Image:
    file: str  # a PNG beside the report
    alt: str


@dataclass
class Code:
    text: str


Block = Heading | Paragraph | Alert | Bullets | Table | Image | Code


def _expectation_line(e: Expectation) -> str:
    mark = {True: "✓", False: "✗ NOT observed:", None: "? not judged:"}[e.met]
    return f"{mark} {e.claim} ({e.detail})"


def _document(report: Report, findings: Findings, images: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [
        Heading(1, report.title),
        Paragraph(f"Seed {report.seed}; policies are compared with {report.baseline}."),
    ]
    if findings.non_finite:
        listed = findings.non_finite[:50]  # a diverged run can have hundreds
        more = (
            f"; and {len(findings.non_finite) - len(listed)} more"
            if len(findings.non_finite) > len(listed)
            else ""
        )
        blocks.append(
            Alert("Not finite (NaN or infinite), shown as such below: " + "; ".join(listed) + more)
        )
    blocks += [Heading(2, "Summary"), Paragraph(" ".join(summary(findings)))]
    if findings.expectations:
        blocks += [
            Heading(3, "Expected results"),
            Bullets([_expectation_line(e) for e in findings.expectations]),
        ]

    if report.curves or report.best_of_n:
        blocks += [
            Heading(2, "Over-optimisation"),
            Paragraph(
                "Proxy reward (the reward model's score, which the policy is optimised for) and "
                "gold reward (the simulated world's true reward) against √KL to the SFT policy, in "
                "√nats. The star marks each curve's gold peak; the dotted lines on the proxy panel "
                "mark the same √KL. Best-of-N's KL is analytic: log N − (N − 1)/N."
            ),
        ]
        if "overoptimisation" in images:
            blocks.append(
                Image(images["overoptimisation"], "proxy and gold reward against sqrt(KL)")
            )
        peaks = {f.label: f.peak for f in findings.curves}
        for curve in sorted(report.curves, key=lambda c: c.kl_coef):
            peak = peaks.get(curve.label)
            rows = [
                [
                    str(p.step),
                    fmt(p.kl),
                    fmt(p.sqrt_kl),
                    _with_se(p.proxy, p.proxy_se),
                    _with_se(p.gold, p.gold_se),
                    "gold peak" if p is peak else "",
                ]
                for p in curve.points
            ]
            blocks += [
                Heading(3, f"{curve.label} (KL coefficient {fmt(curve.kl_coef, 3)})"),
                Table(
                    ["step", "KL (nats)", "√KL", "proxy", "gold", ""],
                    rows,
                    [True, True, True, True, True, False],
                ),
            ]
        if report.best_of_n:
            peak = findings.best_of_n.peak if findings.best_of_n else None
            rows = [
                [str(p.n), fmt(p.kl), fmt(math.sqrt(max(p.kl, 0.0)) if not math.isnan(p.kl) else math.nan),
                 _with_se(p.proxy, p.proxy_se), _with_se(p.gold, p.gold_se),
                 "gold peak" if peak is not None and p.n == peak.step else ""]
                for p in report.best_of_n
            ]  # fmt: skip
            blocks += [
                Heading(3, "Best-of-N"),
                Table(
                    ["N", "KL (nats)", "√KL", "proxy", "gold", ""],
                    rows,
                    [True, True, True, True, True, False],
                ),
            ]

    if report.preference_curves:
        blocks += [
            Heading(2, "Offline and online preference optimisation"),
            Paragraph(
                "Each DPO-family run's held-out evaluations along training, from the starting "
                "policy on: the gold reward and KL of samples of the policy as it was, and for "
                "the offline runs their implicit reward margin on held-out labels. Runs are "
                "compared at matched KL, the largest KL every curve reaches (dotted), by "
                "interpolating each curve where its KL first gets there."
            ),
        ]
        if "preference_curves" in images:
            blocks.append(Image(images["preference_curves"], "gold reward against sqrt(KL)"))
        for curve in report.preference_curves:
            rows = [
                [str(p.step), fmt(p.kl), fmt(p.sqrt_kl), fmt(p.proxy), _with_se(p.gold, p.gold_se)]
                for p in curve.points
            ]
            kind = "online" if curve.online else "offline"
            blocks += [
                Heading(3, f"{curve.label} ({kind}, β = {fmt(curve.kl_coef, 3)})"),
                Table(
                    ["step", "KL (nats)", "√KL", curve.proxy_name, "gold"],
                    rows,
                    [True, True, True, True, True],
                ),
            ]

    if report.selection:
        from rlhf.eval.step_selection import SELECTOR_MEANINGS

        header, rows = selection_rows(report.selection)
        blocks += [
            Heading(2, "Choosing one of N solutions"),
            Paragraph(
                "The SFT policy's best-of-N samples again, now asking how often the solution "
                "each method chooses among N is right under the gold verifier (over disjoint "
                "groups of N of each problem's samples, ± standard error over problems); "
                "Lightman et al. 2023 expect the process reward model above majority voting "
                "above the outcome reward model."
            ),
        ]
        if "selection" in images:
            blocks.append(Image(images["selection"], "accuracy against N"))
        blocks += [
            Table(header, rows, [False, *([True] * (len(header) - 1))]),
            Bullets([f"{name}: {meaning}" for name, meaning in SELECTOR_MEANINGS.items()]),
        ]

    if report.head_to_head:
        rows = [
            [h.policy, h.opponent, f"{fmt(h.rate)} ± {fmt(h.se)}", str(h.n)]
            for h in report.head_to_head
        ]
        blocks += [
            Heading(2, "Head to head under the gold preference"),
            Paragraph(
                "Each policy's response against the opponent's on the same held-out prompt, "
                "judged by the world's gold preference (which may not be transitive, so no "
                "scalar reward ranks the policies); above 0.5, the policy is preferred."
            ),
            Table(
                ["policy", "opponent", "P(policy ≻ opponent)", "comparisons"],
                rows,
                [False, False, True, True],
            ),
        ]

    if report.policies:
        blocks += [Heading(2, "Policies")]
        if "policies" in images:
            blocks.append(Image(images["policies"], "gold reward per policy"))
        verdicts = {c.name: c.verdict for c in findings.comparisons}
        rows = []
        for p in report.policies:
            win = (
                "–"
                if p.win_rate_vs_sft is None
                else percent(p.win_rate_vs_sft)
                + (f" ± {percent(p.win_rate_se)}" if p.win_rate_se is not None else "")
            )
            rows.append(
                [
                    p.name,
                    f"{fmt(p.gold_mean)} ± {fmt(p.gold_std)}",
                    fmt(p.proxy_mean),
                    fmt(p.kl_to_sft, 2),
                    win,
                    verdicts.get(p.name, "baseline" if p.name == report.baseline else "–"),
                    str(p.n_prompts),
                ]
            )
        blocks.append(
            Table(
                [
                    "policy",
                    "gold (mean ± std)",
                    "proxy",
                    f"KL to {report.baseline} (nats)",
                    f"win rate vs {report.baseline}",
                    f"gold vs {report.baseline}",
                    "prompts",
                ],
                rows,
                [False, True, True, True, True, False, True],
            )
        )

    if report.reward_model is not None:
        rm = report.reward_model
        gap = (rm.ceiling - rm.accuracy) * 100
        blocks += [
            Heading(2, "Reward model"),
            Paragraph(
                "Accuracy on held-out simulated preference labels; the ceiling is the gold reward's own accuracy on the same noisy labels."
            ),
            Table(
                ["accuracy", "ceiling", "gap (points)", "pairs"],
                [[percent(rm.accuracy), percent(rm.ceiling), fmt(gap, 1), str(rm.n_pairs)]],
                [True, True, True, True],
            ),
        ]

    if report.timings:
        total = math.fsum(t.seconds for t in report.timings)
        rows = [
            [t.stage, fmt(t.seconds, 1), percent(t.seconds / total) if total > 0 else "–"]
            for t in report.timings
        ]
        rows.append(["total", fmt(total, 1), "100.0%" if total > 0 else "–"])
        blocks += [
            Heading(2, "Stage timings"),
            Table(["stage", "seconds", "share"], rows, [False, True, True]),
        ]

    with_samples = [p for p in report.policies if p.samples]
    if with_samples:
        blocks.append(Heading(2, "Sample responses"))
        for p in with_samples:
            rows = [[s.prompt, s.response, fmt(s.gold), fmt(s.proxy)] for s in p.samples]
            blocks += [
                Heading(3, p.name),
                Table(["prompt", "response", "gold", "proxy"], rows, [False, False, True, True]),
            ]

    if report.notes:
        blocks += [Heading(2, "Notes"), Bullets(list(report.notes))]
    if report.config:
        blocks += [
            Heading(2, "Configuration"),
            Code(json.dumps(json_safe(report.config), indent=2, ensure_ascii=False, default=str)),
        ]
    return blocks


def _with_se(value: float, se: float | None) -> str:
    return fmt(value) if se is None else f"{fmt(value)} ± {fmt(se)}"


# ---------------------------------------------------------------- markdown

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#~!$])")


def markdown_text(text: str) -> str:
    """Plain text as inline markdown that renders as the same text: HTML specials become
    entities, markdown punctuation is backslash-escaped, line breaks become ``<br>`` (so a
    table row stays one line)."""
    text = html.escape(text, quote=False)
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _markdown_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {markdown_text(block.text)}"
    if isinstance(block, Paragraph):
        return markdown_text(block.text)
    if isinstance(block, Alert):
        return f"> **Warning:** {markdown_text(block.text)}"
    if isinstance(block, Bullets):
        return "\n".join(f"- {markdown_text(item)}" for item in block.items)
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(markdown_text(cell) for cell in block.header) + " |",
            "|" + "|".join("---:" if numeric else ":---" for numeric in block.numeric) + "|",
        ]
        lines += [
            "| " + " | ".join(markdown_text(cell) for cell in row) + " |" for row in block.rows
        ]
        return "\n".join(lines)
    if isinstance(block, Image):
        return f"![{markdown_text(block.alt)}]({block.file})"
    if isinstance(block, Code):
        longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}json\n{block.text}\n{fence}"
    raise TypeError(f"unknown block {block!r}")


def to_markdown(blocks: Sequence[Block]) -> str:
    return "\n\n".join(_markdown_block(block) for block in blocks) + "\n"


# ---------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { white-space: pre-wrap; max-width: 36rem; }
.warning { border-left: 4px solid #c00; background: #fff0f0; padding: 0.5rem 1rem; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; }
"""


def _html_text(text: str) -> str:
    return html.escape(text, quote=True)


def _html_block(block: Block, folder: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_html_text(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_html_text(block.text)}</p>"
    if isinstance(block, Alert):
        return f'<p class="warning"><strong>Warning:</strong> {_html_text(block.text)}</p>'
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_html_text(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_html_text(cell)}</th>" for cell in block.header)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{"num" if numeric else "text"}">{_html_text(cell)}</td>'
                for cell, numeric in zip(row, block.numeric, strict=True)
            )
            + "</tr>"
            for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Image):
        data = base64.b64encode((folder / block.file).read_bytes()).decode("ascii")
        return f'<p><img alt="{_html_text(block.alt)}" src="data:image/png;base64,{data}"></p>'
    if isinstance(block, Code):
        return f"<pre>{_html_text(block.text)}</pre>"
    raise TypeError(f"unknown block {block!r}")


def to_html(blocks: Sequence[Block], title: str, folder: Path) -> str:
    """A self-contained page: styles inline, plots (read from ``folder``) embedded as base64."""
    body = "\n".join(_html_block(block, folder) for block in blocks)
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        # Defence in depth: the page needs no script and no outside resource.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        f"<title>{_html_text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- console


def summary_table(report: Report) -> RichTable:
    """A rich table of the policies, for the console (cells are ``Text``, so a name with
    ``[`` in it is not read as rich markup)."""

    def cell(text: str) -> Text:
        return Text(text, style="bold red" if any(bad in text for bad in ("NaN", "inf")) else "")

    findings = assess(report)
    verdicts = {c.name: c.verdict for c in findings.comparisons}
    table = RichTable(title=Text(report.title))
    for name in (
        "policy",
        "gold (mean ± std)",
        "proxy",
        "KL (nats)",
        f"win vs {report.baseline}",
        "gold vs baseline",
    ):
        table.add_column(
            Text(name), justify="left" if name in ("policy", "gold vs baseline") else "right"
        )
    for p in report.policies:
        win = "–" if p.win_rate_vs_sft is None else percent(p.win_rate_vs_sft)
        table.add_row(
            Text(p.name),
            cell(f"{fmt(p.gold_mean)} ± {fmt(p.gold_std)}"),
            cell(fmt(p.proxy_mean)),
            cell(fmt(p.kl_to_sft, 2)),
            cell(win),
            Text(verdicts.get(p.name, "baseline" if p.name == report.baseline else "–")),
        )
    if findings.reward_model is not None:
        rm = findings.reward_model
        table.caption = Text(
            f"reward model: {percent(rm.accuracy)} accuracy, ceiling {percent(rm.ceiling)}"
        )
    return table
