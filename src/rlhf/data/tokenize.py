"""Tokenisation: records → token ids with a loss mask.

Rules every recipe relies on:

* Prompt and response are rendered to one string and tokenised **together**; the boundary is
  found through character offsets. Tokenising them apart can split a word differently at the
  seam and, with many tokenizers, inserts a second BOS in the middle.
* BOS follows the tokenizer's own convention (added once when ``tokenizer(text)`` would add
  it, never doubled when a chat template already writes it). EOS ends every plain-text
  response; chat templates end assistant turns themselves.
* Loss masks: completion tokens only for prompt→completion data; every assistant turn (and
  only those) for multi-turn conversations; every token for plain text.
* Truncation policy (``max_length``): plain text and conversations keep their start. A
  prompt→completion pair first loses the *start of the prompt* (the part furthest from the
  response), and only when the completion alone is too long is the completion cut at its end,
  leaving at least :data:`MIN_PROMPT_TOKENS` of the prompt. ``truncation="drop"`` skips
  over-long examples instead.
* Nothing is cut silently: each tokenising function knows what it cut (a :class:`Cut`: how
  many tokens, on which side) and a :class:`TruncationReport` per split sums it up for the
  recipes' log line and ``metrics.jsonl`` row and for ``rlhf data check --model``.
* Cost bounded by ``max_length``, not by the row: before rendering and tokenising, each text
  (each message's content) is cut to the characters that ``max_length`` tokens can come from
  (:func:`cut_text`), on the side truncation drops anyway: the prompt's start, the response's
  end, the end of plain text and of conversation messages. Tokenised whole, a 50 MB row took
  18 GB (a tokenizer's encoding costs hundreds of bytes per token) only to keep
  ``max_length`` tokens of it. The kept tokens are those of the whole text (tested).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhf.data.chat import render_chat
from rlhf.data.records import (
    CompletionRecord,
    ConversationRecord,
    Message,
    Text,
    TextRecord,
)

Truncation = Literal["truncate", "drop"]
MIN_PROMPT_TOKENS = 8
# tokens kept beyond max_length when cutting text before tokenisation, so that the tokens near
# the cut (a word split in two, a merge that no longer happens) are never among the kept ones
CUT_MARGIN_TOKENS = 32


Side = Literal["prompt start", "response end", "text end"]


@dataclass(frozen=True, slots=True)
class Cut:
    """What truncation to ``max_length`` took from one sequence (or from one row of several
    sequences, merged with ``|``). Falsy when nothing was cut."""

    tokens: int = 0  # tokens of the whole text that are not in the sequence
    sides: frozenset[Side] = frozenset()  # where they were taken from
    # ``tokens`` is a lower bound: the text was cut before tokenisation (:func:`cut_text`), so
    # the tokens of the part cut off there were never counted
    at_least: bool = False

    def __bool__(self) -> bool:
        return self.tokens > 0

    def __or__(self, other: Cut) -> Cut:
        """The cut of a row of two sequences (a pair's completions): the larger one, every
        side; a lower bound when either count is one."""
        return Cut(
            max(self.tokens, other.tokens),
            self.sides | other.sides,
            self.at_least or other.at_least,
        )


NO_CUT = Cut()


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    """One training sequence."""

    input_ids: list[int]  # [T] token ids, no padding
    loss_mask: list[bool]  # [T] True where the token is a prediction target
    # what truncation took from the example (not part of its identity: equal ids, equal example)
    cut: Cut = field(default=NO_CUT, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


class TooLongError(ValueError):
    """An example longer than ``max_length`` under ``truncation="drop"``."""


@dataclass
class TruncationReport:
    """What truncation and dropping did to the rows of one split.

    The tokenising functions of the data layer fill it (:meth:`add` per tokenised row,
    :meth:`drop` per dropped one); recipes log :meth:`log_line` and write :meth:`metrics` to
    ``metrics.jsonl``, and ``rlhf data check --model`` prints :meth:`describe`. A row is what the
    recipe trains on: an SFT example, a preference pair (truncated when either completion's
    sequence is; the larger cut counts), a reward model's pair.
    """

    max_length: int | None
    unit: str = "examples"  # what a row is, for the log line: examples, pairs, rows
    rows: int = 0  # rows seen, dropped ones included
    cuts: list[int] = field(default_factory=list)  # tokens cut from each truncated row
    sides: Counter[str] = field(default_factory=Counter)  # truncated rows per side cut
    lower_bounds: int = 0  # truncated rows whose count is a lower bound (Cut.at_least)
    dropped: Counter[str] = field(default_factory=Counter)  # dropped rows per reason

    def add(self, cut: Cut) -> None:
        """One row kept, with what truncation took from it."""
        self.rows += 1
        if cut:
            self.cuts.append(cut.tokens)
            self.sides.update(cut.sides)
            self.lower_bounds += cut.at_least

    def drop(self, reason: str) -> None:
        """One row dropped (``"longer than max_length"``, ...)."""
        self.rows += 1
        self.dropped[reason] += 1

    @property
    def truncated(self) -> int:
        return len(self.cuts)

    def summary(self) -> dict[str, float]:
        """Rows, truncated rows, the median and largest number of tokens cut, dropped rows."""
        return {
            "rows": float(self.rows),
            "truncated": float(self.truncated),
            "truncated_median_tokens": float(statistics.median(self.cuts)) if self.cuts else 0.0,
            "truncated_max_tokens": float(max(self.cuts, default=0)),
            "dropped": float(self.dropped.total()),
        }

    def describe(self, setting: str = "max_length") -> str:
        """``54 of 200 examples truncated to max_length=512 (prompt start cut; median 37
        tokens, max 410 cut); 0 dropped``; ``setting`` names the limit as the reader sets it."""
        text = f"{self.truncated:,} of {self.rows:,} {self.unit} truncated to {setting}={self.max_length}"
        if self.cuts:
            sides = [
                side for side in ("prompt start", "response end", "text end") if self.sides[side]
            ]
            where = (
                f"{sides[0]} cut"
                if len(sides) == 1
                else f"{sides[0]} cut in {self.sides[sides[0]]:,}, "
                + ", ".join(f"{side} in {self.sides[side]:,}" for side in sides[1:])
            )
            summary = self.summary()
            text += (
                f" ({where}; median {summary['truncated_median_tokens']:g} tokens, "
                f"max {summary['truncated_max_tokens']:g} cut"
            )
            if self.lower_bounds:
                text += (
                    f"; {self.lower_bounds:,} too long to tokenise in full, "
                    "their counts are lower bounds"
                )
            text += ")"
        text += f"; {self.dropped.total():,} dropped"
        if self.dropped:
            text += " (" + ", ".join(f"{reason}: {n:,}" for reason, n in self.dropped.items()) + ")"
        return text

    def log_line(self, split: str, setting: str = "data.max_length") -> str:
        """:meth:`describe` for one split of a run: ``train: 54 of 200 examples ...``."""
        return f"{split}: {self.describe(setting)}"

    def metrics(self, split: str) -> dict[str, float]:
        """The summary as ``metrics.jsonl`` keys: ``data_train_truncated``, ...."""
        return {f"data_{split}_{key}": value for key, value in self.summary().items()}


def messages_as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": message.role, "content": message.content} for message in messages]


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's own convention starts a sequence with BOS."""
    cached = getattr(tokenizer, "_rlhf_adds_bos", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        cached = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [
            bos
        ]
        tokenizer._rlhf_adds_bos = cached
    return cached


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters of text one token can stand for: its longest vocabulary entry.

    Byte-level BPE spells a token with one character per byte and SentencePiece with one per
    character (``▁`` for a space), so an entry is never shorter than the text it covers. Where
    that fails (a normaliser that drops characters, an unknown token for a long word),
    :func:`cut_text` notices and widens its cut.
    """
    cached = getattr(tokenizer, "_rlhf_longest_token", None)
    if cached is None:
        cached = max(map(len, tokenizer.get_vocab()), default=1)
        tokenizer._rlhf_longest_token = cached
    return cached


def cut_text(tokenizer: Any, text: Text, max_tokens: int, keep: Literal["start", "end"]) -> Text:
    """``text`` cut to the characters that its first (``keep="start"``) or last (``"end"``)
    ``max_tokens`` tokens come from; in a message list, each message's content on its own.
    Text within the budget is returned as it is (the same object).

    The budget is ``max_tokens`` + :data:`CUT_MARGIN_TOKENS` tokens of
    :func:`longest_token_chars` characters each; a cut piece that tokenises to fewer tokens
    than that is widened (doubling) until it holds them, so the tokens that truncation to
    ``max_tokens`` keeps are those of the whole text.
    """
    if not isinstance(text, str):
        contents = [cut_text(tokenizer, m.content, max_tokens, keep) for m in text]
        if all(cut is m.content for cut, m in zip(contents, text, strict=True)):
            return text
        return tuple(Message(m.role, cut) for m, cut in zip(text, contents, strict=True))
    needed = max_tokens + CUT_MARGIN_TOKENS
    chars = needed * longest_token_chars(tokenizer)
    while len(text) > chars:
        piece = text[:chars] if keep == "start" else text[-chars:]
        if len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]) >= needed:
            return piece
        chars *= 2
    return text


def _cut_or_drop(
    tokenizer: Any,
    text: Text,
    max_length: int,
    keep: Literal["start", "end"],
    truncation: Truncation,
) -> Text:
    """:func:`cut_text`, or :class:`TooLongError` under ``truncation="drop"`` when it cuts."""
    cut = cut_text(tokenizer, text, max_length, keep)
    if cut is not text and truncation == "drop":
        raise TooLongError(f"more than {max_length} tokens (max_length)")
    return cut


def _encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and the character offset where each token ends."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in encoded["offset_mapping"]]
    ids = list(encoded["input_ids"])
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
        ends.insert(0, 0)
    return ids, ends


def _mask_spans(ends: list[int], spans: Iterable[tuple[int, int]]) -> list[bool]:
    """True for tokens that end inside one of the character spans ``[start, stop)``.

    A token counts as part of a span when its last character lies in it, so a token that
    straddles the prompt/response seam is trained on (it carries response text).
    """
    spans = list(spans)
    mask = [False] * len(ends)
    for index, end in enumerate(ends):
        mask[index] = any(start < end <= stop for start, stop in spans)
    return mask


def render_prompt_and_response(tokenizer: Any, prompt: Text, response: Text) -> tuple[str, int]:
    """The full text of ``prompt`` followed by ``response`` and where the response starts.

    Plain strings are concatenated as they are and the tokenizer's EOS is appended; message
    lists go through the chat template (the prompt rendered with the generation prompt).
    """
    if isinstance(prompt, str) != isinstance(response, str):
        raise ValueError("prompt and response must both be text or both be message lists")
    if isinstance(prompt, str):
        return prompt + response + (tokenizer.eos_token or ""), len(prompt)
    prompt_text = render_chat(tokenizer, messages_as_dicts(prompt), add_generation_prompt=True)
    full_text = render_chat(tokenizer, messages_as_dicts((*prompt, *response)))
    if not full_text.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the prompt differently once a response follows; "
            "cannot locate the response tokens"
        )
    return full_text, len(prompt_text)


def tokenize_prompt_response(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> tuple[list[int], int]:
    """Token ids of prompt + response and the index of the first response token.

    Applies the truncation policy of this module's docstring; the response always keeps at
    least one token. Used by SFT (loss on the response) and by preference recipes.
    """
    ids, boundary, _ = tokenize_prompt_response_cut(
        tokenizer, prompt, response, max_length, truncation
    )
    return ids, boundary


def tokenize_prompt_response_cut(
    tokenizer: Any,
    prompt: Text,
    response: Text,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> tuple[list[int], int, Cut]:
    """:func:`tokenize_prompt_response` and what truncation took: the prompt's start, the
    response's end, how many tokens."""
    sides: set[Side] = set()  # sides cut before tokenisation, then also after it
    if max_length is not None:
        cut_prompt = _cut_or_drop(tokenizer, prompt, max_length, "end", truncation)
        cut_response = _cut_or_drop(tokenizer, response, max_length, "start", truncation)
        if cut_prompt is not prompt:
            sides.add("prompt start")
        if cut_response is not response:
            sides.add("response end")
        prompt, response = cut_prompt, cut_response
    precut = bool(sides)
    text, response_start = render_prompt_and_response(tokenizer, prompt, response)
    ids, ends = _encode_with_offsets(tokenizer, text)
    # first token whose last character is response text
    boundary = next((i for i, end in enumerate(ends) if end > response_start), len(ids))
    if boundary >= len(ids):
        raise ValueError("the response is empty after tokenisation")
    if max_length is None or len(ids) <= max_length:
        return ids, boundary, NO_CUT
    if truncation == "drop":
        raise TooLongError(f"{len(ids)} tokens > max_length {max_length}")
    kept, kept_boundary = _truncate_pair(ids, boundary, max_length, adds_bos(tokenizer))
    if kept_boundary < boundary:
        sides.add("prompt start")
    if len(kept) - kept_boundary < len(ids) - boundary:
        sides.add("response end")
    return kept, kept_boundary, _cut(len(ids) - len(kept), sides, precut)


def _cut(tokens: int, sides: Iterable[Side], precut: bool) -> Cut:
    """The :class:`Cut` of ``tokens`` tokens dropped from an encoding. ``precut``: the text was
    cut before it was encoded (:func:`cut_text`), so the part cut off then is not among the
    ``tokens``; the count is a lower bound, one token less in case that part's last characters
    would have merged with the first encoded ones into one token."""
    if precut:
        return Cut(max(tokens - 1, 1), frozenset(sides), at_least=True)
    return Cut(tokens, frozenset(sides))


def _truncate_pair(
    ids: list[int], boundary: int, max_length: int, keep_bos: bool
) -> tuple[list[int], int]:
    head = ids[:1] if keep_bos else []
    prompt, response = ids[len(head) : boundary], ids[boundary:]
    budget = max_length - len(head)
    prompt_floor = max(min(len(prompt), MIN_PROMPT_TOKENS, budget - 1), 0)
    if len(response) <= budget - prompt_floor:
        prompt_keep = budget - len(response)  # the whole response fits: cut the prompt's start
    else:
        prompt_keep = prompt_floor  # cut the response's end too
    prompt = prompt[len(prompt) - prompt_keep :] if prompt_keep else []
    response = response[: budget - len(prompt)]
    return head + prompt + response, len(head) + len(prompt)


def tokenize_record(
    tokenizer: Any,
    record: CompletionRecord | ConversationRecord | TextRecord,
    max_length: int | None = None,
    truncation: Truncation = "truncate",
) -> TokenizedExample:
    """Tokenise a demonstration for SFT / pretraining with its loss mask (and its :class:`Cut`)."""
    if isinstance(record, CompletionRecord):
        ids, boundary, cut = tokenize_prompt_response_cut(
            tokenizer, record.prompt, record.completion, max_length, truncation
        )
        return TokenizedExample(ids, [False] * boundary + [True] * (len(ids) - boundary), cut)
    if not isinstance(record, ConversationRecord | TextRecord):
        raise TypeError(f"cannot build a demonstration from a {type(record).__name__}")
    whole = record.messages if isinstance(record, ConversationRecord) else record.text
    text = whole
    if max_length is not None:
        text = _cut_or_drop(tokenizer, whole, max_length, "start", truncation)
    if isinstance(text, str):
        ids, _ = _encode_with_offsets(tokenizer, text)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        mask = [True] * len(ids)
    else:
        ids, mask = _tokenize_conversation(tokenizer, text)
        if isinstance(record, TextRecord):
            # a conversation as plain language-modelling text: every token is a target
            mask = [True] * len(ids)
    if max_length is None or len(ids) <= max_length:
        return TokenizedExample(ids, mask)
    if truncation == "drop":
        raise TooLongError(f"{len(ids)} tokens > max_length {max_length}")
    cut = _cut(len(ids) - max_length, ("text end",), precut=text is not whole)
    return TokenizedExample(ids[:max_length], mask[:max_length], cut)


def tokenize_prompt(
    tokenizer: Any, prompt: Text, max_tokens: int | None = None
) -> tuple[list[int], Cut]:
    """The token ids a response is generated after, matching training's tokenisation, and
    what truncation took from them.

    A string is encoded as it is; a message list is rendered with the chat template and its
    assistant generation prompt. BOS is written once when the tokenizer's convention has it.
    With ``max_tokens``, a longer prompt keeps its last tokens (after BOS), as training
    truncates prompts, and its text is cut before it is tokenised (:func:`cut_text`), so the
    cost is bounded by ``max_tokens`` whatever the prompt's size.
    """
    whole = prompt
    if max_tokens is not None:
        prompt = cut_text(tokenizer, prompt, max_tokens, "end")
    if isinstance(prompt, str):
        text = prompt
    else:
        text = render_chat(tokenizer, messages_as_dicts(prompt), add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, NO_CUT
    head = ids[:1] if adds_bos(tokenizer) else []
    kept = head + ids[len(ids) - (max_tokens - len(head)) :]
    return kept, _cut(len(ids) - len(kept), ("prompt start",), precut=prompt is not whole)


def _tokenize_conversation(
    tokenizer: Any, messages: Sequence[Message]
) -> tuple[list[int], list[bool]]:
    """Assistant-only loss mask over a multi-turn conversation.

    Each assistant turn's character span is where the rendering of the conversation up to
    and including that turn extends the rendering up to it with the generation prompt. This
    works for any template that renders a conversation's prefixes as prefixes of the whole.
    """
    as_dicts = messages_as_dicts(messages)
    full_text = render_chat(tokenizer, as_dicts)
    spans = []
    for index, message in enumerate(messages):
        if message.role != "assistant":
            continue
        before = render_chat(tokenizer, as_dicts[:index], add_generation_prompt=True)
        through = render_chat(tokenizer, as_dicts[: index + 1])
        if not (full_text.startswith(through) and through.startswith(before)):
            raise ValueError(
                "the chat template does not render conversation prefixes as prefixes; "
                "cannot mask assistant turns"
            )
        spans.append((len(before), len(through)))
    ids, ends = _encode_with_offsets(tokenizer, full_text)
    return ids, _mask_spans(ends, spans)


def render_example(tokenizer: Any, record: Any) -> str:
    """The text the model sees for ``record`` (after the chat template), for ``rlhf data check``.

    Response parts are wrapped in ``[[...]]`` so a person can see what is trained on or
    compared.
    """
    from rlhf.data.records import BinaryRecord, EditRecord, PreferenceRecord, RatingRecord

    def pair(prompt: Text, response: Text) -> str:
        text, start = render_prompt_and_response(tokenizer, prompt, response)
        return f"{text[:start]}[[{text[start:]}]]"

    if isinstance(record, CompletionRecord):
        return pair(record.prompt, record.completion)
    if isinstance(record, PreferenceRecord):
        return (
            f"chosen:   {pair(record.prompt, record.chosen)}\n"
            f"rejected: {pair(record.prompt, record.rejected)}"
        )
    if isinstance(record, BinaryRecord):
        return f"{'👍' if record.label else '👎'} {pair(record.prompt, record.completion)}"
    if isinstance(record, RatingRecord):
        return f"score {record.score:g}: {pair(record.prompt, record.response)}"
    if isinstance(record, EditRecord):
        return f"edited: {pair(record.prompt, record.edited)}"
    if isinstance(record, ConversationRecord):
        ids, mask = _tokenize_conversation(tokenizer, record.messages)
        return _decode_marked(tokenizer, ids, mask)
    if isinstance(record, TextRecord):
        return tokenizer.decode(tokenize_record(tokenizer, record).input_ids)
    responses = getattr(record, "responses", None)
    if responses is not None:
        ranked = sorted(zip(record.ranks, responses, strict=True), key=lambda item: item[0])
        return "\n".join(f"rank {rank}: {pair(record.prompt, r)}" for rank, r in ranked)
    prompt = record.prompt
    if isinstance(prompt, str):
        return prompt
    return render_chat(tokenizer, messages_as_dicts(prompt), add_generation_prompt=True)


def _decode_marked(tokenizer: Any, ids: list[int], mask: list[bool]) -> str:
    pieces, start = [], 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or mask[index] != mask[start]:
            text = tokenizer.decode(ids[start:index])
            pieces.append(f"[[{text}]]" if mask[start] else text)
            start = index
    return "".join(pieces)
