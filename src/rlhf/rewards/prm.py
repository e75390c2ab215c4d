"""A process reward model as a :class:`~rlhf.rewards.base.RewardFunction`: a response's steps
scored one by one and aggregated into one number.

The response is split into steps at the separator the PRM was trained with (blank pieces
dropped), each step's P(correct) read in one batched pass
(:meth:`rlhf.models.prm.ProcessRewardModel.step_probabilities`), and the steps aggregated
(:func:`rlhf.losses.prm.aggregate_steps`: ``product``, the probability that no step is wrong,
as Lightman et al. 2023 rank solutions; ``min``; ``last``). A response with no step scores 0.
The reward is then in [0, 1]; ``rlhf best-of-n --reward prm=runs/prm/model`` picks by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhf.data.records import Text
from rlhf.losses.prm import Aggregation, aggregate_steps
from rlhf.rewards.base import Metadata, Reward, RewardOutput, check_lengths


class ProcessReward(Reward):
    def __init__(
        self,
        path: str | Path,
        *,
        aggregation: Aggregation = "product",
        device: str = "auto",
        batch_size: int = 16,
    ) -> None:
        from rlhf.models.device import resolve_device
        from rlhf.models.prm import ProcessRewardModel

        self.path, self.aggregation, self.batch_size = str(path), aggregation, batch_size
        self.model = ProcessRewardModel.load(path, device=str(resolve_device(device)))

    def steps(self, response: str) -> list[str]:
        """The response's steps: its pieces between separators, stripped, blank ones dropped."""
        pieces = response.split(self.model.separator)
        return [piece.strip() for piece in pieces if piece.strip()]

    def step_scores(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[torch.Tensor]:
        """P(step correct) [n_i] of each response's steps (:meth:`steps`; empty when it has
        none, or when not even its first step fits the model)."""
        check_lengths(prompts, responses)
        solutions = [self.steps(response) for response in responses]
        rows = [i for i, steps in enumerate(solutions) if steps]
        out = [torch.empty(0) for _ in responses]
        probabilities = self.model.step_probabilities(
            [prompts[i] for i in rows], [solutions[i] for i in rows], batch_size=self.batch_size
        )
        for row, steps in zip(rows, probabilities, strict=True):
            out[row] = steps
        return out

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        scores = torch.zeros(len(responses))
        for row, steps in enumerate(self.step_scores(prompts, responses)):
            if steps.numel():
                scores[row] = aggregate_steps(steps, self.aggregation)
        return RewardOutput(scores)

    def __repr__(self) -> str:
        return f"ProcessReward({self.path!r}, aggregation={self.aggregation!r})"
