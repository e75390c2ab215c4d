"""Supervised losses: next-token negative log-likelihood (SFT and pretraining)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nll_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed next-token negative log-likelihood over the given positions.

    Args:
        logits: [N, V] scores at the N positions that carry a loss (already shifted: row i
            predicts ``targets[i]``).
        targets: [N] token ids.

    Returns:
        ``(loss_sum, metrics)``: the *sum* of −log p(target) over the N positions. The caller
        divides by the number of loss tokens in the whole optimiser step (all micro-batches,
        all data-parallel ranks) so the gradient does not depend on how the step was split
        into micro-batches — dividing each micro-batch by its own count would weight tokens of
        short micro-batches more (the accumulation bug fixed in transformers 4.46).
    """
    loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    return loss_sum, {"nll_sum": loss_sum.item()}
