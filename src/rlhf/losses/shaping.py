"""Reward shaping: terms added to a response's reward before any advantage is computed.

- DAPO's soft overlong punishment (Yu et al., 2025, eq. 13, :func:`overlong_penalty`): a
  length-aware penalty that ramps from 0 to −1 over the last ``cache_length`` tokens of the
  generation budget, so a truncated response is told it was too long without the same
  penalty falling on a good answer that merely ended near the limit.

Shapes: N responses; ``lengths`` [N] counts each response's tokens (through its EOS). Pure torch,
float32, no gradient (rewards are targets).
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_new_tokens: int, cache_length: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), to add to the reward.

    With ``L_max = max_new_tokens`` and ``L_cache = cache_length``::

        R_length(y) =  0                                  |y| ≤ L_max − L_cache
                       ((L_max − L_cache) − |y|) / L_cache   L_max − L_cache < |y| ≤ L_max
                       −1                                 L_max < |y|

    The middle branch is a linear ramp, continuous with both others: it is 0 at
    ``|y| = L_max − L_cache`` and −1 at ``|y| = L_max`` (a response truncated at the budget).

    Args:
        lengths: [N] response lengths |y| in tokens (integer or float, ≥ 0).
        max_new_tokens: L_max > 0, the generation budget.
        cache_length: L_cache, strictly between 0 and L_max (DAPO: L_max = 20480,
            L_cache = 4096).

    Returns:
        [N] float32 penalties in [−1, 0].
    """
    if not isinstance(lengths, Tensor) or lengths.ndim != 1:
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(f"lengths must be a [N] tensor, got {shape}")
    if not max_new_tokens > 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    if not 0 < cache_length < max_new_tokens:
        raise ValueError(
            f"cache_length must be in (0, max_new_tokens = {max_new_tokens}) exclusive, "
            f"got {cache_length}"
        )
    if (lengths < 0).any():
        raise ValueError(f"lengths must be ≥ 0, got min {float(lengths.min())}")
    lengths = lengths.detach().float()
    soft_start = max_new_tokens - cache_length  # L_max − L_cache: where the ramp begins
    ramp = (soft_start - lengths) / cache_length
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_new_tokens, torch.full_like(lengths, -1.0), penalty)
