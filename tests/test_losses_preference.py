"""Preference losses (DPO family, KTO) against numbers worked out by hand with math.log/exp."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses.preference import (
    CONVEX_FUNCTIONS,
    PREFERENCE_LOSSES,
    LossSpec,
    PairLogps,
    UnpairedLogps,
    apo_zero_loss,
    dpo_loss,
    general_preference_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)

METRIC_KEYS = {
    "pairs",
    "correct_pairs",
    "chosen_reward_sum",
    "rejected_reward_sum",
    "margin_sum",
    "chosen_logps_sum",
    "rejected_logps_sum",
}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def minus_log_sigmoid(x: float) -> float:
    return math.log(1 + math.exp(-x))


def make_pairs(requires_grad: bool = False) -> PairLogps:
    """Three pairs. Log-ratios, by hand:

    chosen   (log π − log π_ref): −5 − (−5.5) = 0.5,  −8 − (−7) = −1,   −3 − (−4) = 1
    rejected (log π − log π_ref): −6 − (−5)   = −1,   −7 − (−7.5) = 0.5, −9 − (−8) = −1
    ρ = chosen − rejected:        1.5,                −1.5,              2
    """
    return PairLogps(
        chosen_logps=torch.tensor([-5.0, -8.0, -3.0], requires_grad=requires_grad),
        rejected_logps=torch.tensor([-6.0, -7.0, -9.0], requires_grad=requires_grad),
        chosen_tokens=torch.tensor([2, 4, 3]),
        rejected_tokens=torch.tensor([3, 2, 6]),
        ref_chosen_logps=torch.tensor([-5.5, -7.0, -4.0]),
        ref_rejected_logps=torch.tensor([-5.0, -7.5, -8.0]),
    )


CHOSEN_RATIOS = [0.5, -1.0, 1.0]
REJECTED_RATIOS = [-1.0, 0.5, -1.0]
RHOS = [1.5, -1.5, 2.0]


def zero_pairs(count: int = 4) -> PairLogps:
    """Policy equal to the reference: ρ = 0 for every pair."""
    logps = torch.tensor([-3.0, -7.0, -1.0, -12.0][:count])
    return PairLogps(
        chosen_logps=logps,
        rejected_logps=logps - 2,
        chosen_tokens=torch.full((count,), 3),
        rejected_tokens=torch.full((count,), 5),
        ref_chosen_logps=logps.clone(),
        ref_rejected_logps=logps - 2,
    )


def call(name: str, logps: PairLogps, **kwargs) -> tuple[torch.Tensor, dict[str, float]]:
    spec = PREFERENCE_LOSSES[name]
    if name == "general":
        return spec.fn(logps, CONVEX_FUNCTIONS["logistic"], **kwargs)
    return spec.fn(logps, **kwargs)


# --------------------------------------------------------------------------------------------
# DPO, cDPO, rDPO


def test_dpo_costs_ln2_per_pair_at_zero_log_ratio():
    loss, metrics = dpo_loss(zero_pairs(4), beta=0.1)
    assert loss.item() == pytest.approx(4 * math.log(2), rel=1e-6)
    assert set(metrics) == METRIC_KEYS
    assert metrics["pairs"] == 4.0
    assert metrics["correct_pairs"] == 2.0  # four ties, ½ each
    assert metrics["margin_sum"] == 0.0


def test_dpo_hand_values_and_metrics():
    loss, metrics = dpo_loss(make_pairs(), beta=0.5)
    # −log σ(βρ) with βρ = 0.75, −0.75, 1
    expected = minus_log_sigmoid(0.75) + minus_log_sigmoid(-0.75) + minus_log_sigmoid(1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # implicit rewards β·log-ratio: chosen 0.25, −0.5, 0.5; rejected −0.5, 0.25, −0.5
    assert metrics == pytest.approx(
        {
            "pairs": 3.0,
            "correct_pairs": 2.0,  # pair 2 has the rejected completion ahead
            "chosen_reward_sum": 0.25,
            "rejected_reward_sum": -0.75,
            "margin_sum": 1.0,
            "chosen_logps_sum": -16.0,
            "rejected_logps_sum": -22.0,
        }
    )


def test_dpo_gradient_is_beta_sigmoid_of_minus_beta_rho():
    pairs = make_pairs(requires_grad=True)
    loss, _ = dpo_loss(pairs, beta=0.5)
    loss.backward()
    # d/dlogπ_w of −log σ(βρ) = −β σ(−βρ); the rejected side gets the opposite sign
    expected = [-0.5 * sigmoid(-0.5 * rho) for rho in RHOS]
    torch.testing.assert_close(pairs.chosen_logps.grad, torch.tensor(expected))
    torch.testing.assert_close(pairs.rejected_logps.grad, -torch.tensor(expected))


def test_conservative_dpo_hand_values_and_zero_smoothing_is_dpo():
    loss, _ = dpo_loss(make_pairs(), beta=0.5, label_smoothing=0.2)
    expected = sum(
        0.8 * minus_log_sigmoid(0.5 * rho) + 0.2 * minus_log_sigmoid(-0.5 * rho) for rho in RHOS
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain, _ = dpo_loss(make_pairs(), beta=0.5)
    zero, _ = dpo_loss(make_pairs(), beta=0.5, label_smoothing=0.0)
    assert zero.item() == plain.item()
    # at ρ = 0 both labels are equally likely: still ln 2
    at_zero, _ = dpo_loss(zero_pairs(2), label_smoothing=0.3)
    assert at_zero.item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_robust_dpo_hand_values():
    loss, _ = robust_dpo_loss(make_pairs(), beta=0.5, label_smoothing=0.2)
    # [(1 − ε)ℓ(βρ) − εℓ(−βρ)] / (1 − 2ε), ℓ(z) = −log σ(z)
    expected = sum(
        (0.8 * minus_log_sigmoid(0.5 * rho) - 0.2 * minus_log_sigmoid(-0.5 * rho)) / 0.6
        for rho in RHOS
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_robust_dpo_reduces_to_dpo_and_costs_ln2_at_zero():
    plain, plain_metrics = dpo_loss(make_pairs(), beta=0.5)
    robust, robust_metrics = robust_dpo_loss(make_pairs(), beta=0.5, label_smoothing=0.0)
    assert robust.item() == pytest.approx(plain.item(), rel=1e-7)
    assert robust_metrics == plain_metrics
    at_zero, _ = robust_dpo_loss(zero_pairs(3), label_smoothing=0.25)
    assert at_zero.item() == pytest.approx(3 * math.log(2), rel=1e-6)


def test_robust_dpo_can_be_negative_where_the_label_looks_flipped():
    # a confidently right pair gains from the −εℓ(−βρ) term: (0.6·ℓ(10) − 0.4·ℓ(−10)) / 0.2 < 0
    pairs = PairLogps(
        chosen_logps=torch.tensor([0.0]),
        rejected_logps=torch.tensor([-100.0]),
        chosen_tokens=torch.tensor([1]),
        rejected_tokens=torch.tensor([1]),
        ref_chosen_logps=torch.tensor([0.0]),
        ref_rejected_logps=torch.tensor([0.0]),
    )
    loss, _ = robust_dpo_loss(pairs, beta=0.1, label_smoothing=0.4)
    expected = (0.6 * minus_log_sigmoid(10.0) - 0.4 * minus_log_sigmoid(-10.0)) / 0.2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() < 0


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_robust_dpo_rejects_flip_rate_of_half_or_more(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_dpo_loss(make_pairs(), label_smoothing=eps)


def test_dpo_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(make_pairs(), label_smoothing=0.6)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(make_pairs(), beta=0.0)


# --------------------------------------------------------------------------------------------
# IPO, hinge, GPO, RPO, APO-zero


def test_ipo_uses_length_normalised_log_ratios():
    loss, metrics = ipo_loss(make_pairs(), beta=0.5)
    # per-token log-ratios, chosen: 0.5/2, −1/4, 1/3; rejected: −1/3, 0.5/2, −1/6
    # ρ̄ = 0.25 + 1/3 = 7/12, −0.25 − 0.25 = −0.5, 1/3 + 1/6 = 0.5; target 1/(2β) = 1
    expected = (7 / 12 - 1) ** 2 + (-0.5 - 1) ** 2 + (0.5 - 1) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the reported rewards are the whole-sequence β·log-ratios, as for DPO
    assert metrics["chosen_reward_sum"] == pytest.approx(0.25)
    assert metrics["margin_sum"] == pytest.approx(1.0)


def test_ipo_at_zero_costs_one_over_four_beta_squared():
    loss, _ = ipo_loss(zero_pairs(2), beta=0.25)
    assert loss.item() == pytest.approx(2 * (1 / (2 * 0.25)) ** 2)


def test_hinge_hand_values():
    loss, metrics = hinge_loss(make_pairs(), beta=0.5)
    # max(0, 1 − βρ) with βρ = 0.75, −0.75, 1: 0.25 + 1.75 + 0
    assert loss.item() == pytest.approx(2.0, rel=1e-6)
    assert metrics["correct_pairs"] == 2.0
    at_zero, _ = hinge_loss(zero_pairs(3))
    assert at_zero.item() == pytest.approx(3.0)


def test_general_with_logistic_is_dpo_and_with_hinge_is_hinge():
    dpo, dpo_metrics = dpo_loss(make_pairs(), beta=0.5)
    logistic, logistic_metrics = general_preference_loss(
        make_pairs(), CONVEX_FUNCTIONS["logistic"], beta=0.5
    )
    assert logistic.item() == pytest.approx(dpo.item(), rel=1e-7)
    assert logistic_metrics == dpo_metrics
    hinge, _ = hinge_loss(make_pairs(), beta=0.5)
    by_name, _ = general_preference_loss(make_pairs(), "hinge", beta=0.5)
    assert by_name.item() == pytest.approx(hinge.item(), rel=1e-7)


def test_general_convex_functions_hand_values():
    # βρ = 0.75, −0.75, 1 (β = 0.5)
    xs = [0.75, -0.75, 1.0]
    expected = {
        "logistic": sum(math.log(1 + math.exp(-x)) for x in xs),
        "hinge": sum(max(0.0, 1 - x) for x in xs),
        "squared": sum((x - 1) ** 2 for x in xs),
        "exponential": sum(math.exp(-x) for x in xs),
        "truncated_squared": sum(max(0.0, 1 - x) ** 2 for x in xs),
        "savage": sum(1 / (1 + math.exp(x)) ** 2 for x in xs),
    }
    assert set(CONVEX_FUNCTIONS) == set(expected)
    for name, value in expected.items():
        loss, _ = general_preference_loss(make_pairs(), name, beta=0.5)
        assert loss.item() == pytest.approx(value, rel=1e-6), name


def test_general_squared_is_ipo_shaped_without_length_normalisation():
    # (βρ − 1)² = β² (ρ − 1/β)²: IPO's (ρ − 1/(2τ))² with τ = β/2, scaled by β²
    pairs = make_pairs()
    squared, _ = general_preference_loss(pairs, "squared", beta=0.5)
    expected = sum(0.25 * (rho - 2) ** 2 for rho in RHOS)
    assert squared.item() == pytest.approx(expected, rel=1e-6)


def test_general_rejects_bad_f():
    with pytest.raises(ValueError, match="f must be one of"):
        general_preference_loss(make_pairs(), "cubic")
    with pytest.raises(ValueError, match="f must map"):
        general_preference_loss(make_pairs(), lambda x: x.sum())


def test_rpo_is_dpo_plus_alpha_times_mean_token_nll_of_chosen():
    loss, metrics = rpo_loss(make_pairs(), beta=0.5, alpha=0.5)
    dpo = minus_log_sigmoid(0.75) + minus_log_sigmoid(-0.75) + minus_log_sigmoid(1.0)
    nll = 5.0 / 2 + 8.0 / 4 + 3.0 / 3  # −log π(y_w) / |y_w|
    assert loss.item() == pytest.approx(dpo + 0.5 * nll, rel=1e-6)
    assert metrics == dpo_loss(make_pairs(), beta=0.5)[1]


def test_apo_zero_hand_values():
    loss, _ = apo_zero_loss(make_pairs(), beta=0.5)
    # (1 − σ(β r_w)) + σ(β r_l), β r_w = 0.25, −0.5, 0.5 and β r_l = −0.5, 0.25, −0.5
    expected = sum(
        (1 - sigmoid(0.5 * w)) + sigmoid(0.5 * r)
        for w, r in zip(CHOSEN_RATIOS, REJECTED_RATIOS, strict=True)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    at_zero, _ = apo_zero_loss(zero_pairs(2))
    assert at_zero.item() == pytest.approx(2.0)


def test_apo_zero_pushes_chosen_up_and_rejected_down_separately():
    pairs = make_pairs(requires_grad=True)
    apo_zero_loss(pairs, beta=0.5)[0].backward()
    assert (pairs.chosen_logps.grad < 0).all()  # descent raises every chosen log-prob
    assert (pairs.rejected_logps.grad > 0).all()  # and lowers every rejected one


# --------------------------------------------------------------------------------------------
# reference-free: SimPO, ORPO


def reference_free(pairs: PairLogps) -> PairLogps:
    return PairLogps(
        pairs.chosen_logps, pairs.rejected_logps, pairs.chosen_tokens, pairs.rejected_tokens
    )


def test_simpo_hand_values_without_reference():
    loss, metrics = simpo_loss(reference_free(make_pairs()), beta=2.0, gamma=0.5)
    # r = β/|y| · log π: chosen 2·(−5/2) = −5, 2·(−8/4) = −4, 2·(−3/3) = −2
    #                    rejected 2·(−6/3) = −4, 2·(−7/2) = −7, 2·(−9/6) = −3
    # r_w − r_l − γ = −1.5, 2.5, 0.5
    expected = minus_log_sigmoid(-1.5) + minus_log_sigmoid(2.5) + minus_log_sigmoid(0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["chosen_reward_sum"] == pytest.approx(-11.0)
    assert metrics["rejected_reward_sum"] == pytest.approx(-14.0)
    assert metrics["margin_sum"] == pytest.approx(3.0)
    assert metrics["correct_pairs"] == 2.0
    # reference log-probs, when given, change nothing
    with_ref, _ = simpo_loss(make_pairs(), beta=2.0, gamma=0.5)
    assert with_ref.item() == loss.item()


def test_simpo_gamma_is_an_absolute_margin():
    # equal length-normalised rewards: the loss is −log σ(−γ), whatever β is
    pairs = PairLogps(
        chosen_logps=torch.tensor([-4.0]),
        rejected_logps=torch.tensor([-8.0]),
        chosen_tokens=torch.tensor([2]),
        rejected_tokens=torch.tensor([4]),
    )
    for beta in (1.0, 2.5):
        loss, _ = simpo_loss(pairs, beta=beta, gamma=0.8)
        assert loss.item() == pytest.approx(minus_log_sigmoid(-0.8), rel=1e-6)


def log_odds(m: float) -> float:
    return m - math.log(1 - math.exp(m))


def test_orpo_hand_values():
    loss, metrics = orpo_loss(reference_free(make_pairs()), beta=0.1)
    # mean token log-probs: chosen −2.5, −2, −1; rejected −2, −3.5, −1.5
    m_w, m_l = [-2.5, -2.0, -1.0], [-2.0, -3.5, -1.5]
    expected = sum(
        -w + 0.1 * minus_log_sigmoid(log_odds(w) - log_odds(r))
        for w, r in zip(m_w, m_l, strict=True)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # rewards are the log odds
    assert metrics["chosen_reward_sum"] == pytest.approx(sum(map(log_odds, m_w)), rel=1e-6)
    assert metrics["margin_sum"] == pytest.approx(
        sum(log_odds(w) - log_odds(r) for w, r in zip(m_w, m_l, strict=True)), rel=1e-6
    )
    assert metrics["correct_pairs"] == 2.0


def test_orpo_log_odds_are_exact_near_certainty():
    # m = −1e-4: log(1 − e^m) ≈ log(1e-4), which log1p(−exp(m)) gets only to ~3 digits in float32
    pairs = PairLogps(
        chosen_logps=torch.tensor([-2e-4]),
        rejected_logps=torch.tensor([-2.0]),
        chosen_tokens=torch.tensor([2]),
        rejected_tokens=torch.tensor([1]),
    )
    _, metrics = orpo_loss(pairs)
    assert metrics["chosen_reward_sum"] == pytest.approx(log_odds(-1e-4), rel=1e-5)
    # a fully certain completion (log π = 0) has large but finite odds and a finite gradient
    pairs.chosen_logps = torch.tensor([0.0], requires_grad=True)
    loss, metrics = orpo_loss(pairs)
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(metrics["chosen_reward_sum"])
    assert torch.isfinite(pairs.chosen_logps.grad).all()


# --------------------------------------------------------------------------------------------
# shared behaviour


def test_registry_names_and_reference_flags():
    assert set(PREFERENCE_LOSSES) == {
        "dpo",
        "robust",
        "ipo",
        "hinge",
        "general",
        "simpo",
        "orpo",
        "rpo",
        "apo_zero",
    }
    assert all(isinstance(spec, LossSpec) for spec in PREFERENCE_LOSSES.values())
    assert {n for n, s in PREFERENCE_LOSSES.items() if not s.needs_reference} == {"simpo", "orpo"}
    assert PREFERENCE_LOSSES["dpo"].fn is dpo_loss
    assert PREFERENCE_LOSSES["robust"].fn is robust_dpo_loss


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_every_loss_runs_with_its_hyperparameters_and_reports_same_metrics(name):
    spec = PREFERENCE_LOSSES[name]
    defaults = {"beta": 0.2, "label_smoothing": 0.1, "gamma": 0.3, "alpha": 0.5}
    kwargs = {key: defaults[key] for key in spec.hyperparameters}
    pairs = make_pairs() if spec.needs_reference else reference_free(make_pairs())
    loss, metrics = call(name, pairs, **kwargs)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert set(metrics) == METRIC_KEYS
    assert all(isinstance(value, float) for value in metrics.values())


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_sums_add_over_micro_batches(name):
    full_loss, full_metrics = call(name, make_pairs())
    parts = [
        PairLogps(*(getattr(make_pairs(), field)[rows] for field in FIELDS))
        for rows in (slice(0, 1), slice(1, 3))
    ]
    outputs = [call(name, part) for part in parts]
    assert sum(loss.item() for loss, _ in outputs) == pytest.approx(full_loss.item(), rel=1e-6)
    for key, value in full_metrics.items():
        assert sum(metrics[key] for _, metrics in outputs) == pytest.approx(value, abs=1e-6), key


FIELDS = (
    "chosen_logps",
    "rejected_logps",
    "chosen_tokens",
    "rejected_tokens",
    "ref_chosen_logps",
    "ref_rejected_logps",
)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_finite_for_extreme_inputs(name, sign):
    big = 1e4 * sign
    pairs = PairLogps(
        chosen_logps=torch.tensor([big, -big, 0.0, -1e4], requires_grad=True),
        rejected_logps=torch.tensor([-big, big, -1e4, 0.0], requires_grad=True),
        chosen_tokens=torch.tensor([1, 7, 1, 3]),
        rejected_tokens=torch.tensor([5, 1, 2, 0]),  # a zero count is read as 1
        ref_chosen_logps=torch.tensor([-big, big, -1e4, 0.0]),
        ref_rejected_logps=torch.tensor([big, -big, 0.0, -1e4]),
    )
    loss, metrics = call(name, pairs)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(math.isfinite(value) for value in metrics.values())
    assert torch.isfinite(pairs.chosen_logps.grad).all()
    assert torch.isfinite(pairs.rejected_logps.grad).all()


@pytest.mark.parametrize("name", ["logistic", "hinge", "squared", "truncated_squared", "savage"])
def test_bounded_convex_functions_have_finite_gradients_at_extremes(name):
    pairs = make_pairs()
    pairs.chosen_logps = (1e3 * pairs.chosen_logps).requires_grad_()
    loss, _ = general_preference_loss(pairs, name, beta=1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(pairs.chosen_logps.grad).all()


def test_half_precision_inputs_are_computed_in_float32():
    # float16 log-probs (as a half-precision model gives them): the loss is float32 and exact
    pairs = PairLogps(
        chosen_logps=torch.tensor([-300.5], dtype=torch.float16, requires_grad=True),
        rejected_logps=torch.tensor([-300.0], dtype=torch.float16),
        chosen_tokens=torch.tensor([4]),
        rejected_tokens=torch.tensor([4]),
        ref_chosen_logps=torch.tensor([-301.0], dtype=torch.float16),
        ref_rejected_logps=torch.tensor([-300.0], dtype=torch.float16),
    )
    loss, _ = dpo_loss(pairs, beta=1.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(minus_log_sigmoid(0.5), rel=1e-6)
    loss.backward()  # the gradient flows back in the inputs' own dtype
    assert pairs.chosen_logps.grad.dtype == torch.float16


def test_long_and_float_token_counts_agree():
    pairs = make_pairs()
    floats = PairLogps(
        pairs.chosen_logps,
        pairs.rejected_logps,
        pairs.chosen_tokens.float(),
        pairs.rejected_tokens.float(),
        pairs.ref_chosen_logps,
        pairs.ref_rejected_logps,
    )
    for name in ("ipo", "simpo", "orpo", "rpo"):
        assert call(name, pairs)[0].item() == call(name, floats)[0].item()


# --------------------------------------------------------------------------------------------
# shape and input errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rejected_logps", torch.zeros(2)),
        ("chosen_tokens", torch.ones(4)),
        ("rejected_tokens", torch.ones(3, 1)),
        ("ref_chosen_logps", torch.zeros(2)),
        ("ref_rejected_logps", torch.zeros(3, 2)),
    ],
)
def test_shape_mismatch_names_the_field(field, value):
    pairs = make_pairs()
    setattr(pairs, field, value)
    with pytest.raises(ValueError, match=field):
        dpo_loss(pairs)


def test_non_1d_chosen_logps_is_rejected():
    pairs = make_pairs()
    pairs.chosen_logps = torch.zeros(3, 1)
    with pytest.raises(ValueError, match=r"chosen_logps must be a \[P\] tensor"):
        simpo_loss(pairs)


@pytest.mark.parametrize(
    "name", sorted(n for n, s in PREFERENCE_LOSSES.items() if s.needs_reference)
)
def test_reference_losses_require_reference_log_probs(name):
    pairs = make_pairs()
    pairs.ref_rejected_logps = None
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        call(name, pairs)


def test_wrong_input_type_is_rejected():
    with pytest.raises(ValueError, match="PairLogps"):
        dpo_loss(torch.zeros(3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# KTO


def make_unpaired(requires_grad: bool = False) -> UnpairedLogps:
    """Four examples. r = log π − log π_ref = 0.5, −1, 0.5, −1; thumbs up, down, up, down.

    Mismatched completions: log π(y') − log π_ref(y') = 0.5, 0.2, −0.1, 0.2, mean 0.2 = z_ref.
    """
    return UnpairedLogps(
        logps=torch.tensor([-3.0, -4.0, -2.0, -6.0], requires_grad=requires_grad),
        ref_logps=torch.tensor([-3.5, -3.0, -2.5, -5.0]),
        desirable=torch.tensor([True, False, True, False]),
        kl_logps=torch.tensor([-4.0, -5.0, -3.0, -2.0], requires_grad=requires_grad),
        ref_kl_logps=torch.tensor([-4.5, -5.2, -2.9, -2.2]),
    )


def test_kto_hand_values_and_metrics():
    loss, metrics = kto_loss(
        make_unpaired(), beta=0.5, desirable_weight=1.0, undesirable_weight=2.0
    )
    # desirable: λ_D (1 − σ(β(r − z))) = 1 − σ(0.5·0.3); undesirable: λ_U (1 − σ(β(z − r)))
    # = 2 (1 − σ(0.5·1.2)); two of each
    expected = 2 * (1 - sigmoid(0.15)) + 2 * 2 * (1 - sigmoid(0.6))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics == pytest.approx(
        {
            "examples": 4.0,
            "desirable": 2.0,
            "undesirable": 2.0,
            "desirable_reward_sum": 0.5,  # β·r: 0.25 + 0.25
            "undesirable_reward_sum": -1.0,  # −0.5 − 0.5
            "desirable_logps_sum": -5.0,
            "undesirable_logps_sum": -10.0,
            "kl_sum": 0.8,
            "z_ref": 0.8,  # z_ref · B
        },
        abs=1e-5,
    )


def test_kto_reference_point_is_clamped_at_zero():
    unpaired = make_unpaired()
    unpaired.ref_kl_logps = unpaired.kl_logps + 1.0  # estimated KL −1 < 0: z_ref = 0
    loss, metrics = kto_loss(unpaired, beta=0.5)
    expected = 2 * (1 - sigmoid(0.25)) + 2 * (1 - sigmoid(0.5))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["z_ref"] == 0.0
    assert metrics["kl_sum"] == pytest.approx(-4.0)


def test_kto_reference_point_is_detached():
    unpaired = make_unpaired(requires_grad=True)
    loss, _ = kto_loss(unpaired, beta=0.5)
    loss.backward()
    assert unpaired.kl_logps.grad is None  # no gradient reaches the mismatched completions
    # and the gradient on log π is that of a constant z_ref = 0.2:
    # desirable d/dr (1 − σ(β(r − z))) = −β σ(1 − σ) at β(r − z) = 0.15
    # undesirable d/dr (1 − σ(β(z − r))) = +β σ(1 − σ) at β(z − r) = 0.6
    d = -0.5 * sigmoid(0.15) * (1 - sigmoid(0.15))
    u = 0.5 * sigmoid(0.6) * (1 - sigmoid(0.6))
    torch.testing.assert_close(unpaired.logps.grad, torch.tensor([d, u, d, u]))


def test_kto_accepts_a_step_wide_kl_estimate():
    loss, metrics = kto_loss(make_unpaired(), beta=0.5, kl_estimate=1.0)
    expected = 2 * (1 - sigmoid(0.5 * (0.5 - 1.0))) + 2 * (1 - sigmoid(0.5 * (1.0 + 1.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["z_ref"] == pytest.approx(4.0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_kto_gradients_finite_for_extreme_inputs(sign):
    unpaired = UnpairedLogps(
        logps=torch.tensor([1e4 * sign, -1e4 * sign], requires_grad=True),
        ref_logps=torch.tensor([-1e4 * sign, 1e4 * sign]),
        desirable=torch.tensor([True, False]),
        kl_logps=torch.tensor([1e4 * sign, 0.0]),
        ref_kl_logps=torch.tensor([-1e4 * sign, 0.0]),
    )
    loss, metrics = kto_loss(unpaired)
    loss.backward()
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in metrics.values())
    assert torch.isfinite(unpaired.logps.grad).all()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ref_logps", torch.zeros(3)),
        ("desirable", torch.tensor([True, False])),
        ("kl_logps", torch.zeros(4, 1)),
        ("ref_kl_logps", torch.zeros(5)),
    ],
)
def test_kto_shape_mismatch_names_the_field(field, value):
    unpaired = make_unpaired()
    setattr(unpaired, field, value)
    with pytest.raises(ValueError, match=field):
        kto_loss(unpaired)


def test_kto_with_only_one_kind_of_label():
    unpaired = make_unpaired()
    unpaired.desirable = torch.ones(4, dtype=torch.bool)
    loss, metrics = kto_loss(unpaired, beta=0.5)
    # r − z = 0.3, −1.2, 0.3, −1.2 (z = 0.2)
    expected = 2 * (1 - sigmoid(0.15)) + 2 * (1 - sigmoid(-0.6))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["undesirable"] == 0.0 and metrics["undesirable_reward_sum"] == 0.0
