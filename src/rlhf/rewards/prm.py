"""A process reward model as a :class:`~rlhf.rewards.base.RewardFunction`: a response's steps
scored one by one and aggregated into one number.

The response is split into steps at the separator the PRM was trained with (blank pieces
dropped), each step's P(correct) read in one batched pass
(:meth:`rlhf.models.prm.ProcessRewardModel.step_probabilities`), and the steps aggregated
(:func:`rlhf.losses.prm.aggregate_steps`: ``product``, the probability that no step is wrong,
as Lightman et al. 2023 rank solutions; ``min``; ``last``). A response with no step scores 0.
The reward is then in [0, 1]; ``rlhf best-of-n --reward prm=runs/prm/model`` picks by it.

**Dense** (``prm_dense: true``): the same total spread over the response's tokens, on the
token where each step's text ends. Step k gets ``A_k − A_{k−1}``, the change its score makes to
the running aggregate ``A_k`` of steps 1..k (``A_0 = 0``), so the step rewards sum to the
sequence reward and only *where* the credit lands changes: a potential-based reshaping of the
outcome-level PRM reward (Ng et al. 1999), which keeps its optimum. With ``product``, a step the
PRM doubts takes the loss it causes (``A_{k−1} · (p_k − 1)``) right where it is written. PPO
reads these per-token rewards (the rollout gives the token ends, :data:`RESPONSE_TOKEN_ENDS`);
elsewhere the reward is its sequence score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhf.data.records import Text
from rlhf.losses.prm import Aggregation, aggregate_steps
from rlhf.models.forward import position_limit
from rlhf.rewards.base import Metadata, Reward, RewardOutput, check_lengths
from rlhf.rollout.types import RESPONSE_TOKEN_ENDS


class ProcessReward(Reward):
    def __init__(
        self,
        path: str | Path,
        *,
        aggregation: Aggregation = "product",
        dense: bool = False,
        device: str = "auto",
        batch_size: int = 16,
    ) -> None:
        from rlhf.models.device import resolve_device
        from rlhf.models.prm import ProcessRewardModel

        self.path, self.aggregation, self.batch_size = str(path), aggregation, batch_size
        self.dense = self.reads_token_ends = dense
        self.model = ProcessRewardModel.load(path, device=str(resolve_device(device)))

    def step_ends(self, response: str) -> list[tuple[str, int]]:
        """The response's steps with where each ends in it: its pieces between separators,
        stripped, blank ones dropped; (the step's text, the offset just past it)."""
        steps, start = [], 0
        for piece in response.split(self.model.separator):
            if piece.strip():
                steps.append((piece.strip(), start + len(piece.rstrip())))
            start += len(piece) + len(self.model.separator)
        return steps

    def steps(self, response: str) -> list[str]:
        """The response's steps (:meth:`step_ends` without the offsets)."""
        return [step for step, _ in self.step_ends(response)]

    def step_scores(self, prompts: Sequence[Text], responses: Sequence[str]) -> list[torch.Tensor]:
        """P(step correct) [n_i] of each response's steps (:meth:`steps`; empty when it has
        none, or when not even its first step fits the model)."""
        check_lengths(prompts, responses)
        solutions = [self.steps(response) for response in responses]
        rows = [i for i, steps in enumerate(solutions) if steps]
        out = [torch.empty(0) for _ in responses]
        probabilities = self.model.step_probabilities(
            [prompts[i] for i in rows], [solutions[i] for i in rows], batch_size=self.batch_size,
            max_length=position_limit(self.model.model),  # the steps that fit are scored
        )  # fmt: skip
        for row, steps in zip(rows, probabilities, strict=True):
            out[row] = steps
        return out

    def steps_on_tokens(
        self,
        prompts: Sequence[Text],
        responses: Sequence[str],
        token_ends: Sequence[Sequence[int]],
    ) -> list[tuple[torch.Tensor, list[int]]]:
        """Each response's step probabilities [n] (:meth:`step_scores`) with the response token
        each step ends on: the first token whose text (``token_ends``, the rollout's
        :data:`RESPONSE_TOKEN_ENDS`) reaches the step's last character."""
        placed = []
        for steps, response, ends in zip(
            self.step_scores(prompts, responses), responses, token_ends, strict=True
        ):
            tokens = [
                next((t for t, e in enumerate(ends) if e >= end), len(ends) - 1)
                for _, end in self.step_ends(response)[: len(steps)]
            ]
            placed.append((steps, tokens))
        return placed

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        ends = None
        if self.dense and metadata is not None:
            ends = [entry.get(RESPONSE_TOKEN_ENDS) for entry in metadata]
        if ends is None or any(row is None for row in ends):  # the sequence score alone
            return RewardOutput(self.aggregate(self.step_scores(prompts, responses)))
        placed = self.steps_on_tokens(prompts, responses, ends)
        token_rewards = torch.zeros(len(responses), max((len(row) for row in ends), default=0))
        for row, (steps, tokens) in enumerate(placed):
            running = [aggregate_steps(steps[: k + 1], self.aggregation) for k in range(len(steps))]
            if running:  # each step's change to the running aggregate, on its last token
                changes = torch.diff(torch.stack(running), prepend=torch.zeros(1))
                token_rewards[row].index_add_(0, torch.tensor(tokens), changes)
        return RewardOutput(
            self.aggregate([steps for steps, _ in placed]), token_rewards=token_rewards
        )

    def aggregate(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B] the sequence rewards of step probabilities (0 for a response with none)."""
        scores = torch.zeros(len(probabilities))
        for row, steps in enumerate(probabilities):
            if steps.numel():
                scores[row] = aggregate_steps(steps, self.aggregation)
        return scores

    def __repr__(self) -> str:
        return f"ProcessReward({self.path!r}, aggregation={self.aggregation!r})"
