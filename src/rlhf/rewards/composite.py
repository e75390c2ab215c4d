"""Rewards made of rewards: a weighted sum of named parts, and the length / missing-EOS penalties.

* :class:`CompositeReward`: ``r = Σ_k w_k r_k`` over named parts, each part's own (unweighted)
  reward kept in :attr:`RewardOutput.components` so it can be logged on its own (e.g. answer
  correctness and format, as in DeepSeek-R1's accuracy + format rewards).
* :class:`LengthPenalty`: ``−c · max(0, L − L₀)`` for a response of L tokens (or characters),
  spread as −c on each token past L₀, so it also gives per-token rewards.
* :class:`MissingEOSPenalty`: a response that never emitted EOS (cut at ``max_new_tokens``)
  either loses a fixed amount (TRL's ``missing_eos_penalty``) or has its reward replaced by a
  fixed value, e.g. 0 or −1 (the ``non_eos_penalty`` / ``penalty_reward_value`` of TRL's
  earlier PPO, after Huang et al. 2024, "The N+ implementation details of RLHF with PPO").
  Truncated text is often an unfinished answer that a reward model or rule would still credit.

The penalties read ``metadata[i]["finished"]`` and ``metadata[i]["response_tokens"]``; see
:func:`rlhf.rewards.rollout_metadata`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import (
    FINISHED,
    Metadata,
    Reward,
    RewardFunction,
    RewardOutput,
    check_lengths,
    dense_token_rewards,
    metadata_value,
    response_token_counts,
    score_reward,
)


def _add_padded(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[B, R1] + [B, R2] -> [B, max(R1, R2)], the shorter zero-padded on the right."""
    out = torch.zeros(left.shape[0], max(left.shape[1], right.shape[1]))
    out[:, : left.shape[1]] += left
    out[:, : right.shape[1]] += right
    return out


class CompositeReward(Reward):
    """The weighted sum of named rewards: ``parts = {name: (weight, reward)}``.

    ``score`` returns the sum as ``scores`` and every part's unweighted reward under its name
    in ``components`` (a nested composite's parts as ``name/part``). When any part gives
    per-token rewards, the sum does too (parts without them count on the last token), which
    needs ``response_tokens`` in the metadata.
    """

    def __init__(self, parts: Mapping[str, tuple[float, RewardFunction]]) -> None:
        if not parts:
            raise ValueError("a composite reward needs at least one part")
        for name in parts:
            if not name or "/" in name:
                raise ValueError(f"composite part name {name!r} must be non-empty, without '/'")
        self.parts = {name: (float(weight), reward) for name, (weight, reward) in parts.items()}

    @property
    def reads_token_ends(self) -> bool:  # type: ignore[override]
        return any(getattr(reward, "reads_token_ends", False) for _, reward in self.parts.values())

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        total = torch.zeros(len(responses))
        components: dict[str, torch.Tensor] = {}
        outputs = []
        for name, (weight, reward) in self.parts.items():
            output = score_reward(reward, prompts, responses, metadata)
            outputs.append((weight, output))
            total += weight * output.scores
            components[name] = output.scores
            for inner, values in output.components.items():
                components[f"{name}/{inner}"] = values
        token_rewards = None
        if any(output.token_rewards is not None for _, output in outputs):
            lengths = response_token_counts(metadata, len(responses), repr(self))
            token_rewards = torch.zeros(len(responses), 0)
            for weight, output in outputs:
                token_rewards = _add_padded(
                    token_rewards, weight * dense_token_rewards(output, lengths)
                )
        return RewardOutput(total, components, token_rewards)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name!r}: ({w:g}, {r!r})" for name, (w, r) in self.parts.items())
        return f"CompositeReward({{{inner}}})"


class LengthPenalty(Reward):
    """``−coef · max(0, L − free)``: L the response's length in tokens (``unit="tokens"``, from
    ``metadata[i]["response_tokens"]``) or in characters (``unit="chars"``).

    In tokens it is also given per token: −coef on each token past the first ``free``.
    """

    def __init__(
        self, coef: float, *, free: int = 0, unit: Literal["tokens", "chars"] = "tokens"
    ) -> None:
        if coef < 0 or free < 0:
            raise ValueError(f"length penalty coef {coef} and free {free} must be >= 0")
        if unit not in ("tokens", "chars"):
            raise ValueError(f"length unit must be 'tokens' or 'chars', got {unit!r}")
        self.coef, self.free, self.unit = float(coef), int(free), unit

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        if self.unit == "chars":
            lengths = torch.tensor([len(response) for response in responses])
            excess = (lengths - self.free).clamp(min=0).float()
            return RewardOutput(-self.coef * excess)
        lengths = torch.tensor(response_token_counts(metadata, len(responses), repr(self)))
        width = int(lengths.max()) if len(lengths) else 0
        positions = torch.arange(width)[None, :]  # [1, R]
        past = (positions >= self.free) & (positions < lengths[:, None])  # [B, R]
        token_rewards = -self.coef * past.float()
        return RewardOutput(token_rewards.sum(-1), token_rewards=token_rewards)

    def __repr__(self) -> str:
        return f"LengthPenalty({self.coef:g}, free={self.free}, unit={self.unit!r})"


class MissingEOSPenalty(Reward):
    """``base``'s reward, changed for responses that never emitted EOS
    (``metadata[i]["finished"]`` false): ``penalty`` is subtracted from it, or it is replaced
    by ``value`` (0 zeroes it). Exactly one of the two.

    ``components["missing_eos"]`` is the change made (0 on finished rows), beside the base's
    own components. Per-token rewards, where the base gives them, get the change on the last
    token (``value`` clears the row first).
    """

    def __init__(
        self, base: RewardFunction, *, penalty: float | None = None, value: float | None = None
    ) -> None:
        if (penalty is None) == (value is None):
            raise ValueError("set exactly one of the missing-EOS penalty and value")
        self.base, self.penalty, self.value = base, penalty, value

    @property
    def reads_token_ends(self) -> bool:  # type: ignore[override]
        return getattr(self.base, "reads_token_ends", False)

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        output = score_reward(self.base, prompts, responses, metadata)
        unfinished = torch.tensor(
            [
                not metadata_value(metadata, row, FINISHED, repr(self))
                for row in range(len(responses))
            ],
            dtype=torch.bool,
        )
        if self.penalty is not None:
            scores = torch.where(unfinished, output.scores - self.penalty, output.scores)
        else:
            scores = torch.where(unfinished, torch.tensor(float(self.value)), output.scores)
        change = scores - output.scores
        token_rewards = output.token_rewards
        if token_rewards is not None:
            lengths = response_token_counts(metadata, len(responses), repr(self))
            token_rewards = token_rewards.clone()
            if self.value is not None:
                token_rewards[unfinished] = 0.0
                change_on_last = torch.where(unfinished, scores, torch.zeros_like(scores))
            else:
                change_on_last = change
            token_rewards = _add_padded(
                token_rewards, dense_token_rewards(RewardOutput(change_on_last), lengths)
            )
        components = {**output.components, "missing_eos": change}
        return RewardOutput(scores, components, token_rewards)

    def __repr__(self) -> str:
        how = f"penalty={self.penalty:g}" if self.penalty is not None else f"value={self.value:g}"
        return f"MissingEOSPenalty({self.base!r}, {how})"
