"""Batches: padding, packing and the typed batch every language-model recipe trains on.

Training sequences are right-padded (real tokens first, so position ids are 0..n-1 without
help); prompts for generation are left-padded so every row's next token is at the same column.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhf.data.tokenize import TokenizedExample

IGNORE_INDEX = -100


@dataclass
class LMBatch:
    """A batch for next-token training (SFT, pretraining)."""

    input_ids: torch.Tensor  # [B, T] token ids, right-padded with the pad id
    attention_mask: torch.Tensor | None  # [B, T] 1 on real tokens; None when packed
    position_ids: torch.Tensor  # [B, T] restart at 0 at each packed sequence's first token
    labels: torch.Tensor  # [B, T] target token at each position (already shifted), -100 = no loss
    num_loss_tokens: int  # labels != -100, counted once here rather than at every use
    num_tokens: int  # real (non-pad) tokens

    @property
    def loss_units(self) -> int:
        """SFT's loss is a sum over target tokens (see ``rlhf.losses.sft``)."""
        return self.num_loss_tokens

    def to(self, device: torch.device | str) -> LMBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return LMBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.position_ids),
            move(self.labels),
            self.num_loss_tokens,
            self.num_tokens,
        )


def _shifted_labels(example_ids: Sequence[int], loss_mask: Sequence[bool]) -> list[int]:
    """Target at position t is token t+1 when token t+1 is a loss token, else -100."""
    labels = [
        token if keep else IGNORE_INDEX
        for token, keep in zip(example_ids[1:], loss_mask[1:], strict=True)
    ]
    return [*labels, IGNORE_INDEX]


def collate_padded(examples: Sequence[TokenizedExample], pad_token_id: int) -> LMBatch:
    """Right-pad examples into one batch, one example per row."""
    width = max(len(example) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(_shifted_labels(example.input_ids, example.loss_mask))
        attention_mask[row, :length] = 1
    position_ids = torch.arange(width).expand(len(examples), width).contiguous()
    num_loss_tokens = int((labels != IGNORE_INDEX).sum())
    # a batch with no padding needs no mask: the attention kernels take their fast causal path
    mask = None if bool(attention_mask.all()) else attention_mask
    num_tokens = sum(len(example) for example in examples)
    return LMBatch(input_ids, mask, position_ids, labels, num_loss_tokens, num_tokens)


def collate_packed(rows: Sequence[Sequence[TokenizedExample]], pad_token_id: int) -> LMBatch:
    """One row per pack of examples; position ids restart per example.

    With ``attention_mask=None`` and restarting position ids, transformers' attention builds a
    block-diagonal causal mask (each token sees only its own sequence), so packing changes
    neither the logits nor the loss of any example.
    """
    width = max(sum(len(example) for example in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        start = 0
        for example in row:
            stop = start + len(example)
            input_ids[row_index, start:stop] = torch.tensor(example.input_ids)
            labels[row_index, start:stop] = torch.tensor(
                _shifted_labels(example.input_ids, example.loss_mask)
            )
            position_ids[row_index, start:stop] = torch.arange(len(example))
            start = stop
        # the tail padding is a sequence of its own (positions restart), attending to nothing real
        position_ids[row_index, start:] = torch.arange(width - start)
    num_loss_tokens = int((labels != IGNORE_INDEX).sum())
    num_tokens = sum(len(example) for row in rows for example in row)
    return LMBatch(input_ids, None, position_ids, labels, num_loss_tokens, num_tokens)


def pack_examples(
    examples: Sequence[TokenizedExample], max_length: int
) -> list[list[TokenizedExample]]:
    """Group examples into packs of at most ``max_length`` tokens (best-fit decreasing).

    Examples stay whole; longer ones must be truncated first. Best-fit decreasing wastes
    little space (typically under 2% padding) and is deterministic for a given input order.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]), reverse=True)
    packs: list[list[TokenizedExample]] = []
    free: list[tuple[int, int]] = []  # sorted (free tokens, pack index)
    for index in order:
        example = examples[index]
        if len(example) > max_length:
            raise ValueError(f"example of {len(example)} tokens exceeds max_length {max_length}")
        slot = bisect.bisect_left(free, (len(example), -1))
        if slot < len(free):
            room, pack_index = free.pop(slot)
        else:
            room, pack_index = max_length, len(packs)
            packs.append([])
        packs[pack_index].append(example)
        bisect.insort(free, (room - len(example), pack_index))
    return packs


def collate_prompts_left(
    prompts: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompt token ids for generation: ``(input_ids [B, T], attention_mask [B, T])``."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask
