"""Rule rewards: verifiable checks of a response, no model involved.

* :class:`ArithmeticCorrectness`: the builtin arithmetic task's answer, read from its prompt.
* :class:`MathAnswer`: a final numeric answer against the ground truth in the row's metadata
  (``metadata[i]["answer"]``), GSM8K style: the reference ends ``#### 72`` (Cobbe et al. 2021),
  the response's answer is its own ``#### N`` (or ``\\boxed{N}``) or else its last number.
  Thousands separators, currency signs, units and trailing zeros do not matter
  (``$1,080.00`` is 1080).
* :class:`AnswerFormat` and :class:`RegexFormat`: format checks (an answer line is present; a
  pattern matches), the "format reward" of DeepSeek-R1-style training.

Each scores 1.0 or 0.0. Rules are registered by name in :data:`RULES`, which configs refer to
as ``reward: {rule: NAME}``; :class:`RegexFormat` is ``reward: {regex: PATTERN}``.

:data:`RULES` also names the embedded world's gold reward, ``world_gold``
(:class:`rlhf.rewards.world_gold.WorldGold`): not a 0/1 check but a continuous score, about 0 to 1,
with its components reported on their own (docs/world.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import (
    Metadata,
    Reward,
    RewardFunction,
    RewardOutput,
    check_lengths,
    metadata_value,
)
from rlhf.rewards.world_gold import WorldGold
from rlhf.rollout.types import ANSWER

_QUESTION = re.compile(r"What is (-?\d+) ([+-]) (-?\d+)\?")
_INTEGER = re.compile(r"-?\d+")
# A number as people write one: optional sign (not the minus of "10-3"), optional currency
# sign, a fraction a/b, or digits with optional thousands separators and decimals.
_NUMBER = re.compile(
    r"(?:(?<![\w)])[-−])?\$?"
    r"(?:\d+/\d+(?![\d/])|(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?)"
)
_MARKERS = (
    re.compile(r"####\s*([^\n]*)"),  # GSM8K: "#### 72"
    re.compile(r"\\boxed\{([^{}]*)\}"),  # MATH / DeepSeek-R1: "\boxed{72}"
)
_ANSWER_LINE = re.compile(r"^[ \t]*####[ \t]*" + _NUMBER.pattern + r"[^\n\d]*$", re.MULTILINE)


def _question_text(prompt: Text) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [message.content for message in prompt if message.role == "user"]
    return users[-1] if users else ""


def arithmetic_answer(prompt: Text) -> int:
    """The true answer of a ``What is A + B?`` / ``What is A - B?`` prompt."""
    match = _QUESTION.search(_question_text(prompt))
    if match is None:
        raise ValueError(
            f"prompt {str(prompt)[:60]!r} is not an arithmetic question ('What is A + B?'); "
            "the arithmetic rule only scores the builtin:arithmetic task"
        )
    left, op, right = int(match[1]), match[2], int(match[3])
    return left + right if op == "+" else left - right


def final_number(response: str) -> int | None:
    """The last whole number written in ``response`` (None when there is none)."""
    numbers = _INTEGER.findall(response)
    return int(numbers[-1]) if numbers else None


def parse_number(text: str) -> Fraction | None:
    """One written number as an exact value: ``"1,080"``, ``"$5.50"``, ``"-7"``, ``"3/4"``,
    ``"72.0"``; None when ``text`` holds no number (the first one is taken)."""
    match = _NUMBER.search(text)
    return None if match is None else _value(match[0])


def _value(token: str) -> Fraction | None:
    cleaned = token.replace(",", "").replace("$", "").replace("−", "-")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):  # "3/0"
        return None


def _last_number(text: str) -> Fraction | None:
    for token in reversed(_NUMBER.findall(text)):
        value = _value(token)
        if value is not None:
            return value
    return None


def response_answer(response: str, *, strict: bool = False) -> Fraction | None:
    """The final answer a response gives: the number after its last ``####`` (or in its last
    ``\\boxed{}``); without either, its last number (None with ``strict``, or when there is
    no number at all)."""
    for marker in _MARKERS:
        found = marker.findall(response)
        if found:
            return parse_number(found[-1])
    return None if strict else _last_number(response)


def reference_answer(answer: Any) -> Fraction | None:
    """The ground truth as an exact value: a number, a string holding one, or a GSM8K
    reference solution (the number after its last ``####``)."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int | Fraction):
        return Fraction(answer)
    if isinstance(answer, float):
        return Fraction(repr(answer))  # 0.1 is 1/10, not its binary approximation
    if not isinstance(answer, str):
        return None
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return parse_number(answer)


class ArithmeticCorrectness(Reward):
    """1.0 when the response's final number is the true answer of the arithmetic prompt,
    else 0.0: the verifiable reward of ``builtin:arithmetic`` (its demonstrations end with
    ``A + B = C``), and its gold reward. Metadata is not needed (the prompt holds the sum)."""

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        correct = [
            final_number(response) == arithmetic_answer(prompt)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return RewardOutput(torch.tensor(correct, dtype=torch.float32))

    def __repr__(self) -> str:
        return "ArithmeticCorrectness()"


class MathAnswer(Reward):
    """1.0 when the response's final answer equals the ground truth ``metadata[i][answer_key]``,
    else 0.0 (GSM8K-style exact match of numbers; see :func:`response_answer` and
    :func:`reference_answer`). With ``strict`` only an answer after ``####`` (or in
    ``\\boxed{}``) counts. A row without a parsable ground truth is an error naming the row."""

    def __init__(self, *, answer_key: str = ANSWER, strict: bool = False) -> None:
        self.answer_key, self.strict = answer_key, strict

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        correct = []
        for row, response in enumerate(responses):
            raw = metadata_value(metadata, row, self.answer_key, repr(self))
            truth = reference_answer(raw)
            if truth is None:
                raise ValueError(
                    f"{self!r}: row {row}: ground truth {self.answer_key}={str(raw)[-80:]!r} "
                    "holds no number (expected e.g. '72' or a solution ending '#### 72')"
                )
            correct.append(response_answer(response, strict=self.strict) == truth)
        return RewardOutput(torch.tensor(correct, dtype=torch.float32))

    def __repr__(self) -> str:
        strict = ", strict=True" if self.strict else ""
        return f"MathAnswer(answer_key={self.answer_key!r}{strict})"


class AnswerFormat(Reward):
    """1.0 when the response has a GSM8K answer line (a line ``#### N``), else 0.0."""

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        present = [_ANSWER_LINE.search(response) is not None for response in responses]
        return RewardOutput(torch.tensor(present, dtype=torch.float32))

    def __repr__(self) -> str:
        return "AnswerFormat()"


class RegexFormat(Reward):
    """1.0 when ``pattern`` matches the response (``re.search``; the whole response with
    ``full_match``), else 0.0. Flags go inline, e.g. ``(?s)`` for a ``.`` that crosses lines."""

    def __init__(self, pattern: str, *, full_match: bool = False) -> None:
        try:
            self.pattern = re.compile(pattern)
        except re.error as error:
            raise ValueError(f"regex {pattern!r} does not compile: {error}") from None
        self.full_match = full_match

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        check_lengths(prompts, responses, metadata)
        match = self.pattern.fullmatch if self.full_match else self.pattern.search
        return RewardOutput(torch.tensor([match(r) is not None for r in responses]).float())

    def __repr__(self) -> str:
        full = ", full_match=True" if self.full_match else ""
        return f"RegexFormat({self.pattern.pattern!r}{full})"


class StepWorldCorrectness(Reward):
    """1.0 when the response's steps (one per line) solve the problem the step world's prompt
    states, its last step the right answer (:func:`rlhf.sim.steps.verify_solution`), else 0.0:
    the verifiable reward of ``builtin:step-problems`` and the gold of step search."""

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        from rlhf.sim.steps import verify_solution

        check_lengths(prompts, responses, metadata)
        solved = [
            verify_solution(_question_text(prompt), response)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return RewardOutput(torch.tensor(solved, dtype=torch.float32))

    def __repr__(self) -> str:
        return "StepWorldCorrectness()"


RULES: dict[str, Callable[[], RewardFunction]] = {
    "arithmetic": ArithmeticCorrectness,
    "gsm8k": MathAnswer,
    "gsm8k_strict": lambda: MathAnswer(strict=True),
    "gsm8k_format": AnswerFormat,
    "world_gold": WorldGold,
    "step_world": StepWorldCorrectness,
}
"""Rule rewards by name: ``arithmetic`` (builtin arithmetic prompts), ``gsm8k`` (final
number against ``metadata["answer"]``), ``gsm8k_strict`` (only an answer after ``####`` or in
``\\boxed{}`` counts), ``gsm8k_format`` (a ``#### N`` answer line is present), all 0/1; and
``world_gold``, the embedded world's continuous gold reward (about 0 to 1); ``step_world``,
1 when the steps solve the step world's problem (0/1)."""
