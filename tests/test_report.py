"""rlhf.eval: statistics on hand-computed cases, the verdicts, and the written report."""

from __future__ import annotations

import io
import json
import math
import re

import pytest

from rlhf.eval import (
    BestOfNPoint,
    Criteria,
    CurvePoint,
    OptimisationCurve,
    PolicyEval,
    Report,
    RewardModelEval,
    StageTiming,
    assess,
    best_of_n_kl,
    compare_gold,
    curve_findings,
    gold_peak,
    load_report,
    mean_std,
    non_finite_fields,
    reward_model_findings,
    summary,
    summary_table,
    win_rate,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_curve(
    label: str, kl_coef: float, golds: list[float], proxies: list[float], **se
) -> OptimisationCurve:
    points = [
        CurvePoint(step=10 * i, kl=float(i * i), proxy=proxy, gold=gold, **se)
        for i, (gold, proxy) in enumerate(zip(golds, proxies, strict=True))
    ]
    return OptimisationCurve(label, kl_coef, points)


RISING_PROXY_PEAKING_GOLD = dict(golds=[0.0, 0.3, 0.5, 0.4, 0.2], proxies=[0.0, 1.0, 2.0, 3.0, 4.0])
MONOTONE = dict(golds=[0.0, 0.2, 0.3, 0.35, 0.4], proxies=[0.0, 0.5, 0.8, 1.0, 1.1])


def make_report(**changes) -> Report:
    report = Report(
        title="quickstart",
        seed=3,
        policies=[
            PolicyEval("SFT", 0.0, 0.5, 0.0, 0.0, None, 100, [("What is 2+2?", "4", 1.0, 0.3)]),
            PolicyEval("PPO β=0.0", 0.2, 0.5, 4.0, 16.0, 0.6, 100, win_rate_se=0.05),
            PolicyEval("PPO β=0.05", 0.4, 0.5, 1.1, 4.0, 0.7, 100, win_rate_se=0.04),
            PolicyEval(
                "DPO",
                0.3,
                0.5,
                None,
                2.0,
                0.65,
                100,
                [("say <hi>", "a | b\nsecond line <script>alert('x')</script>", 0.5, None)],
            ),
        ],
        curves=[
            make_curve("PPO β=0.05", 0.05, **MONOTONE),
            make_curve("PPO β=0.0", 0.0, **RISING_PROXY_PEAKING_GOLD),
        ],
        best_of_n=[
            BestOfNPoint(n, best_of_n_kl(n), proxy=0.2 * math.log(n), gold=0.1 * math.log(n))
            for n in (1, 2, 4, 8)
        ],
        reward_model=RewardModelEval(accuracy=0.70, ceiling=0.73, n_pairs=500),
        timings=[StageTiming("sft", 3.0), StageTiming("ppo", 9.0)],
        notes=["simulated world, seed 3"],
        config={"ppo": {"kl_coef": [0.0, 0.05]}, "lr": 1e-4},
        criteria=Criteria(gold_tolerance=0.05, proxy_tolerance=0.1),
    )
    for name, value in changes.items():
        setattr(report, name, value)
    return report


# ---------------------------------------------------------------- statistics


def test_mean_std_uses_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_win_rate_counts_ties_as_half_with_a_standard_error():
    # win, tie, loss, win -> scores 1, ½, 0, 1
    result = win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0])
    assert (result.wins, result.ties, result.losses) == (2, 1, 1)
    assert result.rate == pytest.approx(0.625)
    deviations = [0.375, -0.125, -0.625, 0.375]
    assert result.se == pytest.approx(math.sqrt(sum(d * d for d in deviations) / 3 / 4))


def test_win_rate_tie_tolerance_and_paired_lengths():
    assert win_rate([1.0, 1.0], [1.05, 0.5], tie_tolerance=0.1).rate == pytest.approx(0.75)
    assert win_rate([1.0, 1.0], [1.0, 1.0]).rate == 0.5
    with pytest.raises(ValueError, match="paired"):
        win_rate([1.0], [1.0, 2.0])


def test_best_of_n_kl_analytic_values():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)


def test_gold_peak_skips_non_finite_points_and_keeps_the_first_tie():
    curve = make_curve("c", 0.0, golds=[0.1, math.nan, 0.4, 0.4, math.inf * 0], proxies=[0.0] * 5)
    assert gold_peak(curve).step == 20
    with pytest.raises(ValueError, match="no finite gold"):
        gold_peak(make_curve("c", 0.0, golds=[math.nan], proxies=[0.0]))


# ---------------------------------------------------------------- verdicts


def test_rising_proxy_with_peaking_gold_is_overoptimisation():
    found = curve_findings(
        make_curve("PPO β=0.0", 0.0, **RISING_PROXY_PEAKING_GOLD),
        gold_tolerance=0.05,
        proxy_tolerance=0.1,
    )
    assert found.peak.step == 20 and found.peak.sqrt_kl == 2.0
    assert found.gold_drop == pytest.approx(0.3)
    assert found.proxy_rise_after_peak == pytest.approx(2.0)
    assert found.gold_fell and found.proxy_still_rising and found.overoptimised
    assert not found.gold_held


def test_monotone_curve_holds_its_gold():
    found = curve_findings(make_curve("PPO β=0.05", 0.05, **MONOTONE), gold_tolerance=0.05)
    assert found.peak_at_end and found.gold_held and not found.overoptimised
    assert found.gold_improved and found.gold_gain == pytest.approx(0.4)


def test_a_fall_within_the_tolerance_is_not_a_fall():
    dip = dict(golds=[0.0, 0.3, 0.5, 0.48, 0.47], proxies=[0.0, 1.0, 2.0, 3.0, 4.0])
    assert not curve_findings(make_curve("c", 0.0, **dip), gold_tolerance=0.05).gold_fell
    assert curve_findings(make_curve("c", 0.0, **dip), gold_tolerance=0.01).gold_fell


def test_tolerance_from_standard_errors_or_none():
    dip = dict(golds=[0.0, 0.5, 0.4], proxies=[0.0, 1.0, 2.0])
    noisy = curve_findings(make_curve("c", 0.0, **dip, gold_se=0.1, proxy_se=0.1))
    assert noisy.gold_tolerance_source == "standard errors"
    assert noisy.gold_tolerance == pytest.approx(2 * math.hypot(0.1, 0.1))
    assert not noisy.gold_fell  # 0.1 drop, tolerance 0.28
    precise = curve_findings(make_curve("c", 0.0, **dip, gold_se=0.01, proxy_se=0.01))
    assert precise.overoptimised
    unknown = curve_findings(make_curve("c", 0.0, **dip))
    assert unknown.gold_tolerance_source == "none" and unknown.gold_tolerance == 0.0


def test_compare_gold_and_reward_model_findings():
    sft = PolicyEval("SFT", 0.0, 1.0, None, 0.0, None, 100)  # se 0.1
    assert compare_gold(PolicyEval("a", 0.5, 1.0, None, 1.0, 0.6, 100), sft).verdict == "better"
    assert (
        compare_gold(PolicyEval("b", 0.1, 1.0, None, 1.0, 0.5, 100), sft).verdict == "within noise"
    )
    assert compare_gold(PolicyEval("c", -0.5, 1.0, None, 1.0, 0.4, 100), sft).verdict == "worse"
    assert (
        compare_gold(PolicyEval("d", math.nan, 1.0, None, 1.0, 0.4, 100), sft).verdict == "unknown"
    )
    near = reward_model_findings(RewardModelEval(0.70, 0.73, 500), within_points=5)
    assert near.gap_points == pytest.approx(3.0) and near.near_ceiling
    assert not reward_model_findings(RewardModelEval(0.60, 0.73, 500), within_points=5).near_ceiling


def test_assess_meets_every_expectation_of_the_textbook_run():
    findings = assess(make_report())
    assert [f.label for f in findings.curves] == ["PPO β=0.0", "PPO β=0.05"]  # by kl_coef
    assert all(e.met for e in findings.expectations), findings.expectations
    # PPO β=0.0 is past its gold peak by design: it is not expected to beat SFT.
    assert not any(e.claim.startswith("PPO β=0.0 beats") for e in findings.expectations)
    assert summary(findings)[-1] == "Every expected result came out."


def test_an_expected_result_that_did_not_come_out_is_said_plainly(tmp_path):
    report = make_report(
        curves=[
            make_curve("PPO β=0.0", 0.0, **MONOTONE),
            make_curve("PPO β=0.05", 0.05, **MONOTONE),
        ],
        reward_model=RewardModelEval(accuracy=0.55, ceiling=0.73, n_pairs=500),
    )
    text = " ".join(summary(assess(report)))
    assert "Not as expected: PPO β=0.0 over-optimises" in text and "NOT observed" in text
    assert "18.0 points below it, more than the 5-point target" in text
    markdown = write_report(report, tmp_path).markdown.read_text(encoding="utf-8")
    assert "✗ NOT observed: PPO β=0.0 over-optimises" in markdown


# ---------------------------------------------------------------- the written report


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header starts with ``header_start``, split on
    unescaped pipes."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(re.split(r"(?<!\\)\|", line)[1:-1])
    return rows


def test_write_report_writes_every_file(tmp_path):
    paths = write_report(make_report(), tmp_path / "report")
    for path in (paths.markdown, paths.html, paths.json, *paths.plots.values()):
        assert path.is_file() and path.stat().st_size > 0
    assert set(paths.plots) == {"overoptimisation", "policies"}
    for plot in paths.plots.values():
        assert plot.read_bytes().startswith(PNG_MAGIC)
    markdown = paths.markdown.read_text(encoding="utf-8")
    assert "![proxy and gold reward against sqrt(KL)](overoptimisation.png)" in markdown
    assert "over-optimises the reward model" in markdown
    html = paths.html.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 2


def test_model_text_is_escaped_in_html_and_markdown(tmp_path):
    paths = write_report(make_report(), tmp_path)
    html = paths.html.read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    markdown = paths.markdown.read_text(encoding="utf-8")
    assert "<script" not in markdown
    rows = table_rows(markdown[markdown.index("### DPO") :], "| prompt")
    assert len(rows) == 3 and all(len(row) == 4 for row in rows)  # header, rule, one sample
    assert rows[2][1].strip() == r"a \| b<br>second line &lt;script&gt;alert('x')&lt;/script&gt;"


def test_report_json_round_trips(tmp_path):
    report = make_report()
    paths = write_report(report, tmp_path)
    assert load_report(paths.json) == report
    assert load_report(tmp_path) == report  # the folder works too
    assert (
        json.loads(paths.json.read_text(encoding="utf-8"))["policies"][3]["samples"][0]["proxy"]
        is None
    )


def test_non_finite_numbers_are_listed_and_shown_without_crashing(tmp_path):
    report = make_report()
    report.policies[3].gold_mean = math.nan
    report.curves[1].points[4].proxy = math.inf
    report.config["lr"] = -math.inf
    fields = non_finite_fields(report)
    assert fields == [
        "policies['DPO'].gold_mean = nan",
        "curves['PPO β=0.0'].points[4].proxy = inf",
        "config.lr = -inf",
    ]
    paths = write_report(report, tmp_path)
    markdown = paths.markdown.read_text(encoding="utf-8")
    assert "> **Warning:** Not finite" in markdown
    assert "| DPO | NaN ± 0.500 |" in markdown
    assert "policies\\['DPO'\\].gold\\_mean = nan" in markdown
    assert "not finite" in paths.html.read_text(encoding="utf-8")
    # JSON stays standard (no bare NaN) and loads back as non-finite floats.
    text = paths.json.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    loaded = load_report(paths.json)
    assert math.isnan(loaded.policies[3].gold_mean) and loaded.config["lr"] == "-inf"
    assert loaded.curves[1].points[4].proxy == math.inf
    # DPO's comparison with SFT cannot be judged; the summary says so.
    assert "DPO beats SFT on gold: could not be judged" in " ".join(summary(assess(report)))


def test_summary_table_renders_names_as_text():
    from rich.console import Console

    report = make_report()
    report.policies[2].name = "PPO [bold]β[/bold]"
    console = Console(file=io.StringIO(), width=160)
    console.print(summary_table(report))
    output = console.file.getvalue()
    assert "PPO [bold]β[/bold]" in output and "DPO" in output and "70.0% accuracy" in output


def test_degenerate_reports_still_render(tmp_path):
    empty = write_report(Report(title="nothing yet", seed=0), tmp_path / "empty")
    assert empty.plots == {} and "nothing yet" in empty.markdown.read_text(encoding="utf-8")
    assert load_report(empty.json) == Report(title="nothing yet", seed=0)

    diverged = make_report(title="cost $5 and $6")  # a "$" must not start matplotlib mathtext
    diverged.curves[1] = make_curve("PPO β=0.0", 0.0, golds=[math.nan] * 3, proxies=[math.nan] * 3)
    diverged.best_of_n = []
    diverged.policies = [PolicyEval("SFT", math.nan, math.nan, None, 0.0, None, 10)]
    paths = write_report(diverged, tmp_path / "diverged")
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths.plots.values())
    assert "# cost \\$5 and \\$6" in paths.markdown.read_text(encoding="utf-8")  # not math either
    text = " ".join(summary(assess(diverged)))
    assert "PPO β=0.0: no point with finite KL, proxy and gold, so it is not judged." in text
    assert "PPO β=0.0 over-optimises" in text and "could not be judged" in text
