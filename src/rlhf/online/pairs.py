"""Turning K samples per prompt into one preference pair each: what online and iterative
preference optimisation train on.

* :func:`best_and_worst`: by a scalar reward, the highest and the lowest scoring sample
  (Xiong et al. 2024, "Iterative Preference Learning from Human Feedback", and the Llama 3
  recipe: "best vs worst");
* :func:`annotated_pairs`: by (simulated) people, who compare two samples or rank K.

Both return row indices into the prompt-major rows (``rows i*K .. i*K+K-1`` answer prompt i);
a group that gives no preference (all scores tie, or one distinct response) has
chosen == rejected, and callers leave such groups out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def best_and_worst(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[P] row indices of each group's highest and lowest score (``scores`` [P·K],
    prompt-major); the first of tied rows. A group whose scores all tie has chosen == rejected."""
    if scores.ndim != 1 or scores.numel() % k:
        raise ValueError(f"scores must be [P·K] with K = {k}, got {tuple(scores.shape)}")
    groups = scores.view(-1, k)
    offsets = torch.arange(groups.shape[0]) * k
    return groups.argmax(-1) + offsets, groups.argmin(-1) + offsets


def annotated_pairs(
    prompts: Sequence[Any], responses: Sequence[str], k: int, annotators: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """[P] chosen and rejected rows as ``annotators`` (a :class:`rlhf.sim.annotators.
    AnnotatorPool` or one annotator) order each group of ``responses`` [P·K]: a comparison of
    two distinct responses, or a Plackett–Luce ranking of the distinct ones (its first and
    last). A group with one distinct response has chosen == rejected."""
    if len(responses) != len(prompts) * k:
        raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts × K = {k}")
    chosen, rejected = [], []
    for index, prompt in enumerate(prompts):
        first_row: dict[str, int] = {}
        for row in range(index * k, (index + 1) * k):
            first_row.setdefault(responses[row], row)
        distinct = list(first_row)
        if len(distinct) < 2:
            best = worst = index * k
        elif len(distinct) == 2:
            record = annotators.compare(prompt, distinct[0], distinct[1])
            best, worst = first_row[record.chosen], first_row[record.rejected]
        else:
            ranks = annotators.rank(prompt, distinct).ranks
            best = first_row[distinct[ranks.index(0)]]
            worst = first_row[distinct[ranks.index(len(distinct) - 1)]]
        chosen.append(best)
        rejected.append(worst)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)
