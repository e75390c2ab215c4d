"""Batches for offline preference optimisation: two completions of one prompt per example.

DPO and its family score a pair ``(x, y_w, y_l)`` by the log-probability of each completion
given the prompt; KTO scores a rated completion ``y`` and, for its KL reference point, a
mismatched completion ``y'`` taken from another example, under the same prompt ``x``. Either
way an example is *two completions of one prompt* (:class:`PairExample`), and one forward pass
per micro-batch reads both.

* **Tokenisation.** ``prompt + completion`` is tokenised *together*
  (:func:`rlhf.data.tokenize.tokenize_prompt_response`: BOS once, EOS after a plain-text
  completion, the chat template for message lists), and the completion's first token is found
  through character offsets, so the log-probs cover exactly the completion's tokens.
* **Layouts.** For causal decoders whose attention takes a 4-D mask, one row per pair holds
  the shared prompt once, then the first completion, then the second
  (:func:`collate_pairs_shared_prompt`, built on :func:`rlhf.data.pairs.shared_prefix_rows`):
  the prompt is computed once instead of twice. Otherwise the plain layout stacks the first
  completions' sequences over the second ones, ``[2P, T]``, right-padded
  (:func:`collate_pairs`). Both give the same log-probs (tested).
* **Targets.** ``labels[r, t]`` is the token predicted at position ``t`` (the input shifted
  left by one), ``-100`` on prompt and pad positions; ``owners[k, r, t]`` names the pair whose
  ``k``-th completion that target belongs to (``-1``: none). In the shared-prompt row a target
  inside the shared prefix can belong to both completions (a completion token the two
  completions share, e.g. ``"47 + 38 = "`` in ``"47 + 38 = 85"`` / ``"47 + 38 = 84"``), so
  each completion has its own owner map.

Shapes: P pairs, R rows (P shared-prompt rows, 2P plain rows), L columns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.data.collate import IGNORE_INDEX
from rlhf.data.pairs import pad_right, shared_prefix_rows
from rlhf.data.records import Text
from rlhf.data.tokenize import (
    TooLongError,
    Truncation,
    TruncationReport,
    tokenize_prompt_response_cut,
)

logger = logging.getLogger("rlhf.data")


@dataclass(frozen=True, slots=True)
class PairText:
    """Two completions of one prompt, as text."""

    prompt: Text
    first: Text  # DPO: the chosen completion y_w; KTO: the rated completion y
    second: Text  # DPO: the rejected completion y_l; KTO: a mismatched completion y'
    desirable: bool | None = None  # KTO: whether ``first`` got a thumbs up; None for pairs


@dataclass(frozen=True, slots=True)
class PairExample:
    """Two completions of one prompt, each tokenised together with the prompt."""

    sequences: tuple[tuple[int, ...], tuple[int, ...]]  # [2][T_k] prompt + completion k ids
    # [2] index of each completion's first token in its sequence (at least 1: a first token
    # has no position before it to be predicted from)
    starts: tuple[int, int]
    index: int  # this example's row in the reference log-prob table
    desirable: bool | None = None  # KTO: the first completion got a thumbs up

    @property
    def completion_tokens(self) -> tuple[int, int]:
        return (
            len(self.sequences[0]) - self.starts[0],
            len(self.sequences[1]) - self.starts[1],
        )

    @property
    def length(self) -> int:
        """Tokens of the longer sequence (what a padded row costs)."""
        return max(len(sequence) for sequence in self.sequences)


def tokenize_pairs(
    tokenizer: Any,
    pairs: Iterable[PairText],
    max_length: int | None,
    truncation: Truncation = "truncate",
    *,
    first_index: int = 0,
    drop_identical: bool = True,
    report: TruncationReport | None = None,
) -> list[PairExample]:
    """Tokenise each pair's two sequences, counting (and logging) what is dropped.

    Dropped: pairs with a sequence longer than ``max_length`` under ``truncation="drop"``, and,
    with ``drop_identical``, pairs whose two sequences are identical once truncated (a
    comparison the model cannot see). Over-long sequences otherwise lose the prompt's start
    first (each sequence on its own, so a long completion may keep less of the prompt than its
    partner). ``index`` counts the kept examples from ``first_index``. ``report`` (when given)
    counts every pair: truncated (the larger cut of its two sequences) or dropped.
    """
    examples: list[PairExample] = []
    if report is None:
        report = TruncationReport(max_length, "pairs")
    dropped = report.dropped.copy()
    for pair in pairs:
        try:
            first = tokenize_prompt_response_cut(
                tokenizer, pair.prompt, pair.first, max_length, truncation
            )
            second = tokenize_prompt_response_cut(
                tokenizer, pair.prompt, pair.second, max_length, truncation
            )
        except TooLongError:
            report.drop("longer than max_length")
            continue
        if drop_identical and first[0] == second[0]:
            report.drop("identical after truncation")
            continue
        report.add(first[2] | second[2])
        examples.append(
            PairExample(
                (tuple(first[0]), tuple(second[0])),
                (max(first[1], 1), max(second[1], 1)),
                first_index + len(examples),
                pair.desirable,
            )
        )
    dropped = report.dropped - dropped
    if dropped:
        logger.warning("dropped %d pairs: %s", sum(dropped.values()), dict(dropped))
    return examples


# ------------------------------------------------------------------------------ batches


class LogpTable:
    """Reference log-probs of every example, ``[N, 2]`` by :attr:`PairExample.index`.

    Empty until the reference pass (:mod:`rlhf.models.reference`) fills it, once, before
    training; the collators read it so every batch carries its pairs' reference log-probs.
    """

    def __init__(self) -> None:
        self.values: torch.Tensor | None = None  # [N, 2] float32


@dataclass
class PairBatch:
    """P examples of two completions each, with next-token targets over completion tokens."""

    input_ids: torch.Tensor  # [R, L] token ids, right-padded
    # [R, L] 1 on real tokens (plain layout) or [R, 1, L, L] bool, True = may attend (shared)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # [R, L] each token's position in its own sequence
    labels: torch.Tensor  # [R, L] target predicted at each position, -100 = none
    owners: torch.Tensor  # [2, R, L] pair whose k-th completion the target belongs to, -1 none
    completion_tokens: torch.Tensor  # [P, 2] float: tokens of each completion
    index: torch.Tensor  # [P] long: the examples' rows in the reference table
    num_tokens: int  # real (non-pad) tokens
    ref_logps: torch.Tensor | None = None  # [P, 2] reference log π_ref of each completion
    desirable: torch.Tensor | None = None  # [P] bool: KTO's thumbs up on the first completion

    @property
    def loss_units(self) -> int:
        """Preference losses are sums over pairs (KTO: over examples)."""
        return int(self.index.numel())

    @property
    def shares_prompt(self) -> bool:
        return self.attention_mask.dim() == 4

    def to(self, device: torch.device | str) -> PairBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PairBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.position_ids),
            move(self.labels),
            move(self.owners),
            move(self.completion_tokens),
            move(self.index),
            self.num_tokens,
            move(self.ref_logps),
            move(self.desirable),
        )

    def sequence_logps(self, token_logps: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs ``[R, L]`` (of :attr:`labels`) summed per completion: ``[P, 2]``."""
        flat = token_logps.reshape(-1)  # [R·L]
        pairs = self.loss_units
        sums = []
        for owner in self.owners.reshape(2, -1):  # [R·L] each
            keep = (owner >= 0).nonzero().squeeze(1)
            total = flat.new_zeros(pairs)
            sums.append(total.index_add(0, owner.index_select(0, keep), flat.index_select(0, keep)))
        return torch.stack(sums, dim=1)


def _finish(
    examples: Sequence[PairExample],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor,
    owners: torch.Tensor,
    num_tokens: int,
    reference: LogpTable | None,
) -> PairBatch:
    index = torch.tensor([example.index for example in examples], dtype=torch.long)
    ref_logps = None
    if reference is not None and reference.values is not None:
        ref_logps = reference.values.index_select(0, index)
    desirable = None
    if examples[0].desirable is not None:
        desirable = torch.tensor([bool(example.desirable) for example in examples])
    return PairBatch(
        input_ids,
        attention_mask,
        position_ids,
        labels,
        owners,
        torch.tensor([example.completion_tokens for example in examples], dtype=torch.float32),
        index,
        num_tokens,
        ref_logps,
        desirable,
    )


def collate_pairs(
    examples: Sequence[PairExample], pad_token_id: int, reference: LogpTable | None = None
) -> PairBatch:
    """The plain layout: the P first sequences, then the P second ones, ``[2P, T]`` right-padded.

    Works for every model; decoders with a 4-D-mask attention kernel take
    :func:`collate_pairs_shared_prompt` instead.
    """
    pairs = len(examples)
    sequences = [example.sequences[k] for k in range(2) for example in examples]  # [2P]
    input_ids, attention_mask = pad_right(sequences, pad_token_id)  # [2P, T]
    width = input_ids.shape[1]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    owners = torch.full((2, *input_ids.shape), -1, dtype=torch.long)
    for k in range(2):
        for p, example in enumerate(examples):
            row, sequence = k * pairs + p, example.sequences[k]
            start = example.starts[k]
            # position t predicts token t + 1; completion tokens start..end are the targets
            labels[row, start - 1 : len(sequence) - 1] = torch.tensor(sequence[start:])
            owners[k, row, start - 1 : len(sequence) - 1] = p
    position_ids = torch.arange(width).expand(2 * pairs, width).contiguous()
    num_tokens = int(attention_mask.sum())
    return _finish(
        examples, input_ids, attention_mask, position_ids, labels, owners, num_tokens, reference
    )


def collate_pairs_shared_prompt(
    examples: Sequence[PairExample], pad_token_id: int, reference: LogpTable | None = None
) -> PairBatch:
    """One row per pair: the shared prompt once, then the first and the second completion.

    The 4-D mask and restarting positions are those of :func:`rlhf.data.pairs.shared_prefix_rows`
    with ``next_token_targets`` (the shared prefix stops one token before the two sequences
    part ways, so every target has one position). A causal decoder gives each completion token
    the log-prob it has in :func:`collate_pairs`' layout, up to float rounding.
    """
    packed = shared_prefix_rows(
        [example.sequences for example in examples], pad_token_id, next_token_targets=True
    )
    labels = torch.full_like(packed.input_ids, IGNORE_INDEX)
    owners = torch.full((2, *packed.input_ids.shape), -1, dtype=torch.long)
    for p, example in enumerate(examples):
        for k, sequence in enumerate(example.sequences):
            # the target sequence[i + 1] is predicted at the column of token i
            targets = range(example.starts[k] - 1, len(sequence) - 1)
            columns = torch.tensor([packed.column(p, k, i) for i in targets], dtype=torch.long)
            labels[p, columns] = torch.tensor(sequence[example.starts[k] :])
            owners[k, p, columns] = p
    return _finish(
        examples,
        packed.input_ids,
        packed.attention_mask,
        packed.position_ids,
        labels,
        owners,
        packed.num_tokens,
        reference,
    )
