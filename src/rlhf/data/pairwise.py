"""Pairwise preference model data: the prompt and *both* responses in one sequence.

A pairwise preference model (Jiang et al., 2023, PairRM; Ye et al., 2024; :mod:`rlhf.models.
preference`) reads a prompt x and two responses and gives one number g(x, a, b); the preference
probability is P(a ≻ b | x) = σ(g(x, a, b) − g(x, b, a)), so every comparison is read in both
orders. The sequence of ``(x, a, b)`` is ``x`` followed by the *pair text*
(:func:`pair_response`)::

    {x}                      the prompt as it is (a newline added when it does not end in one)
    ### Response A           FIRST_HEADER
    {a}
    ### Response B           SECOND_HEADER
    {b}<eos>

e.g. for the world's ``"Describe the cat.\\n"``::

    Describe the cat.
    ### Response A
    The cat is very soft.
    ### Response B
    Every day the cat purrs.</s>

The pair text is the "response" of :func:`rlhf.data.pairs.tokenize_for_reward`, which a reward
model reads (BOS by the tokenizer's convention, EOS after it, an encoder's ``[CLS] … [SEP]``),
so a decoder reads g at the EOS, as it reads a reward. For a message-list prompt the pair text
is one assistant turn after it, rendered by the chat template. Message-list responses enter as
their assistant turns' text (:func:`rlhf.data.records.response_text`). Truncation to
``max_length`` is the reward model's: the prompt's start goes first, then the end of the pair
text, i.e. of the second response (of ``b`` in one order and of ``a`` in the other).

A training example (:class:`PairwiseExample`) holds both orders of one labelled comparison; a
batch (:class:`PairwiseBatch`) stacks the P forward sequences over the P reverse ones, ``[2P,
T]``, right-padded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.data.pairs import PreferenceGroup, pad_right, tokenize_for_reward_cut
from rlhf.data.records import Message, Text, response_text
from rlhf.data.tokenize import Cut, TooLongError, Truncation, TruncationReport

logger = logging.getLogger("rlhf.data")

FIRST_HEADER = "### Response A\n"  # opens the first response of the pair text
SECOND_HEADER = "\n### Response B\n"  # separates the second response from the first


def pair_text(first: Text, second: Text) -> str:
    """``FIRST_HEADER + a + SECOND_HEADER + b`` for responses ``a``, ``b`` (message lists as
    their assistant turns' text)."""
    return f"{FIRST_HEADER}{response_text(first)}{SECOND_HEADER}{response_text(second)}"


def pair_response(prompt: Text, first: Text, second: Text) -> Text:
    """What follows ``prompt`` in the pairwise sequence, in the prompt's format: for a string,
    :func:`pair_text` (after a newline when the prompt does not end with one); for a message
    list, one assistant message holding it."""
    text = pair_text(first, second)
    if isinstance(prompt, str):
        return text if not prompt or prompt.endswith("\n") else "\n" + text
    return (Message("assistant", text),)


def tokenize_pair(
    tokenizer: Any,
    prompt: Text,
    first: Text,
    second: Text,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> tuple[list[int], Cut]:
    """Token ids [T] of the sequence of ``(prompt, first, second)`` (see the module docstring)
    and what truncation took from it. Raises :class:`~rlhf.data.tokenize.TooLongError` under
    ``truncation="drop"`` when it is longer than ``max_length``."""
    return tokenize_for_reward_cut(
        tokenizer, prompt, pair_response(prompt, first, second), max_length, truncation
    )


@dataclass(frozen=True, slots=True)
class PairwiseExample:
    """One labelled comparison, tokenised in both orders."""

    forward: tuple[int, ...]  # [T_f] ids of (x, a, b)
    reverse: tuple[int, ...]  # [T_r] ids of (x, b, a)
    label: float  # the target P(a ≻ b | x), in [0, 1]: 1.0 when a is the chosen response

    @property
    def length(self) -> int:
        """Tokens of the longer order (what a padded row costs)."""
        return max(len(self.forward), len(self.reverse))


def tokenize_pairwise(
    tokenizer: Any,
    groups: Iterable[PreferenceGroup],
    max_length: int | None,
    truncation: Truncation = "truncate",
    *,
    report: TruncationReport | None = None,
) -> list[PairwiseExample]:
    """Every pair of every group as a :class:`PairwiseExample` with a = the chosen response,
    b = the other and label 1 (the data's margins are not used), counting (and logging) what is
    dropped: pairs longer than ``max_length`` under ``truncation="drop"``, and pairs whose two
    orders are the same sequence once truncated (a comparison the model cannot see). ``report``
    (when given) counts every pair: truncated (the larger cut of its two orders) or dropped."""
    examples = []
    if report is None:
        report = TruncationReport(max_length, "pairs")
    before = report.dropped.copy()
    for group in groups:
        for chosen, rejected in zip(group.chosen, group.rejected, strict=True):
            a, b = group.responses[chosen], group.responses[rejected]
            try:
                forward, forward_cut = tokenize_pair(
                    tokenizer, group.prompt, a, b, max_length, truncation
                )
                reverse, reverse_cut = tokenize_pair(
                    tokenizer, group.prompt, b, a, max_length, truncation
                )
            except TooLongError:
                report.drop("longer than max_length")
                continue
            if forward == reverse:
                report.drop("identical after truncation")
                continue
            report.add(forward_cut | reverse_cut)
            examples.append(PairwiseExample(tuple(forward), tuple(reverse), 1.0))
    dropped = report.dropped - before
    if dropped:
        logger.warning("dropped %d pairs: %s", sum(dropped.values()), dict(dropped))
    return examples


@dataclass
class PairwiseBatch:
    """P comparisons in both orders: rows [0, P) read (x, a, b), rows [P, 2P) read (x, b, a)."""

    input_ids: torch.Tensor  # [2P, T] forward sequences, then the reverse ones; right-padded
    attention_mask: torch.Tensor  # [2P, T] 1 on real tokens, 0 on padding
    labels: torch.Tensor  # [P] float32 target P(a ≻ b | x) of each comparison
    num_tokens: int  # real (non-pad) tokens

    @property
    def loss_units(self) -> int:
        """The loss is a sum over comparisons (see ``rlhf.losses.preference_model``)."""
        return int(self.labels.numel())

    def to(self, device: torch.device | str) -> PairwiseBatch:
        return PairwiseBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.num_tokens,
        )


def collate_pairwise(examples: Sequence[PairwiseExample], pad_token_id: int) -> PairwiseBatch:
    """Stack the forward sequences over the reverse ones, right-padded with ``pad_token_id``."""
    if not examples:
        raise ValueError("collate_pairwise needs at least one example")
    sequences = [example.forward for example in examples]
    sequences += [example.reverse for example in examples]
    input_ids, attention_mask = pad_right(sequences, pad_token_id)
    return PairwiseBatch(
        input_ids,
        attention_mask,
        torch.tensor([example.label for example in examples], dtype=torch.float32),
        sum(len(sequence) for sequence in sequences),
    )
