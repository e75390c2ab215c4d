"""The embedded step world: multi-step arithmetic whose every solution step a gold checker
verifies, so step labels, process reward models and search can be measured exactly.

A problem is a chain of two to four (configurable) additions and subtractions of small
non-negative integers, evaluated left to right, whose running value never goes below zero::

    Compute 7 + 5 - 3 + 8.

Its prompt ends with a newline, like every prompt of :mod:`rlhf.sim` (the text above plus
``"\\n"``), and holds the whole problem: :func:`parse_problem` reads it back, so a checker
verifies a solution to any prompt from the prompt text alone (no answer column needed).

**Solutions** are one step per line. Each *operation step* applies the problem's next
operation to the running value and states the result; the last step, the *answer step*, states
the final value::

    7 + 5 = 12
    12 - 3 = 9
    9 + 8 = 17
    The answer is 17.

The answer step is a step: it is labelled like the others, so a problem of ``k`` operations
has ``k + 1`` steps (:func:`solve`). :func:`split_steps` cuts a completion into steps (its
non-blank lines, stripped); ``"\\n".join(steps)`` is the completion.

**Labels** (:func:`check_steps`) follow PRM800K's convention (Lightman et al. 2023, "Let's
Verify Step by Step"): a step is +1 when it is a valid step *from the steps before it as
written*, else -1. The checker reads the solution with a running value (at first the problem's
first operand) and a count of operations used:

* an operation step ``a op b = c`` (whole numbers, ``a`` and ``c`` maybe negative after a
  slip; any spacing) is +1 when ``a`` is the running
  value, ``op b`` is the problem's next unused operation and ``c`` is ``a op b``. Right or
  wrong, it uses up one operation (when any is left) and makes ``c`` the running value, so
  after an arithmetic slip the steps that correctly continue from the wrong stated value are
  +1 again;
* an operation step when every operation is used up is -1 (an extra step);
* the answer step ``The answer is c.`` (full stop optional) is +1 when every operation is used
  up and ``c`` is the running value; any step after an answer step is -1;
* anything else (prose, a cut-off line) is -1 and changes nothing.

So a wrong solution can have a single -1: what a PRM is scored on is where the *first* error is
(:func:`first_error`), and whether the final answer (:func:`final_answer`, read from an answer
step only) equals the problem's (:func:`is_correct`). Errors can cancel: two slips of +2 and -2
reach the right answer through two -1 steps.

:func:`noisy_solution` writes solutions with independent slips at a chosen rate, the
stand-in for a sampled policy; ``builtin:step-problems``, ``builtin:step-solutions`` and
``builtin:step-sft`` (:mod:`rlhf.sim.builtin`) are datasets of them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rlhf.sim.world import PROMPT_SPLITS, is_heldout_prompt

OPERATORS: tuple[str, ...] = ("+", "-")
MAX_OPERAND = 20  # operands are whole numbers from 1 to this (the running value stays >= 0)
MAX_SLIP = 3  # a noisy step's stated result is off by 1 to this much

_PROBLEM = re.compile(r"Compute\s+(\d+)((?:\s*[+-]\s*\d+)+)\s*\.")
_OPERATION = re.compile(r"([+-])\s*(\d+)")
_STEP = re.compile(r"(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)")
_ANSWER = re.compile(r"The answer is\s+(-?\d+)\s*\.?")


def _apply(left: int, operator: str, right: int) -> int:
    return left + right if operator == "+" else left - right


@dataclass(frozen=True)
class StepProblem:
    """A chain of operations evaluated left to right: ``operands[0] operators[0] operands[1]
    ...``; ``operands`` has one more entry than ``operators``."""

    operands: tuple[int, ...]  # whole numbers >= 0
    operators: tuple[str, ...]  # each "+" or "-", at least one

    def __post_init__(self) -> None:
        if not self.operators or len(self.operands) != len(self.operators) + 1:
            raise ValueError(
                f"a step problem needs one operator or more and one operand more than "
                f"operators, got {len(self.operands)} operands and {len(self.operators)} "
                "operators"
            )
        if any(operator not in OPERATORS for operator in self.operators):
            raise ValueError(f"operators are '+' or '-', got {self.operators}")
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in self.operands):
            raise ValueError(f"operands are whole numbers >= 0, got {self.operands}")

    @property
    def operations(self) -> tuple[tuple[str, int], ...]:
        """The operations applied to the first operand, in order: ``(("+", 5), ("-", 3))``."""
        return tuple(zip(self.operators, self.operands[1:], strict=True))

    @property
    def prompt(self) -> str:
        """``"Compute 7 + 5 - 3 + 8.\\n"``."""
        chain = " ".join(f"{op} {x}" for op, x in self.operations)
        return f"Compute {self.operands[0]} {chain}.\n"

    @property
    def answer(self) -> int:
        value = self.operands[0]
        for operator, right in self.operations:
            value = _apply(value, operator, right)
        return value


def parse_problem(prompt: str) -> StepProblem:
    """The problem a prompt states (its first ``Compute A + B - C ...`` sentence), so that a
    solution to any prompt can be checked from the prompt text alone."""
    match = _PROBLEM.search(prompt)
    if match is None:
        raise ValueError(
            f"prompt {prompt[:60]!r} is not a step problem ('Compute 7 + 5 - 3.'); "
            "only builtin:step-problems prompts are"
        )
    operations = _OPERATION.findall(match[2])
    return StepProblem(
        operands=(int(match[1]), *(int(x) for _, x in operations)),
        operators=tuple(op for op, _ in operations),
    )


def random_problem(
    rng: random.Random, operations: int, max_operand: int = MAX_OPERAND
) -> StepProblem:
    """A problem of ``operations`` operations: the first operand from 1 to ``max_operand``,
    then each operation "+" or "-" with even odds and an operand from 1 to ``max_operand``
    (a subtraction at most the running value; "+" at zero)."""
    if max_operand < 1:
        raise ValueError(f"max_operand {max_operand}: operands are whole numbers from 1")
    value = rng.randint(1, max_operand)
    operands, operators = [value], []
    for _ in range(operations):
        operator = "-" if value > 0 and rng.random() < 0.5 else "+"
        right = rng.randint(1, min(value, max_operand) if operator == "-" else max_operand)
        value = _apply(value, operator, right)
        operands.append(right)
        operators.append(operator)
    return StepProblem(tuple(operands), tuple(operators))


def step_problems(
    n: int,
    seed: int = 0,
    min_ops: int = 2,
    max_ops: int = 4,
    split: str = "all",
    max_operand: int = MAX_OPERAND,
) -> list[StepProblem]:
    """``n`` problems of ``min_ops`` to ``max_ops`` operations (uniformly; some may repeat)
    on operands up to ``max_operand`` (smaller: an easier world for the tiniest models),
    of one split: ``"train"``, ``"eval"`` (held out: one prompt in five, a fixed hash of its
    text, :func:`rlhf.sim.world.is_heldout_prompt`, so no problem is in both) or ``"all"``.
    Deterministic given the arguments."""
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split {split!r}: use one of {', '.join(PROMPT_SPLITS)}")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"min_ops {min_ops} and max_ops {max_ops}: need 1 <= min_ops <= max_ops")
    rng = random.Random(f"step-problems-{seed}")
    out: list[StepProblem] = []
    while len(out) < n:
        problem = random_problem(rng, rng.randint(min_ops, max_ops), max_operand)
        if split == "all" or is_heldout_prompt(problem.prompt) == (split == "eval"):
            out.append(problem)
    return out


# ---------------------------------------------------------------- solutions and their labels


def operation_step(left: int, operator: str, right: int, result: int) -> str:
    """``"12 - 3 = 9"``."""
    return f"{left} {operator} {right} = {result}"


def answer_step(answer: int) -> str:
    """``"The answer is 17."``."""
    return f"The answer is {answer}."


def solve(problem: StepProblem) -> list[str]:
    """The canonical solution: one operation step per operation, then the answer step."""
    value, steps = problem.operands[0], []
    for operator, right in problem.operations:
        result = _apply(value, operator, right)
        steps.append(operation_step(value, operator, right, result))
        value = result
    return [*steps, answer_step(value)]


def split_steps(text: str) -> list[str]:
    """The steps of a completion: its non-blank lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_steps(problem: StepProblem, steps: Sequence[str]) -> list[int]:
    """The gold label of each step, +1 (valid from the steps before it as written) or -1
    (wrong, malformed, out of order or after the answer); the rules are in the module
    docstring."""
    value, used, answered = problem.operands[0], 0, False
    operations = problem.operations
    labels = []
    for step in steps:
        text = step.strip()
        operation, answer = _STEP.fullmatch(text), _ANSWER.fullmatch(text)
        if answered or (operation is None and answer is None):
            labels.append(-1)
        elif answer is not None:
            answered = True
            labels.append(1 if used == len(operations) and int(answer[1]) == value else -1)
        elif operation is not None:
            left, operator, right, result = (
                int(operation[1]),
                operation[2],
                int(operation[3]),
                int(operation[4]),
            )
            valid = (
                used < len(operations)
                and left == value
                and (operator, right) == operations[used]
                and result == _apply(left, operator, right)
            )
            labels.append(1 if valid else -1)
            value, used = result, min(used + 1, len(operations))
    return labels


def first_error(labels: Sequence[int]) -> int | None:
    """The index of the first -1 label, or None when every step is +1."""
    return next((index for index, label in enumerate(labels) if label < 0), None)


def final_answer(steps: Sequence[str]) -> int | None:
    """The number the last step states when it is an answer step (``The answer is 17.``),
    else None: a solution without its answer step gives no answer."""
    if not steps:
        return None
    match = _ANSWER.fullmatch(steps[-1].strip())
    return None if match is None else int(match[1])


def is_correct(problem: StepProblem, steps: Sequence[str]) -> bool:
    """Whether the final answer is the problem's (whatever the steps before it)."""
    return final_answer(steps) == problem.answer


def verify_solution(prompt: str, text: str) -> bool:
    """Whether ``text`` (steps one per line) solves the problem the prompt states: the final
    answer check Monte-Carlo step labels and search need (:func:`parse_problem` reads the
    problem back from the prompt; a prompt that states none is an error)."""
    return is_correct(parse_problem(prompt), split_steps(text))


def _slip(value: int, rng: random.Random) -> int:
    """``value`` off by 1 to :data:`MAX_SLIP` either way (upwards where down would go below
    zero from a value that is not)."""
    wrong = value + rng.choice((-1, 1)) * rng.randint(1, MAX_SLIP)
    return 2 * value - wrong if wrong < 0 <= value else wrong


def noisy_solution(problem: StepProblem, error_rate: float, rng: random.Random) -> list[str]:
    """A solution in the canonical format in which each step, the answer step included, is
    independently wrong with probability ``error_rate``: its stated result (or answer) is off
    by 1 to :data:`MAX_SLIP`. Later steps continue from the stated value, so under
    :func:`check_steps` exactly the slipped steps are -1."""
    if not 0 <= error_rate <= 1:
        raise ValueError(f"error_rate {error_rate}: a probability, from 0 to 1")
    value, steps = problem.operands[0], []
    for operator, right in problem.operations:
        result = _apply(value, operator, right)
        if rng.random() < error_rate:
            result = _slip(result, rng)
        steps.append(operation_step(value, operator, right, result))
        value = result
    return [*steps, answer_step(_slip(value, rng) if rng.random() < error_rate else value)]


def noisy_solutions(
    n: int,
    seed: int = 0,
    error_rate: float = 0.3,
    min_ops: int = 2,
    max_ops: int = 4,
    split: str = "all",
    max_operand: int = MAX_OPERAND,
) -> list[tuple[StepProblem, list[str]]]:
    """The problems of :func:`step_problems` with these arguments, each with one
    :func:`noisy_solution` (the slips from their own seeded stream)."""
    problems = step_problems(n, seed, min_ops, max_ops, split, max_operand)
    rng = random.Random(f"step-noise-{seed}")
    return [(problem, noisy_solution(problem, error_rate, rng)) for problem in problems]
