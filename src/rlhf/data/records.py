"""Typed records: one frozen dataclass per kind of data every stage exchanges.

A text field is either a plain ``str`` (TRL's *standard* format) or a tuple of
:class:`Message` (TRL's *conversational* format); both fields of a record use the same one.
``to_dict()`` gives the canonical JSON row, whose column names are TRL's, so that
``read_records(write_records(records)) == records``.

Readers check the invariants stated in each docstring; records built in code are trusted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset(("system", "user", "assistant"))
RecordKind = Literal[
    "text",
    "prompt",
    "completion",
    "conversation",
    "preference",
    "ranking",
    "rating",
    "binary",
    "edit",
    "steps",
]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat turn."""

    role: Role
    content: str


Text = str | tuple[Message, ...]


def is_blank(text: Text) -> bool:
    """Whether a text holds nothing but whitespace (a message list: in every message)."""
    if isinstance(text, str):
        return not text or text.isspace()  # str.strip() would copy a long text
    return all(is_blank(message.content) for message in text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode, or None: a lone surrogate (what a JSON ``\\ud800``
    escape decodes to) cannot be written as UTF-8, so no tokenizer, database or export takes it."""
    if text.isascii():
        return None
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"not valid Unicode (a lone surrogate escape, \\u{ord(found.group()):04x} at "
        f"character {found.start() + 1:,})"
    )


def response_text(response: Text) -> str:
    """A response as plain text: the string, or a message list's assistant turns joined."""
    if isinstance(response, str):
        return response
    return " ".join(message.content for message in response if message.role == "assistant")


def text_to_json(text: Text) -> str | list[dict[str, str]]:
    """A text field as JSON: the string itself, or messages as ``{"role", "content"}`` dicts."""
    if isinstance(text, str):
        return text
    return [{"role": message.role, "content": message.content} for message in text]


@dataclass(frozen=True, slots=True)
class TextRecord:
    """Language-modelling text (TRL ``text``); every token is a training target."""

    kind: ClassVar[str] = "text"
    text: Text

    def to_dict(self) -> dict[str, Any]:
        return {"text": text_to_json(self.text)}


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """A prompt alone (TRL prompt-only), for online generation."""

    kind: ClassVar[str] = "prompt"
    prompt: Text

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": text_to_json(self.prompt)}


@dataclass(frozen=True, slots=True)
class CompletionRecord:
    """A demonstration, ``prompt`` → non-empty ``completion`` (TRL prompt-completion)."""

    kind: ClassVar[str] = "completion"
    prompt: Text
    completion: Text

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": text_to_json(self.prompt), "completion": text_to_json(self.completion)}


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    """A multi-turn chat (TRL ``messages``); the assistant turns are the training targets."""

    kind: ClassVar[str] = "conversation"
    messages: tuple[Message, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"messages": text_to_json(self.messages)}


@dataclass(frozen=True, slots=True)
class PreferenceRecord:
    """``chosen`` ≻ ``rejected`` for one prompt (TRL preference); the two responses differ.

    ``margin`` (optional, ≥ 0 by convention) says how strongly, e.g. a rating or rank difference.
    """

    kind: ClassVar[str] = "preference"
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None

    def to_dict(self) -> dict[str, Any]:
        row = {
            "prompt": text_to_json(self.prompt),
            "chosen": text_to_json(self.chosen),
            "rejected": text_to_json(self.rejected),
        }
        if self.margin is not None:
            row["margin"] = self.margin
        return row


@dataclass(frozen=True, slots=True)
class RankingRecord:
    """K ≥ 2 responses ranked: ``ranks[i]`` is the rank of ``responses[i]``, 0 = best.

    Equal ranks are ties; not all ranks are equal.
    """

    kind: ClassVar[str] = "ranking"
    prompt: Text
    responses: tuple[Text, ...]
    ranks: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": text_to_json(self.prompt),
            "responses": [text_to_json(response) for response in self.responses],
            "ranks": list(self.ranks),
        }


@dataclass(frozen=True, slots=True)
class RatingRecord:
    """An absolute ``score`` of one response on ``scale = (low, high)``, inclusive."""

    kind: ClassVar[str] = "rating"
    prompt: Text
    response: Text
    score: float
    scale: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": text_to_json(self.prompt),
            "response": text_to_json(self.response),
            "score": self.score,
            "scale": list(self.scale),
        }


@dataclass(frozen=True, slots=True)
class BinaryRecord:
    """A thumbs up (``label=True``) or down for one completion (TRL unpaired preference, KTO)."""

    kind: ClassVar[str] = "binary"
    prompt: Text
    completion: Text
    label: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": text_to_json(self.prompt),
            "completion": text_to_json(self.completion),
            "label": self.label,
        }


@dataclass(frozen=True, slots=True)
class EditRecord:
    """A person's correction: ``edited`` improves on the model's ``original``."""

    kind: ClassVar[str] = "edit"
    prompt: Text
    original: Text
    edited: Text

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": text_to_json(self.prompt),
            "original": text_to_json(self.original),
            "edited": text_to_json(self.edited),
        }


@dataclass(frozen=True, slots=True)
class StepRecord:
    """A solution in steps, each step judged on its own (process supervision: Lightman et al.
    2023, "Let's Verify Step by Step"; Wang et al. 2024, Math-Shepherd).

    ``labels[i]`` judges ``steps[i]``: +1 correct, -1 incorrect, 0 neutral (not wrong, but no
    progress), a soft estimate of P(correct) strictly between 0 and 1 (Monte-Carlo labels),
    None unlabelled. One label a step, at least one step, no step blank.
    ``answer``: the problem's correct final answer when it is known (PRM800K's
    ``ground_truth_answer``), for an answer check; never blank.
    """

    kind: ClassVar[str] = "steps"
    prompt: Text
    steps: tuple[str, ...]
    labels: tuple[float | None, ...]
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row = {
            "prompt": text_to_json(self.prompt),
            "steps": list(self.steps),
            "labels": list(self.labels),
        }
        if self.answer is not None:
            row["answer"] = self.answer
        return row


Record = (
    TextRecord
    | PromptRecord
    | CompletionRecord
    | ConversationRecord
    | PreferenceRecord
    | RankingRecord
    | RatingRecord
    | BinaryRecord
    | EditRecord
    | StepRecord
)

RECORD_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        TextRecord,
        PromptRecord,
        CompletionRecord,
        ConversationRecord,
        PreferenceRecord,
        RankingRecord,
        RatingRecord,
        BinaryRecord,
        EditRecord,
        StepRecord,
    )
}
