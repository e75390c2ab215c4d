"""The offline-vs-online claims of a report (rlhf.eval.findings) on hand-made curves: gold at
matched KL against hand interpolation, and each claim's verdict both ways."""

from __future__ import annotations

import math

import pytest

from rlhf.eval import (
    CurvePoint,
    HeadToHead,
    OptimisationCurve,
    Report,
    assess,
    gold_at_kl,
    load_report,
    matched_kl,
    write_report,
)

IMPLICIT = "implicit reward margin (held-out labels)"


def curve(label, kls, golds, *, online=False, se=0.01, proxies=None):
    points = [
        CurvePoint(step=10 * i, kl=kl, proxy=(proxies or [0.0] * len(kls))[i], gold=g, gold_se=se)
        for i, (kl, g) in enumerate(zip(kls, golds, strict=True))
    ]
    return OptimisationCurve(
        label, 0.1, points, proxy_name="reward model" if online else IMPLICIT, online=online
    )


def claims(report: Report) -> dict[str, bool | None]:
    return {e.claim: e.met for e in assess(report).expectations}


def test_gold_at_kl_interpolates_at_the_first_crossing():
    c = curve("DPO", [0.0, 2.0, 6.0, 3.0, 8.0], [0.5, 0.7, 0.9, 0.4, 0.2], se=None)
    # KL 4 is first reached between steps 10 (KL 2, gold 0.7) and 20 (KL 6, gold 0.9): halfway
    at = gold_at_kl(c, 4.0)
    assert at.gold == pytest.approx(0.8) and at.step == pytest.approx(15.0) and at.se is None
    assert gold_at_kl(c, 0.0).gold == 0.5  # the start itself
    assert gold_at_kl(c, 8.0).gold == 0.2
    assert gold_at_kl(c, 9.0) is None  # never reached
    with_se = curve("x", [0.0, 4.0], [0.0, 1.0], se=0.02)
    assert gold_at_kl(with_se, 1.0).se == pytest.approx(0.02)
    assert matched_kl([c, with_se]) == 4.0  # the largest KL both reach
    flat = curve("y", [math.nan], [0.1])
    assert matched_kl([c, flat]) is None


def test_rise_then_fall_is_over_optimisation_and_a_steady_rise_is_not():
    risen = curve("DPO", [0, 2, 4, 8, 12], [0.50, 0.70, 0.80, 0.60, 0.40], proxies=[0, 1, 2, 3, 4])
    verdicts = claims(Report("t", 0, preference_curves=[risen]))
    claim = "DPO over-optimises along training: gold first rises, then falls"
    assert verdicts == {claim: True}
    rising = curve("DPO", [0, 2, 4, 8], [0.50, 0.60, 0.70, 0.80])
    assert claims(Report("t", 0, preference_curves=[rising]))[claim] is False
    # a fall within noise (z = 2 standard errors of the difference) does not count
    noisy = curve("DPO", [0, 2, 4], [0.50, 0.80, 0.77], se=0.02)
    assert claims(Report("t", 0, preference_curves=[noisy]))[claim] is False


def test_losses_alike_at_matched_kl_unless_a_gap_beats_the_noise():
    dpo = curve("DPO", [0, 2, 4, 8], [0.5, 0.6, 0.7, 0.6])
    ipo = curve("IPO", [0, 1, 3, 4], [0.5, 0.55, 0.65, 0.69])  # reaches KL 4 last: matched KL 4
    slic = curve("SLiC (hinge)", [0, 4, 6], [0.5, 0.71, 0.5])
    report = Report("t", 0, preference_curves=[dpo, ipo, slic])
    claim = "the offline losses (DPO, IPO, SLiC (hinge)) reach the same gold at matched KL"
    assert claims(report)[claim] is True  # 0.70, 0.69, 0.71: within 2·√2·0.01 of each other
    expectation = next(e for e in assess(report).expectations if e.claim == claim)
    assert "KL 4.00 nats" in expectation.detail and "largest difference 0.020" in expectation.detail
    apart = curve("IPO", [0, 4], [0.5, 0.9])
    assert (
        claims(Report("t", 0, preference_curves=[dpo, apart]))[
            "the offline losses (DPO, IPO) reach the same gold at matched KL"
        ]
        is False
    )


def test_online_ahead_of_offline_at_matched_kl():
    offline = curve("DPO", [0, 5, 10], [0.5, 0.6, 0.55])
    ahead = curve("online DPO", [0, 2, 4], [0.5, 0.7, 0.8], online=True)
    # matched KL 4: offline DPO's gold 0.5 + 0.8·0.1 = 0.58 there, online's 0.8
    report = Report("t", 0, preference_curves=[offline, ahead])
    claim = "online DPO reaches more gold than DPO at matched KL"
    assert claims(report)[claim] is True
    detail = next(e.detail for e in assess(report).expectations if e.claim == claim)
    assert "DPO 0.580" in detail and "difference +0.220" in detail
    behind = curve("online DPO", [0, 4], [0.5, 0.55], online=True)
    assert claims(Report("t", 0, preference_curves=[offline, behind]))[claim] is False
    # a run that never left the reference: matched KL 0, nothing to compare
    standing = curve("online DPO", [0, 0], [0.5, 0.5], online=True)
    assert claims(Report("t", 0, preference_curves=[offline, standing]))[claim] is None


def test_head_to_head_claims_against_every_opponent_but_the_baseline():
    report = Report(
        "t",
        0,
        head_to_head=[
            HeadToHead("Nash-MD", "SFT", 0.6, 0.01, 256),
            HeadToHead("Nash-MD", "PPO β=0.05", 0.58, 0.02, 256),
            HeadToHead("SPPO", "PPO β=0.05", 0.52, 0.02, 256),
        ],
    )
    assert claims(report) == {
        "Nash-MD is preferred to PPO β=0.05 under the gold preference": True,
        "SPPO is preferred to PPO β=0.05 under the gold preference": False,  # within 2 s.e.
    }


def test_report_with_preference_curves_renders_and_reads_back(tmp_path):
    report = Report(
        "claims",
        0,
        preference_curves=[
            curve("DPO", [0, 2, 4, 8], [0.5, 0.7, 0.6, 0.4], proxies=[0, 1, 2, 3]),
            curve("online DPO", [0, 3, 6], [0.5, 0.7, 0.8], online=True, se=None),
        ],
        head_to_head=[HeadToHead("SPPO", "PPO β=0.05", 0.55, 0.01, 128)],
    )
    paths = write_report(report, tmp_path)
    assert paths.plots["preference_curves"].read_bytes()[:4] == b"\x89PNG"
    markdown = paths.markdown.read_text()
    for text in ("Offline and online preference optimisation", "Head to head", "✓ SPPO"):
        assert text in markdown
    again = load_report(tmp_path)
    assert again.preference_curves == report.preference_curves
    assert again.head_to_head == report.head_to_head
