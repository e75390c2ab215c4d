"""Comparisons for reward models: prompt groups, their tokenisation and batches.

A reward model reads each (prompt, response) as one sequence and gives it one number. Training
compares the numbers of responses to the same prompt, so the unit of data is a *prompt group*:
the distinct responses to one prompt and the ordered pairs among them. Every response of a
group is forwarded once, however many pairs it is in, and the pairs index into the group's
rewards — InstructGPT's batching of a ranking of K responses, whose C(K, 2) comparisons
cost K forward passes instead of K(K − 1) (Ouyang et al., 2022, §3.5). A plain preference pair
is a group of two responses and one pair; pairs of one prompt from several rows (ratings,
rankings, repeated prompts) merge into one group.

Sequences are ``prompt + response`` tokenised together by
:func:`rlhf.data.tokenize.tokenize_prompt_response` (BOS by the tokenizer's convention, EOS
after a plain-text response, the prompt's start cut first when too long), wrapped in the
tokenizer's own sequence markers when it has them beyond BOS/EOS (BERT's ``[CLS] … [SEP]``),
and right-padded. A decoder's reward is read at the last real token, the rightmost non-pad
token, exactly where ``*ForSequenceClassification`` of transformers reads it; encoders pool
their own way (BERT: the ``[CLS]`` token).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.data.convert import as_preferences
from rlhf.data.errors import DataError
from rlhf.data.records import PreferenceRecord, Record, Text
from rlhf.data.tokenize import (
    NO_CUT,
    Cut,
    TooLongError,
    Truncation,
    TruncationReport,
    adds_bos,
    tokenize_prompt_response_cut,
)

logger = logging.getLogger("rlhf.data")


@dataclass(frozen=True, slots=True)
class PreferenceGroup:
    """The compared responses to one prompt."""

    prompt: Text
    responses: tuple[Text, ...]  # [K] distinct responses
    chosen: tuple[int, ...]  # [P] index into responses of each pair's preferred response
    rejected: tuple[int, ...]  # [P] index of each pair's other response
    margins: tuple[float | None, ...]  # [P] the data's margin of each pair, None if it gave none

    @property
    def num_pairs(self) -> int:
        return len(self.chosen)


def group_pairs(pairs: Iterable[PreferenceRecord]) -> list[PreferenceGroup]:
    """Merge pairs into one group per prompt (first-seen order), each response listed once.

    Use :func:`rlhf.data.convert.as_preferences` first to turn rankings (all pairs, ties
    skipped, margin = rank difference), ratings (pairs within a prompt, margin = score
    difference), binary feedback and edits into pairs.
    """
    building: dict[Text, tuple[dict[Text, int], list[tuple[int, int, float | None]]]] = {}
    for pair in pairs:
        responses, comparisons = building.setdefault(pair.prompt, ({}, []))
        chosen = responses.setdefault(pair.chosen, len(responses))
        rejected = responses.setdefault(pair.rejected, len(responses))
        comparisons.append((chosen, rejected, pair.margin))
    groups = []
    for prompt, (responses, comparisons) in building.items():
        chosen, rejected, margins = zip(*comparisons, strict=True)
        groups.append(PreferenceGroup(prompt, tuple(responses), chosen, rejected, margins))
    return groups


def preference_groups(records: Sequence[Record], source: str = "data") -> list[PreferenceGroup]:
    """Records of any comparing kind (pairs, rankings, ratings, thumbs, edits) as one group of
    pairs per prompt; a record that compares nothing (e.g. a demonstration) is a
    :class:`DataError` naming ``source``."""
    try:
        return group_pairs(as_preferences(records))
    except DataError as error:  # e.g. demonstrations given where comparisons belong
        raise DataError(source, None, error.field, error.message, reason=error.reason) from None


# ------------------------------------------------------------------------------ tokenisation


def _sequence_markers(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts around one sequence, besides a leading BOS and a
    trailing EOS (which :func:`tokenize_prompt_response` writes itself): ``([CLS], [SEP])`` for
    BERT, ``([], [])`` for decoder tokenizers."""
    cached = getattr(tokenizer, "_rlhf_sequence_markers", None)
    if cached is None:
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        start = next(
            (i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None
        )
        if not bare or start is None:
            cached = ([], [])
        else:
            prefix, suffix = list(full[:start]), list(full[start + len(bare) :])
            if prefix[:1] == [tokenizer.bos_token_id] and adds_bos(tokenizer):
                prefix = prefix[1:]
            if suffix[-1:] == [tokenizer.eos_token_id]:
                suffix = suffix[:-1]
            cached = (prefix, suffix)
        tokenizer._rlhf_sequence_markers = cached
    return cached


def tokenize_for_reward(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> list[int]:
    """Token ids [T] of one (prompt, response) sequence as a reward model reads it.

    ``tokenize_prompt_response`` (the prompt's start is cut first when the sequence is longer
    than ``max_length``), wrapped in the tokenizer's sequence markers when it has any (see
    :func:`_sequence_markers`). Raises :class:`~rlhf.data.tokenize.TooLongError` under
    ``truncation="drop"``.
    """
    return tokenize_for_reward_cut(tokenizer, prompt, response, max_length, truncation)[0]


def tokenize_for_reward_cut(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> tuple[list[int], Cut]:
    """:func:`tokenize_for_reward` and what truncation took from the sequence."""
    prefix, suffix = _sequence_markers(tokenizer)
    extra = len(prefix) + len(suffix)
    budget = None if max_length is None else max_length - extra
    if budget is not None and budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a prompt and a response")
    ids, _, cut = tokenize_prompt_response_cut(tokenizer, prompt, response, budget, truncation)
    return ([*prefix, *ids, *suffix] if extra else ids), cut


@dataclass(frozen=True, slots=True)
class TokenizedGroup:
    """A prompt group as token ids."""

    sequences: tuple[tuple[int, ...], ...]  # [K][T_k] prompt + response ids of each response
    chosen: tuple[int, ...]  # [P] index into sequences of each pair's preferred response
    rejected: tuple[int, ...]  # [P] index of each pair's other response
    margins: tuple[float, ...]  # [P] the data's margin, 0.0 where it gave none

    @property
    def num_pairs(self) -> int:
        return len(self.chosen)

    @property
    def num_tokens(self) -> int:
        return sum(len(sequence) for sequence in self.sequences)


def tokenize_groups(
    tokenizer: Any,
    groups: Iterable[PreferenceGroup],
    max_length: int | None,
    truncation: Truncation = "truncate",
    *,
    report: TruncationReport | None = None,
) -> list[TokenizedGroup]:
    """Tokenise every response of every group once, counting (and logging) what is dropped.

    Dropped: responses longer than ``max_length`` under ``truncation="drop"`` (with their
    pairs), and pairs whose two sequences are identical once truncated (a comparison the model
    cannot see; it would only add ln 2 to the loss). A group left with no pair is dropped.
    ``report`` (when given) counts every pair: truncated (the larger cut of its two
    sequences) or dropped.
    """
    tokenized = []
    if report is None:
        report = TruncationReport(max_length, "pairs")
    before = report.dropped.copy()
    for group in groups:
        sequences: list[tuple[int, ...] | None] = []
        cuts: list[Cut] = []
        for response in group.responses:
            try:
                ids, cut = tokenize_for_reward_cut(
                    tokenizer, group.prompt, response, max_length, truncation
                )
            except TooLongError:
                sequences.append(None)
                cuts.append(NO_CUT)
                continue
            sequences.append(tuple(ids))
            cuts.append(cut)
        kept = []
        for chosen, rejected, margin in zip(
            group.chosen, group.rejected, group.margins, strict=True
        ):
            if sequences[chosen] is None or sequences[rejected] is None:
                report.drop("longer than max_length")
            elif sequences[chosen] == sequences[rejected]:
                report.drop("identical after truncation")
            else:
                report.add(cuts[chosen] | cuts[rejected])
                kept.append((chosen, rejected, 0.0 if margin is None else float(margin)))
        if not kept:
            continue
        # renumber the responses that some kept pair uses
        used = sorted({index for chosen, rejected, _ in kept for index in (chosen, rejected)})
        new_index = {old: new for new, old in enumerate(used)}
        tokenized.append(
            TokenizedGroup(
                tuple(sequences[old] for old in used),  # type: ignore[misc]
                tuple(new_index[chosen] for chosen, _, _ in kept),
                tuple(new_index[rejected] for _, rejected, _ in kept),
                tuple(margin for _, _, margin in kept),
            )
        )
    dropped = report.dropped - before
    if dropped:
        logger.warning("dropped %d pairs: %s", sum(dropped.values()), dict(dropped))
    return tokenized


# ------------------------------------------------------------------------------ batches


def pad_right(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids: ``(input_ids [N, T], attention_mask [N, T])``, 1 on real tokens."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


@dataclass
class RewardBatch:
    """Prompt groups as one batch: every response once, the pairs as indices into it."""

    input_ids: torch.Tensor  # [N, T] prompt + response ids of the N responses, right-padded
    attention_mask: torch.Tensor  # [N, T] 1 on real tokens, 0 on padding
    chosen_index: torch.Tensor  # [P] row of each pair's preferred response
    rejected_index: torch.Tensor  # [P] row of each pair's other response
    margin: torch.Tensor  # [P] the data's margin of each pair (0.0 where it gave none)
    num_tokens: int  # real (non-pad) tokens
    # Shared-prefix packing (decoders, see collate_groups_shared_prefix): one row per prompt
    # group, its responses after their common prefix; None in the one-row-per-response layout.
    position_ids: torch.Tensor | None = None  # [G, L]
    response_end: torch.Tensor | None = None  # [N] flat index (row·L + column) of each last token

    @property
    def loss_units(self) -> int:
        """The Bradley–Terry loss is a sum over pairs (see ``rlhf.losses.reward``)."""
        return int(self.chosen_index.numel())

    def to(self, device: torch.device | str) -> RewardBatch:
        return RewardBatch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            self.chosen_index.to(device, non_blocking=True),
            self.rejected_index.to(device, non_blocking=True),
            self.margin.to(device, non_blocking=True),
            self.num_tokens,
            None if self.position_ids is None else self.position_ids.to(device, non_blocking=True),
            None if self.response_end is None else self.response_end.to(device, non_blocking=True),
        )


def collate_groups(groups: Sequence[TokenizedGroup], pad_token_id: int) -> RewardBatch:
    """Stack the groups' sequences (right-padded) and offset their pair indices into the rows."""
    sequences: list[tuple[int, ...]] = []
    chosen: list[int] = []
    rejected: list[int] = []
    margins: list[float] = []
    for group in groups:
        offset = len(sequences)
        sequences.extend(group.sequences)
        chosen.extend(offset + index for index in group.chosen)
        rejected.extend(offset + index for index in group.rejected)
        margins.extend(group.margins)
    input_ids, attention_mask = pad_right(sequences, pad_token_id)
    return RewardBatch(
        input_ids,
        attention_mask,
        torch.tensor(chosen, dtype=torch.long),
        torch.tensor(rejected, dtype=torch.long),
        torch.tensor(margins, dtype=torch.float32),
        sum(len(sequence) for sequence in sequences),
    )


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens all ``sequences`` start with, leaving at least one token of each after it."""
    limit = min(len(sequence) for sequence in sequences) - 1
    length = 0
    while length < limit and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return length


@dataclass
class SharedPrefixRows:
    """Groups of sequences, one row per group: the common prefix once, then each suffix."""

    input_ids: torch.Tensor  # [G, L] prefix + suffix_1 + … + suffix_K of each group, right-padded
    attention_mask: torch.Tensor  # [G, 1, L, L] bool, True where a query may attend to a key
    position_ids: torch.Tensor  # [G, L] positions of each token in its own sequence
    prefix_lengths: list[int]  # [G] tokens of the shared prefix (columns 0 .. prefix − 1)
    suffix_columns: list[list[int]]  # [G][K] column where each sequence's own suffix starts
    num_tokens: int  # real (non-pad) tokens

    def column(self, group: int, sequence: int, index: int) -> int:
        """The column of token ``index`` of sequence ``sequence`` of group ``group``."""
        prefix = self.prefix_lengths[group]
        return index if index < prefix else self.suffix_columns[group][sequence] + index - prefix


def shared_prefix_rows(
    groups: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    *,
    next_token_targets: bool = False,
) -> SharedPrefixRows:
    """Groups of token sequences as one row each: their common prefix once, then every suffix.

    For a causal decoder the prefix's hidden states do not depend on what follows, so it is
    computed once per group instead of once per sequence: row ``g`` holds ``prefix + suffix_1
    + … + suffix_K`` and a 4-D mask ``[G, 1, L, L]`` (True = may attend) lets each suffix token
    see the prefix and the earlier tokens of its own suffix only; each suffix's positions
    continue from the prefix, so every token's hidden state equals that of the one-row-per-
    sequence layout (up to float rounding). Pad positions attend to themselves only (a row with
    nothing to attend to would give NaN).

    ``next_token_targets``: the prefix stops one token before the sequences part ways, so the
    prefix's last position predicts a token all of them share; then every next-token target
    of every sequence has exactly one position (a language model's log-probs need this). By
    default the prefix is the whole common prefix (a reward read at each sequence's end).
    """
    rows: list[list[int]] = []
    segments: list[list[int]] = []  # 0: the prefix, k ≥ 1: sequence k's suffix
    positions: list[list[int]] = []
    prefixes: list[int] = []
    starts: list[list[int]] = []
    for sequences in groups:
        prefix = common_prefix_length(sequences)
        if next_token_targets:
            prefix = max(prefix - 1, 0)
        row, segment = list(sequences[0][:prefix]), [0] * prefix
        position, columns = list(range(prefix)), []
        for k, sequence in enumerate(sequences, start=1):
            suffix = sequence[prefix:]
            columns.append(len(row))
            row.extend(suffix)
            segment.extend([k] * len(suffix))
            position.extend(range(prefix, prefix + len(suffix)))
        rows.append(row)
        segments.append(segment)
        positions.append(position)
        prefixes.append(prefix)
        starts.append(columns)
    input_ids, real = pad_right(rows, pad_token_id)
    width = input_ids.shape[1]
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for index, (seg, pos) in enumerate(zip(segments, positions, strict=True)):
        segment[index, : len(seg)] = torch.tensor(seg, dtype=torch.long)
        position_ids[index, : len(pos)] = torch.tensor(pos, dtype=torch.long)
    query, key = segment[:, :, None], segment[:, None, :]  # [G, L, 1], [G, 1, L]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = (key == 0) | (key == query)
    mask = causal & visible & real.bool()[:, None, :] & real.bool()[:, :, None]
    mask |= torch.eye(width, dtype=torch.bool)  # pad queries see themselves (no NaN)
    return SharedPrefixRows(
        input_ids, mask[:, None], position_ids, prefixes, starts, int(real.sum())
    )


def collate_groups_shared_prefix(
    groups: Sequence[TokenizedGroup], pad_token_id: int
) -> RewardBatch:
    """Prompt groups as one row each (:func:`shared_prefix_rows`): the responses' common
    prefix once, then every response. ``response_end`` indexes the flattened ``[G·L]``
    positions of the responses' last tokens; ``input_ids`` is ``[G, L]`` and
    ``attention_mask`` the 4-D mask.
    """
    packed = shared_prefix_rows([group.sequences for group in groups], pad_token_id)
    width = packed.input_ids.shape[1]
    ends: list[int] = []
    chosen: list[int] = []
    rejected: list[int] = []
    margins: list[float] = []
    for g, group in enumerate(groups):
        offset = len(ends)
        for k, sequence in enumerate(group.sequences):
            ends.append(g * width + packed.column(g, k, len(sequence) - 1))
        chosen.extend(offset + index for index in group.chosen)
        rejected.extend(offset + index for index in group.rejected)
        margins.extend(group.margins)
    return RewardBatch(
        packed.input_ids,
        packed.attention_mask,
        torch.tensor(chosen, dtype=torch.long),
        torch.tensor(rejected, dtype=torch.long),
        torch.tensor(margins, dtype=torch.float32),
        packed.num_tokens,
        packed.position_ids,
        torch.tensor(ends, dtype=torch.long),
    )
