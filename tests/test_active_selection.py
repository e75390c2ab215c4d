"""Active selection (rlhf.eval.active) picks the items it should on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.eval.active import pair_uncertainty, select, sequence_divergence


def entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_one_model_picks_the_pair_it_can_least_tell_apart():
    # responses scored 0, 3, 0.2: the pair (0, 2) is the closest, P = σ(−0.2)
    best = pair_uncertainty(torch.tensor([[0.0, 3.0, 0.2]]))
    assert (best.first, best.second) == (0, 2)
    assert best.score == pytest.approx(entropy(sigmoid(-0.2)))


def test_an_ensemble_scores_disagreement_not_closeness():
    # members agree that 0 and 1 are close (both 50/50): no information in labelling them;
    # they disagree sharply about 0 against 2: that label tells them apart
    scores = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, -4.0]])
    best = pair_uncertainty(scores)
    assert (best.first, best.second) == (0, 2)
    p = [sigmoid(-4.0), sigmoid(4.0)]
    expected = entropy(0.5) - (entropy(p[0]) + entropy(p[1])) / 2  # BALD by hand
    assert best.score == pytest.approx(expected)
    # members that agree give (near) zero mutual information whatever the pair
    assert pair_uncertainty(torch.tensor([[0.0, 1.0], [0.0, 1.0]])).score == pytest.approx(0.0)


def test_divergence_is_the_mean_sequence_log_ratio():
    logps = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-2.0, -2.5, -9.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: 1 + 0.5 (the padded token ignored), row 1: 0.5 · 3 → mean 1.5
    assert sequence_divergence(logps, ref, mask) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="same"):
        sequence_divergence(logps, ref[:, :2], mask)


def test_select_takes_the_highest_scores_and_breaks_ties_by_seed():
    scores = [0.1, 0.9, 0.5, 0.9, 0.0]
    chosen = select(scores, 3, "uncertainty")
    assert set(chosen[:2]) == {1, 3} and chosen[2] == 2
    tie_orders = {tuple(select(scores, 2, "divergence", seed=s)) for s in range(20)}
    assert tie_orders == {(1, 3), (3, 1)}  # equal scores: neither always first
    assert select(scores, 10, "uncertainty") == select(scores, 5, "uncertainty")  # all of them
    picked = select(scores, 3, "random", seed=4)
    assert len(set(picked)) == 3 and picked == select([0.0] * 5, 3, "random", seed=4)
    assert select(scores, 0, "random") == []
    with pytest.raises(ValueError, match="unknown selection strategy"):
        select(scores, 1, "loudest")
    with pytest.raises(ValueError, match="finite"):
        select([float("nan")], 1, "uncertainty")
    with pytest.raises(ValueError, match="budget"):
        select(scores, -1, "random")
    with pytest.raises(ValueError, match="responses ≥ 2"):
        pair_uncertainty(torch.tensor([[1.0]]))
