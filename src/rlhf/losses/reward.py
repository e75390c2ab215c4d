"""Reward-model losses and metrics: Bradley–Terry on pairs of scalar rewards.

The Bradley–Terry model (Bradley & Terry, 1952) says a response ``w`` is preferred to ``l``
with probability ``σ(r_w − r_l)``. Fitting a reward model ``r`` to human comparisons by
maximum likelihood gives InstructGPT's loss (Ouyang et al., 2022, eq. 1)::

    loss(θ) = −1 / C(K, 2) · E_(x, y_w, y_l) [ log σ(r_θ(x, y_w) − r_θ(x, y_l)) ]

where each ranking of K responses contributes its C(K, 2) pairs, all in one batch. Llama 2
(Touvron et al., 2023, eq. 2) subtracts a margin ``m(r)`` that grows with how strongly the
annotator preferred ``y_w``: ``−log σ(r_w − r_l − m)``.

Every function here is pure torch. P is the number of pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed Bradley–Terry negative log-likelihood of the pairs.

    Args:
        chosen_rewards: [P] reward of the preferred response of each pair, ``r_w``.
        rejected_rewards: [P] reward of the other response, ``r_l``.
        margin: [P] optional margin ``m`` (Llama 2): the loss becomes ``−log σ(r_w − r_l − m)``,
            asking the chosen response to win by at least about ``m``. None means 0.

    Returns:
        ``(loss_sum, metrics)``: the *sum* over the P pairs of ``−log σ(r_w − r_l − m)``
        (computed as ``softplus(−(r_w − r_l − m))``, stable for any difference). The caller
        divides by the number of pairs in the whole optimiser step, which is InstructGPT's
        1 / C(K, 2) per ranking once rankings are batched whole. At ``r_w = r_l`` and no
        margin each pair costs ln 2. ``metrics`` are sums too, so they add over
        micro-batches: ``pairs``, ``correct_pairs`` (r_w > r_l, a tie counting ½) and
        ``margin_sum`` (Σ r_w − r_l).
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.ndim != 1:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must both be [P]"
        )
    difference = chosen_rewards.float() - rejected_rewards.float()  # [P], r_w − r_l
    logits = difference if margin is None else difference - margin.float()
    loss_sum = F.softplus(-logits).sum()  # −log σ(x) = softplus(−x)
    with torch.no_grad():
        metrics = {
            "pairs": float(difference.numel()),
            "correct_pairs": float(wins(difference).sum()),
            "margin_sum": float(difference.sum()),
        }
    return loss_sum, metrics


def wins(difference: torch.Tensor) -> torch.Tensor:
    """1 where the chosen response scores higher, ½ on a tie, 0 otherwise: [P]."""
    return (difference > 0).float() + 0.5 * (difference == 0).float()


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, num_bins: int = 10
) -> float:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017, eq. 3).

    ``ECE = Σ_b (n_b / N) · |mean(labels in b) − mean(probabilities in b)|`` over ``num_bins``
    equal-width bins of the predicted probability.

    Args:
        probabilities: [N] predicted probabilities that each label is 1.
        labels: [N] outcomes, 0 or 1.
    """
    probabilities, labels = probabilities.double().flatten(), labels.double().flatten()
    if probabilities.numel() == 0:
        return 0.0
    # bin b holds (b/num_bins, (b+1)/num_bins]; 0 goes to the first bin
    bins = (probabilities * num_bins).ceil().long().clamp(1, num_bins) - 1  # [N]
    counts = torch.bincount(bins, minlength=num_bins).double()  # [num_bins]
    confidence = torch.bincount(bins, probabilities, minlength=num_bins)
    accuracy = torch.bincount(bins, labels, minlength=num_bins)
    gaps = (accuracy - confidence).abs()  # per-bin |Σ labels − Σ probabilities| = n_b · |gap|
    return float(gaps.sum() / counts.sum())


def preference_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, num_bins: int = 10
) -> dict[str, float]:
    """Held-out quality of a reward model on pairs whose preferred response is known.

    Args:
        chosen_rewards: [P] rewards of the preferred responses.
        rejected_rewards: [P] rewards of the others.

    Returns:
        ``loss`` (mean Bradley–Terry NLL, no margin), ``accuracy`` (share of pairs ranked
        right, ties ½), ``margin`` (mean r_w − r_l) and ``ece``: the expected calibration error
        of the Bradley–Terry probability ``σ(r_w − r_l)`` against the labels. Every pair is
        counted in both orders (``σ(Δ)`` with label 1 and ``σ(−Δ)`` with label 0): with the
        chosen response always first, the labels would all be 1 and the ECE would measure
        only how confident the model is, not whether its confidence is right.
    """
    loss_sum, metrics = bradley_terry_loss(chosen_rewards, rejected_rewards)
    pairs = max(metrics["pairs"], 1.0)
    difference = chosen_rewards.double() - rejected_rewards.double()  # [P]
    probabilities = torch.cat([torch.sigmoid(difference), torch.sigmoid(-difference)])  # [2P]
    labels = torch.cat([torch.ones_like(difference), torch.zeros_like(difference)])  # [2P]
    return {
        "loss": float(loss_sum) / pairs,
        "accuracy": metrics["correct_pairs"] / pairs,
        "margin": metrics["margin_sum"] / pairs,
        "ece": expected_calibration_error(probabilities, labels, num_bins),
    }
