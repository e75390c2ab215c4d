"""Conversions between kinds of feedback: everything a recipe needs as pairs or demonstrations.

* implicit prompts: TRL's "preference with implicit prompt" stores whole transcripts in
  ``chosen`` / ``rejected``; the prompt is their shared beginning, cut at a turn boundary.
* rankings of K responses give all K(K−1)/2 ordered pairs (Ouyang et al., 2022, §3.5, train
  the reward model on every pair of a ranking).
* ratings of responses to one prompt give pairs with margin = score difference (Llama 2,
  Touvron et al., 2023, §3.2.2, uses the rating gap as the reward-model margin).
* unpaired binary feedback (KTO, Ethayarajh et al., 2024) from pairs, and back.
* a person's edit of a response is both a preference (edited ≻ original) and a demonstration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from rlhf.data.errors import DataError
from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    Record,
    Text,
    is_blank,
)


class _Prompted(Protocol):
    @property
    def prompt(self) -> Text: ...


R = TypeVar("R", bound=_Prompted)

# Text that opens an assistant turn in common transcript formats; an implicit prompt ends with
# one of them, so the model is asked to answer exactly as at generation time.
ASSISTANT_HEADERS = (
    "\n\nAssistant:",  # Anthropic HH-RLHF transcripts (Bai et al., 2022)
    "<|im_start|>assistant\n",  # ChatML (Qwen, SmolLM)
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    "<|assistant|>\n",  # Zephyr, Phi-3, rlhf.data.chat.DEFAULT_CHAT_TEMPLATE
    "<|assistant|>",
    "<start_of_turn>model\n",  # Gemma
    "[/INST]",  # Llama 2, Mistral
)


def _common_prefix_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix, by bisection on slice comparisons (done in C)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def _string_prompt_end(prefix: str) -> int:
    """Where the prompt ends inside the shared ``prefix`` of two transcripts."""
    header_ends = [
        index + len(header) for header in ASSISTANT_HEADERS if (index := prefix.rfind(header)) >= 0
    ]
    if header_ends:
        return max(header_ends)
    newline = prefix.rfind("\n")
    if newline >= 0:
        return newline + 1
    # the last whitespace character; 0 (no prompt) when there is none
    return next((i + 1 for i in range(len(prefix) - 1, -1, -1) if prefix[i].isspace()), 0)


def extract_implicit_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split two full transcripts into ``(prompt, chosen_response, rejected_response)``.

    Strings: the longest common prefix, cut back to just after the last assistant header in
    it (``"\\n\\nAssistant:"`` of HH-RLHF, or a chat-template header, see
    :data:`ASSISTANT_HEADERS`), else after its last newline, else after its last whitespace.
    Message lists: the longest run of identical leading messages. Raises :class:`DataError`
    when the two are of different formats or nothing would remain of either response.
    """
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(
            None,
            None,
            "rejected",
            "chosen and rejected must both be text or both be message lists",
            reason="mixed_formats",
        )
    if chosen == rejected:
        raise DataError(
            None, None, "rejected", "identical to chosen", reason="chosen_equals_rejected"
        )
    if isinstance(chosen, str):
        shared = _string_prompt_end(chosen[: _common_prefix_length(chosen, rejected)])
    else:
        shared = _common_prefix_length(chosen, rejected)
    prompt, chosen_rest, rejected_rest = chosen[:shared], chosen[shared:], rejected[shared:]
    if is_blank(chosen_rest) or is_blank(rejected_rest):
        raise DataError(
            None, None, "chosen",
            "no implicit prompt: once the shared beginning is cut at a turn boundary nothing "
            "remains of one response; give the prompt in its own column",
            reason="empty_response",
        )  # fmt: skip
    return prompt, chosen_rest, rejected_rest


def ranking_to_pairs(ranking: RankingRecord) -> list[PreferenceRecord]:
    """Every pair of differently ranked responses, better one chosen; margin = rank difference.

    Ties and pairs of identical responses give no pair.
    """
    pairs = []
    for (rank_a, response_a), (rank_b, response_b) in itertools.combinations(
        zip(ranking.ranks, ranking.responses, strict=True), 2
    ):
        if rank_a == rank_b or response_a == response_b:
            continue
        if rank_a < rank_b:
            pairs.append(
                PreferenceRecord(ranking.prompt, response_a, response_b, float(rank_b - rank_a))
            )
        else:
            pairs.append(
                PreferenceRecord(ranking.prompt, response_b, response_a, float(rank_a - rank_b))
            )
    return pairs


def by_prompt(records: Iterable[R]) -> list[list[R]]:
    """``records`` grouped by prompt: one list per distinct prompt, in order of first
    appearance, each in the records' order."""
    groups: dict[Text, list[R]] = {}
    for record in records:
        groups.setdefault(record.prompt, []).append(record)
    return list(groups.values())


def ratings_to_pairs(
    records: Iterable[RatingRecord], keep_ties: bool = False
) -> list[PreferenceRecord]:
    """All pairs of rated responses to the same prompt; margin = score difference.

    Equal scores are dropped unless ``keep_ties`` (a kept tie has margin 0.0 and the first
    rated response as chosen). Pairs of identical responses are dropped. Ratings of one prompt
    on different scales are not comparable and raise :class:`DataError`.
    """
    pairs = []
    for group in by_prompt(records):
        if len({record.scale for record in group}) > 1:
            raise DataError(
                None, None, "scale",
                f"ratings of one prompt on different scales {sorted({r.scale for r in group})}",
                reason="mixed_scales",
            )  # fmt: skip
        for first, second in itertools.combinations(group, 2):
            if first.response == second.response or (first.score == second.score and not keep_ties):
                continue
            better, worse = (second, first) if second.score > first.score else (first, second)
            pairs.append(
                PreferenceRecord(
                    first.prompt, better.response, worse.response, better.score - worse.score
                )
            )
    return pairs


def preference_to_binary(pair: PreferenceRecord) -> list[BinaryRecord]:
    """The pair as unpaired feedback: chosen gets a thumbs up, rejected a thumbs down."""
    return [
        BinaryRecord(pair.prompt, pair.chosen, True),
        BinaryRecord(pair.prompt, pair.rejected, False),
    ]


def binary_to_pairs(records: Iterable[BinaryRecord]) -> list[PreferenceRecord]:
    """Every liked × disliked completion of the same prompt as a pair."""
    groups: dict[Text, tuple[list[Text], list[Text]]] = {}
    for record in records:
        liked, disliked = groups.setdefault(record.prompt, ([], []))
        (liked if record.label else disliked).append(record.completion)
    return [
        PreferenceRecord(prompt, good, bad)
        for prompt, (liked, disliked) in groups.items()
        for good, bad in itertools.product(liked, disliked)
        if good != bad
    ]


def edit_to_pair(edit: EditRecord) -> PreferenceRecord:
    """Edited ≻ original as a pair; an unchanged edit raises :class:`DataError`."""
    if edit.edited == edit.original:
        raise DataError(
            None, None, "edited", "identical to original: an unchanged edit is no preference",
            reason="chosen_equals_rejected",
        )  # fmt: skip
    return PreferenceRecord(edit.prompt, edit.edited, edit.original)


def edit_to_demonstration(edit: EditRecord) -> CompletionRecord:
    """The edited response as a demonstration for SFT."""
    return CompletionRecord(edit.prompt, edit.edited)


def _not_convertible(record: Record, target: str) -> DataError:
    return DataError(
        None,
        None,
        None,
        f"cannot make {target} from a {record.kind} record",
        reason="not_convertible",
    )


def as_preferences(
    records: Sequence[Record] | Iterable[Record], keep_rating_ties: bool = False
) -> list[PreferenceRecord]:
    """Pairs from anything that orders responses: preferences as they are, rankings, ratings
    (paired within a prompt), binary feedback (liked × disliked within a prompt) and edits
    (unchanged edits dropped). Other kinds raise :class:`DataError` (``not_convertible``).
    """
    pairs: list[PreferenceRecord] = []
    ratings: list[RatingRecord] = []
    binaries: list[BinaryRecord] = []
    for record in records:
        if isinstance(record, PreferenceRecord):
            pairs.append(record)
        elif isinstance(record, RankingRecord):
            pairs.extend(ranking_to_pairs(record))
        elif isinstance(record, RatingRecord):
            ratings.append(record)
        elif isinstance(record, BinaryRecord):
            binaries.append(record)
        elif isinstance(record, EditRecord):
            if record.edited != record.original:
                pairs.append(edit_to_pair(record))
        else:
            raise _not_convertible(record, "preference pairs")
    return pairs + ratings_to_pairs(ratings, keep_rating_ties) + binary_to_pairs(binaries)


def as_demonstrations(
    records: Iterable[Record],
) -> list[CompletionRecord | ConversationRecord]:
    """Demonstrations for SFT: completions and conversations as they are, an edit's edited
    response, a preference's chosen response and a liked binary completion (disliked ones are
    dropped). Other kinds raise :class:`DataError` (``not_convertible``).
    """
    demonstrations: list[CompletionRecord | ConversationRecord] = []
    for record in records:
        if isinstance(record, CompletionRecord | ConversationRecord):
            demonstrations.append(record)
        elif isinstance(record, EditRecord):
            demonstrations.append(edit_to_demonstration(record))
        elif isinstance(record, PreferenceRecord):
            demonstrations.append(CompletionRecord(record.prompt, record.chosen))
        elif isinstance(record, BinaryRecord):
            if record.label:
                demonstrations.append(CompletionRecord(record.prompt, record.completion))
        else:
            raise _not_convertible(record, "demonstrations")
    return demonstrations
