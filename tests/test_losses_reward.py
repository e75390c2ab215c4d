"""Bradley–Terry loss and reward-model metrics against hand-derived numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses.reward import (
    bradley_terry_loss,
    expected_calibration_error,
    preference_metrics,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_equal_rewards_cost_ln2_per_pair():
    rewards = torch.zeros(5)
    loss, metrics = bradley_terry_loss(rewards, rewards)
    assert loss.item() == pytest.approx(5 * math.log(2))
    assert metrics == {"pairs": 5.0, "correct_pairs": 2.5, "margin_sum": 0.0}


def test_hand_computed_loss_and_metrics():
    chosen = torch.tensor([2.0, 0.0, 1.0])
    rejected = torch.tensor([0.0, 1.0, 1.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    # −log σ(Δ) = softplus(−Δ) with Δ = 2, −1, 0
    expected = softplus(-2.0) + softplus(1.0) + math.log(2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["correct_pairs"] == 1.5  # one win, one loss, one tie
    assert metrics["margin_sum"] == pytest.approx(1.0)


def test_margin_is_subtracted_as_in_llama2():
    chosen, rejected = torch.tensor([3.0, 0.5]), torch.tensor([1.0, 0.0])
    margin = torch.tensor([1.5, 0.0])
    loss, _ = bradley_terry_loss(chosen, rejected, margin)
    expected = -math.log(1 / (1 + math.exp(-(2.0 - 1.5)))) - math.log(1 / (1 + math.exp(-0.5)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # a zero margin is the plain loss
    plain, _ = bradley_terry_loss(chosen, rejected)
    zero, _ = bradley_terry_loss(chosen, rejected, torch.zeros(2))
    assert zero.item() == pytest.approx(plain.item())


def test_gradient_is_minus_sigmoid_of_minus_difference():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.1, 2.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, rejected)
    loss.backward()
    expected = -torch.sigmoid(-(chosen.detach() - rejected.detach()))
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)


def test_sum_adds_over_splits_of_the_pairs():
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(10, generator=generator), torch.randn(10, generator=generator)
    whole, whole_metrics = bradley_terry_loss(chosen, rejected)
    first, first_metrics = bradley_terry_loss(chosen[:3], rejected[:3])
    rest, rest_metrics = bradley_terry_loss(chosen[3:], rejected[3:])
    assert (first + rest).item() == pytest.approx(whole.item(), rel=1e-6)
    for key, value in whole_metrics.items():
        assert first_metrics[key] + rest_metrics[key] == pytest.approx(value, rel=1e-6)


def test_extreme_differences_stay_finite():
    loss, _ = bradley_terry_loss(torch.tensor([-1e4, 1e4]), torch.tensor([1e4, -1e4]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(2e4)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must both be"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


def test_ece_hand_computed():
    # bin (0.7, 0.8]: probabilities 0.75, 0.75, labels 1, 0 → |0.5 − 0.75| weighted 2/4
    # bin (0.1, 0.2]: probabilities 0.2, 0.2, labels 0, 0 → |0 − 0.2| weighted 2/4
    probabilities = torch.tensor([0.75, 0.75, 0.2, 0.2])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(
        0.5 * 0.25 + 0.5 * 0.2
    )


def test_ece_is_zero_when_calibrated():
    probabilities = torch.full((8,), 0.25)
    labels = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    assert expected_calibration_error(torch.tensor([]), torch.tensor([])) == 0.0


def test_preference_metrics():
    chosen = torch.tensor([2.0, 1.0, 0.0, 5.0])
    rejected = torch.tensor([0.0, 2.0, 0.0, -5.0])
    metrics = preference_metrics(chosen, rejected)
    assert metrics["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert metrics["margin"] == pytest.approx((2 - 1 + 0 + 10) / 4)
    differences = chosen - rejected
    assert metrics["loss"] == pytest.approx(
        float(torch.nn.functional.softplus(-differences).mean())
    )
    # both orders counted: the ECE of a model that is never sure is 0
    assert preference_metrics(torch.zeros(6), torch.zeros(6))["ece"] == pytest.approx(0.0)
    # sure and always right: each bin's accuracy matches its confidence closely
    sure = preference_metrics(torch.full((4,), 20.0), torch.zeros(4))
    assert sure["ece"] == pytest.approx(0.0, abs=1e-6) and sure["accuracy"] == 1.0
    # sure and always wrong: maximally miscalibrated
    wrong = preference_metrics(torch.zeros(4), torch.full((4,), 20.0))
    assert wrong["ece"] == pytest.approx(1.0, abs=1e-6)
