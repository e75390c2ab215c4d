"""The reward protocol, its result type and the per-row metadata rewards read.

A reward is anything that scores responses to prompts::

    reward(prompts: Sequence[Text], responses: Sequence[str], metadata=None) -> Tensor [B]  # float32

so a learned reward model, a rule (a verifiable answer check), a judge, a weighted composite
or the gold reward of a simulated world plug into best-of-N, RAFT and the online policy
optimisers alike. Responses are the assistant's text; for message-list prompts
:func:`response_as_text` wraps them as one assistant turn wherever a record needs both sides
in one format.

``metadata`` is optional: ``None``, or one mapping per row holding what the text alone does not
say. The keys rewards read (``ANSWER``, ``FINISHED``, ``RESPONSE_TOKENS`` of
:mod:`rlhf.rollout.types`, which sits below both the rollouts that write them and the rewards):

* ``"answer"``: the ground truth of a verifiable task (a data row's ``answer`` field, e.g. a
  GSM8K reference solution ending ``#### 72``, or just ``72``);
* ``"finished"``: the response ended with EOS (``False``: cut at ``max_new_tokens``);
* ``"response_tokens"``: the response's length in tokens, EOS included;
* ``"response_token_ends"`` (``RESPONSE_TOKEN_ENDS``, only for a reward whose
  ``reads_token_ends`` is set, and only where the caller has the policy's tokenizer): for each
  response token, the length of the text its tokens so far decode to.

:func:`rollout_metadata` builds the last two from a rollout batch (and spreads per-prompt
metadata such as the answer over the prompt's samples). Plain functions of
``(prompts, responses)`` remain rewards; :func:`call_reward` passes them metadata only when
they take it.

Rewards built here (subclasses of :class:`Reward`) also answer :meth:`Reward.score` with a
:class:`RewardOutput`: the scores, each named component of a composite on its own, and
optionally per-token rewards.

Configs name a reward with a :class:`~rlhf.rewards.spec.RewardSpec`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from rlhf.data.records import Message, Text
from rlhf.rollout.tokens import token_text_ends
from rlhf.rollout.types import (
    ANSWER,
    FINISHED,
    RESPONSE_TOKEN_ENDS,
    RESPONSE_TOKENS,
    RolloutBatch,
)

Metadata = Sequence[Mapping[str, Any]] | None
"""Per-row metadata: ``None`` or one mapping per response (see the module docstring)."""


@runtime_checkable
class RewardFunction(Protocol):
    """Scores ``responses[i]`` as an answer to ``prompts[i]``: [B] prompts, [B] responses,
    optional [B] metadata mappings -> [B] float32."""

    def __call__(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> torch.Tensor: ...


@dataclass
class RewardOutput:
    """What a :class:`Reward` returns from :meth:`Reward.score`."""

    scores: torch.Tensor  # [B] float32: each response's reward (a composite's weighted sum)
    # name -> [B] float32: each named part of a composite (or penalty), before its weight;
    # empty for a single reward
    components: dict[str, torch.Tensor] = field(default_factory=dict)
    # [B, R] float32 or None: the reward spread over the response's tokens (R = the longest
    # response's token count), summing to `scores` over each row's tokens, 0 past its end;
    # None: the whole reward belongs to the last token (see dense_token_rewards)
    token_rewards: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> RewardOutput:
        """The rewards of rows ``rows`` ([n] long indices)."""
        return RewardOutput(
            self.scores[rows],
            {name: values[rows] for name, values in self.components.items()},
            None if self.token_rewards is None else self.token_rewards[rows],
        )

    @staticmethod
    def concatenate(outputs: Sequence[RewardOutput]) -> RewardOutput:
        """The rows of ``outputs`` in order (per-token rewards right-padded with 0). They
        must come from the same reward: the same components, per-token rewards in all or
        none (a ValueError otherwise, rather than dropping any)."""
        if not outputs:
            raise ValueError("concatenate needs at least one RewardOutput")
        names = [sorted(output.components) for output in outputs]
        if any(other != names[0] for other in names):
            raise ValueError(f"the outputs hold different reward components: {names}")
        with_tokens = [output.token_rewards is not None for output in outputs]
        if any(with_tokens) and not all(with_tokens):
            raise ValueError("some outputs have per-token rewards and some do not")
        token_rewards = None
        if all(with_tokens):
            parts = [output.token_rewards for output in outputs]
            width = max(part.shape[1] for part in parts)  # type: ignore[union-attr]
            token_rewards = torch.cat(
                [torch.nn.functional.pad(part, (0, width - part.shape[1])) for part in parts]  # type: ignore[union-attr,arg-type]
            )
        return RewardOutput(
            torch.cat([output.scores for output in outputs]),
            {name: torch.cat([o.components[name] for o in outputs]) for name in names[0]},
            token_rewards,
        )

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Means to log: ``{prefix: mean score, f"{prefix}/{name}": mean of each component}``."""
        out = {prefix: float(self.scores.mean()) if self.scores.numel() else float("nan")}
        for name, values in self.components.items():
            out[f"{prefix}/{name}"] = float(values.mean()) if values.numel() else float("nan")
        return out


class Reward:
    """Base of the rewards in this package: implement :meth:`score`; calling the reward returns
    its scores alone, so every :class:`Reward` is a :class:`RewardFunction`."""

    # whether score() reads `response_token_ends` from the metadata (a reward that places
    # values on tokens; score_rollout computes them only for such a reward)
    reads_token_ends: bool = False

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        raise NotImplementedError

    def __call__(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> torch.Tensor:
        return self.score(prompts, responses, metadata).scores


def response_as_text(prompt: Text, response: str) -> Text:
    """``response`` in the prompt's format: the string itself, or one assistant message."""
    return response if isinstance(prompt, str) else (Message("assistant", response),)


def check_lengths(
    prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if metadata is not None and len(metadata) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(metadata)} metadata rows")


def metadata_value(metadata: Metadata, row: int, key: str, needed_by: str) -> Any:
    """``metadata[row][key]``, or a ValueError saying which row lacks which key and who needs it."""
    if metadata is None:
        raise ValueError(
            f"{needed_by} needs per-row metadata with {key!r}, but no metadata was given"
            f"{_METADATA_HINTS.get(key, '')}"
        )
    entry = metadata[row]
    if key not in entry or entry[key] is None:
        raise ValueError(
            f"{needed_by}: row {row}: metadata has no {key!r}{_METADATA_HINTS.get(key, '')}"
        )
    return entry[key]


_METADATA_HINTS = {
    ANSWER: " (the ground truth: give prompts with their data rows' `answer` field)",
    FINISHED: " (whether the response ended with EOS: see rlhf.rewards.rollout_metadata)",
    RESPONSE_TOKENS: " (response length in tokens: see rlhf.rewards.rollout_metadata)",
}


def _takes_metadata(function: Any) -> bool:
    """Whether a plain callable accepts a third argument (``metadata``)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # builtins and C callables: the two-argument form
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    return sum(p.kind in positional for p in parameters) >= 3 or any(
        p.name == "metadata" for p in parameters
    )


def score_reward(
    reward: RewardFunction,
    prompts: Sequence[Text],
    responses: Sequence[str],
    metadata: Metadata = None,
) -> RewardOutput:
    """Any reward's :class:`RewardOutput`: a :class:`Reward`'s own; for a plain function of
    ``(prompts, responses[, metadata])`` its scores as float32 (metadata passed only when it
    takes a third argument)."""
    check_lengths(prompts, responses, metadata)
    if isinstance(reward, Reward):
        output = reward.score(prompts, responses, metadata)
    elif _takes_metadata(reward):
        output = RewardOutput(torch.as_tensor(reward(prompts, responses, metadata)))
    else:
        output = RewardOutput(torch.as_tensor(reward(prompts, responses)))
    scores = output.scores.detach().float().cpu()
    if scores.shape != (len(responses),):
        raise ValueError(
            f"{reward!r} returned rewards of shape {tuple(scores.shape)} for {len(responses)} "
            "responses; expected one scalar per response"
        )
    output.scores = scores
    return output


def call_reward(
    reward: RewardFunction,
    prompts: Sequence[Text],
    responses: Sequence[str],
    metadata: Metadata = None,
) -> torch.Tensor:
    """Rewards [B] float32 of any reward function (see :func:`score_reward`)."""
    return score_reward(reward, prompts, responses, metadata).scores


def rollout_metadata(
    batch: RolloutBatch,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Per-row metadata of a rollout: ``finished`` and ``response_tokens`` from the batch, plus
    ``prompt_metadata[i]`` (e.g. ``{"answer": "72"}``) on every sample of prompt ``i``; with
    the policy's ``tokenizer``, ``response_token_ends`` too (where each token's text ends)."""
    finished = batch.ended_with_eos.tolist()
    lengths = batch.response_lengths.tolist()
    ends = None
    if tokenizer is not None:
        ends = token_text_ends(
            tokenizer, batch.response_ids, batch.response_mask, batch.response_texts
        )
    rows = []
    for row, index in enumerate(batch.prompt_index.tolist()):
        entry = dict(prompt_metadata[index]) if prompt_metadata is not None else {}
        entry[FINISHED], entry[RESPONSE_TOKENS] = bool(finished[row]), int(lengths[row])
        if ends is not None:
            entry[RESPONSE_TOKEN_ENDS] = ends[row]
        rows.append(entry)
    return rows


def score_rollout(
    reward: RewardFunction,
    prompts: Sequence[Text],
    batch: RolloutBatch,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
    tokenizer: Any = None,
) -> RewardOutput:
    """The reward of each of a rollout's responses ([N] ``scores`` and the components).
    ``prompts`` are the P prompts the batch was sampled from (row ``i`` answers
    ``prompts[batch.prompt_index[i]]``); the reward sees each row's metadata
    (:func:`rollout_metadata`: EOS reached, token count, plus ``prompt_metadata`` of its prompt,
    e.g. the ground-truth ``answer``). A reward that places values on tokens
    (``reads_token_ends``: a dense PRM) also gets where each token's text ends when the
    policy's ``tokenizer`` is given (PPO gives it; without it the reward gives scores only)."""
    rows = [prompts[i] for i in batch.prompt_index.tolist()]
    wants_ends = tokenizer is not None and getattr(reward, "reads_token_ends", False)
    metadata = rollout_metadata(batch, prompt_metadata, tokenizer if wants_ends else None)
    return score_reward(reward, rows, batch.response_texts, metadata)


def response_token_counts(metadata: Metadata, size: int, needed_by: str) -> list[int]:
    return [int(metadata_value(metadata, row, RESPONSE_TOKENS, needed_by)) for row in range(size)]


def dense_token_rewards(
    output: RewardOutput, lengths: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Per-token rewards [B, R] of ``output`` for responses of ``lengths`` [B] tokens.

    ``output.token_rewards`` where the reward gave them (widened to R = max length); otherwise
    each score sits on its response's last token, the usual place of a sequence-level reward in
    PPO (Ziegler et al. 2019; Ouyang et al. 2022). An empty response's reward is dropped.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    width = int(lengths.max()) if lengths.numel() else 0
    if output.token_rewards is not None:
        width = max(width, output.token_rewards.shape[1])
        dense = torch.zeros(len(lengths), width)
        dense[:, : output.token_rewards.shape[1]] = output.token_rewards
        return dense
    dense = torch.zeros(len(lengths), max(width, 1))
    rows = torch.nonzero(lengths > 0).flatten()
    dense[rows, lengths[rows] - 1] = output.scores[rows]
    return dense[:, :width]


__all__ = [
    "Metadata",
    "Reward",
    "RewardFunction",
    "RewardOutput",
    "call_reward",
    "check_lengths",
    "dense_token_rewards",
    "metadata_value",
    "response_as_text",
    "rollout_metadata",
    "score_reward",
]
