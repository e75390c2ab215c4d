"""The embedded world's gold reward (:mod:`rlhf.sim.gold`) as a :class:`~rlhf.rewards.base.Reward`.

The scoring itself is :mod:`rlhf.sim.gold`'s, plain functions of text; this class lives with the
rewards so that the rule registry (:data:`rlhf.rewards.rules.RULES`, ``world_gold``) reaches it
without the world importing the reward layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import Metadata, Reward, RewardOutput, check_lengths
from rlhf.sim.gold import GOLD_WEIGHTS, combine, gold_components


class WorldGold(Reward):
    """The embedded world's gold reward: scores are :func:`rlhf.sim.gold.gold_score`,
    ``components`` each named part before its weight (:data:`rlhf.sim.gold.GOLD_WEIGHTS`).
    Metadata is not needed: a response that hit ``max_new_tokens`` mid-sentence reads as cut
    off from its text alone. Configs: ``reward: {rule: world_gold}``."""

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        rows = [gold_components(p, r) for p, r in zip(prompts, responses, strict=True)]
        components = {
            name: torch.tensor([row[name] for row in rows], dtype=torch.float32)
            for name in GOLD_WEIGHTS
        }  # name -> [B]
        scores = torch.tensor([combine(row) for row in rows], dtype=torch.float32)  # [B]
        return RewardOutput(scores, components)

    def __repr__(self) -> str:
        return "WorldGold()"
