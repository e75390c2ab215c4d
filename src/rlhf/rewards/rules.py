"""Rule rewards: verifiable checks of a response, no model involved.

Rules are registered by name in :data:`RULES`, which configs refer to as
``reward: {rule: NAME}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import RewardFunction, check_lengths

_QUESTION = re.compile(r"What is (-?\d+) ([+-]) (-?\d+)\?")
_NUMBER = re.compile(r"-?\d+")


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
    numbers = _NUMBER.findall(response)
    return int(numbers[-1]) if numbers else None


class ArithmeticCorrectness:
    """1.0 when the response's final number is the true answer of the arithmetic prompt,
    else 0.0: the verifiable reward of ``builtin:arithmetic`` (its demonstrations end with
    ``A + B = C``), and its gold reward."""

    def __call__(self, prompts: Sequence[Text], responses: Sequence[str]) -> torch.Tensor:
        check_lengths(prompts, responses)
        correct = [
            final_number(response) == arithmetic_answer(prompt)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return torch.tensor(correct, dtype=torch.float32)

    def __repr__(self) -> str:
        return "ArithmeticCorrectness()"


RULES: dict[str, Callable[[], RewardFunction]] = {"arithmetic": ArithmeticCorrectness}
