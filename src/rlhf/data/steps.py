"""Step records (process supervision) from rows: ours, and two published layouts as they are.

Ours, ``kind="steps"``: ``{"prompt": ..., "steps": ["...", ...], "labels": [1, -1, null],
"answer": "12"}``, ``labels`` optional (all unlabelled) and ``answer`` optional.

**PRM800K** (OpenAI; Lightman et al. 2023, "Let's Verify Step by Step",
https://github.com/openai/prm800k): ``{"question": {"problem", "ground_truth_answer", ...},
"label": {"steps": [{"completions": [{"text", "rating", ...}, ...], "human_completion",
"chosen_completion"}, ...], "finish_reason", ...}}``. A step offers one or more rated
completions; the solution goes on with ``completions[chosen_completion]``. Where
``chosen_completion`` is null the step is the labeller's own ``human_completion`` if there is one
(phase 1: written when every completion was rated -1, and written correct, so it counts +1 unless
it carries a rating), else the *first* completion: in phase 2 that is the pre-generated step,
the one whose -1 ended the labelling (``finish_reason: "found_error"``), so the error a reward
model must learn is kept, where TRL's conversion drops it. A step with no completions at all
(it happens) ends the solution there. prompt = ``problem``, answer = ``ground_truth_answer``;
the other fields (``finish_reason``, ``flagged``, ...) are not read.

**Math-Shepherd** (Wang et al. 2024, https://huggingface.co/datasets/peiyi9979/Math-Shepherd):
``{"input": "<problem> Step 1: ... ки\\nStep 2: ... ки", "label": "<problem> Step 1: ... +\\n
Step 2: ... -"}``. The tag ``ки`` ends each step in ``input``; ``label`` is ``input`` with each tag
replaced by ``+`` (correct, +1) or ``-`` (incorrect, -1), so the marks are read where the tags
are. The problem is the text before the first ``Step 1:`` (any case); tags inside it (annotation
slips in a few rows) are dropped with their marks. Without a ``Step 1:`` the problem cannot be
told from the first step: the text up to the first tag is then the first step, problem included,
and the prompt is empty. Text after the last tag is a last, unlabelled step. Steps and prompt are
stripped of surrounding whitespace; there is no answer.

Every function raises :class:`~rlhf.data.errors.DataError` naming the field (``label.steps[3]
.completions[0].rating``) but no file or line: :func:`rlhf.data.readers.read_records` adds them.
"""

from __future__ import annotations

import re
from typing import Any

from rlhf.data.errors import DataError, describe_value
from rlhf.data.records import StepRecord, Text, is_blank, unicode_problem

MATH_SHEPHERD_TAG = "ки"
_STEP_ONE = re.compile("step 1:", re.IGNORECASE)
_LABELS = (
    "1 (correct), -1 (incorrect), 0 (neutral), a soft estimate strictly between 0 and 1 "
    "(P(correct)) or null (unlabelled)"
)


def _wrong_type(field: str, expected: str, value: Any) -> DataError:
    message = f"expected {expected}, got {describe_value(value)}"
    return DataError(None, None, field, message, reason="wrong_type")


def _text(value: Any, field: str, empty: str) -> str:
    """``value`` if it is valid, non-blank text; else the error, ``empty`` saying what is empty."""
    if not isinstance(value, str):
        raise _wrong_type(field, "text", value)
    problem = unicode_problem(value)
    if problem is not None:
        raise DataError(None, None, field, problem, reason="not_unicode")
    if is_blank(value):
        raise DataError(None, None, field, empty, reason="empty_response")
    return value


# --- ours -------------------------------------------------------------------------------------


def step_label(value: Any, field: str) -> float | None:
    """A step's label: 1, -1, 0, a soft estimate of P(correct) strictly between 0 and 1
    (Math-Shepherd's soft labels, :mod:`rlhf.rollout.step_labels`) or None (booleans are not
    labels: true would read as +1 but false as 0, neutral, not -1)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Parquet and pandas store integer lists with gaps as floats
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, -1, 0):
        raise _wrong_type(field, _LABELS, value)
    return value


def step_texts(value: Any, field: str = "steps") -> tuple[str, ...]:
    """A list of one step or more, each non-blank text."""
    if not isinstance(value, list | tuple):
        raise _wrong_type(field, "a list of steps (text)", value)
    if not value:
        raise DataError(None, None, field, "no steps", reason="empty_response")
    return tuple(_text(step, f"{field}[{i}]", "empty step") for i, step in enumerate(value))


def step_labels(value: Any, field: str = "labels") -> tuple[float | None, ...]:
    """A list of step labels (:func:`step_label`)."""
    if not isinstance(value, list | tuple):
        raise _wrong_type(field, f"a list of labels, each {_LABELS}", value)
    return tuple(step_label(label, f"{field}[{i}]") for i, label in enumerate(value))


def answer_text(value: Any, field: str = "answer") -> str:
    """A final answer: non-blank text (leave it out, or null, when it is unknown)."""
    return _text(value, field, "empty; leave the answer out (or null) when it is unknown")


def step_record(
    prompt: Text,
    steps: tuple[str, ...],
    labels: tuple[float | None, ...] | None = None,
    answer: str | None = None,
) -> StepRecord:
    """The record of checked fields, its labels matching its steps one to one (``None``: every
    step unlabelled)."""
    if labels is None:
        labels = (None,) * len(steps)
    elif len(labels) != len(steps):
        message = f"{len(labels)} labels for {len(steps)} steps; give one label a step (null: none)"
        raise DataError(None, None, "labels", message, reason="labels_mismatch")
    return StepRecord(prompt, steps, labels, answer)


# --- PRM800K ----------------------------------------------------------------------------------


def from_prm800k(question: Any, label: Any) -> StepRecord:
    """A PRM800K row's record, from its ``question`` and ``label`` objects."""
    if not isinstance(question, dict):
        raise _wrong_type("question", "a PRM800K question {problem, ground_truth_answer}", question)
    problem = question.get("problem")
    if problem is None:
        raise DataError(None, None, "question.problem", "missing", reason="missing_field")
    if not isinstance(problem, str):
        raise _wrong_type("question.problem", "text", problem)
    problem_error = unicode_problem(problem)
    if problem_error is not None:
        raise DataError(None, None, "question.problem", problem_error, reason="not_unicode")
    answer = question.get("ground_truth_answer")
    if isinstance(answer, str) and is_blank(answer):
        answer = None  # blank: not known
    if answer is not None:
        answer = answer_text(answer, "question.ground_truth_answer")

    if not isinstance(label, dict):
        raise _wrong_type("label", "a PRM800K label {steps, finish_reason}", label)
    raw_steps = label.get("steps")
    if raw_steps is None:
        raise DataError(None, None, "label.steps", "missing", reason="missing_field")
    if not isinstance(raw_steps, list | tuple):
        raise _wrong_type("label.steps", "a list of steps", raw_steps)
    steps: list[str] = []
    labels: list[int | None] = []
    for index, step in enumerate(raw_steps):
        followed = _prm800k_step(step, f"label.steps[{index}]")
        if followed is None:  # nothing to go on with: the labelling stopped here
            break
        steps.append(followed[0])
        labels.append(followed[1])
    if not steps:
        raise DataError(None, None, "label.steps", "no steps", reason="empty_response")
    return StepRecord(problem, tuple(steps), tuple(labels), answer)


def _prm800k_step(step: Any, field: str) -> tuple[str, int | None] | None:
    """The (text, label) the solution goes on with at one step, or None for a step without any
    completion (see the module docstring for the choice)."""
    if not isinstance(step, dict):
        raise _wrong_type(field, "a step {completions, human_completion, chosen_completion}", step)
    completions = step.get("completions") or []
    if not isinstance(completions, list | tuple):
        raise _wrong_type(f"{field}.completions", "a list of completions", completions)
    chosen = step.get("chosen_completion")
    if chosen is not None:
        if isinstance(chosen, float) and chosen.is_integer():
            chosen = int(chosen)  # pandas stores an integer column with nulls as floats
        if isinstance(chosen, bool) or not isinstance(chosen, int):
            raise _wrong_type(f"{field}.chosen_completion", "an index or null", chosen)
        if not 0 <= chosen < len(completions):
            message = f"{chosen} is not an index of the step's {len(completions)} completions"
            raise DataError(None, None, f"{field}.chosen_completion", message, reason="wrong_type")
        return _prm800k_completion(completions[chosen], f"{field}.completions[{chosen}]")
    human = step.get("human_completion")
    if human is not None:
        text, rating = _prm800k_completion(human, f"{field}.human_completion")
        return text, 1 if rating is None else rating  # written as a correct step
    if completions:
        return _prm800k_completion(completions[0], f"{field}.completions[0]")
    return None


def _prm800k_completion(completion: Any, field: str) -> tuple[str, int | None]:
    if isinstance(completion, str):  # the README's own example reads a human step as its text
        return _text(completion, field, "empty step"), None
    if not isinstance(completion, dict):
        raise _wrong_type(field, "a completion {text, rating}", completion)
    text = completion.get("text")
    if text is None:
        raise DataError(None, None, f"{field}.text", "missing", reason="missing_field")
    return (
        _text(text, f"{field}.text", "empty step"),
        step_label(completion.get("rating"), f"{field}.rating"),
    )


# --- Math-Shepherd ----------------------------------------------------------------------------


def from_math_shepherd(text: Any, label: Any) -> StepRecord:
    """A Math-Shepherd row's record, from its ``input`` (``text``) and ``label`` strings."""
    text = _text(text, "input", "empty")
    label = _text(label, "label", "empty")
    # pieces[i] ends at tag i; pieces[-1] is what follows the last tag
    pieces = text.split(MATH_SHEPHERD_TAG)
    tags = len(pieces) - 1
    if not tags:
        message = f"no steps: no step tag {MATH_SHEPHERD_TAG} marks where a step ends"
        raise DataError(None, None, "input", message, reason="empty_response")
    marks = _math_shepherd_marks(pieces, label)

    # the problem ends at the first "Step 1:"; tags before it are slips, dropped with their marks
    end = _problem_end(pieces)
    if end is None:  # no "Step 1:": the first step holds the problem too
        prompt, slips = "", 0
    else:
        slips, at = end
        prompt = "".join(pieces[:slips]) + pieces[slips][:at]
        pieces = [pieces[slips][at:], *pieces[slips + 1 :]]
    labels: list[int | None] = list(marks[slips:])
    if not is_blank(pieces[-1]):
        labels.append(None)  # text after the last tag: a step without a mark
    else:
        pieces.pop()
    steps = tuple(piece.strip() for piece in pieces)
    for index, step in enumerate(steps):
        if not step:
            message = f"step {index + 1} is empty"
            raise DataError(None, None, "input", message, reason="empty_response")
    return StepRecord(prompt.strip(), steps, tuple(labels))


def _problem_end(pieces: list[str]) -> tuple[int, int] | None:
    """(piece, character) where the first "Step 1:" of a tagged piece starts, or None."""
    for index, piece in enumerate(pieces[:-1]):
        found = _STEP_ONE.search(piece)
        if found is not None:
            return index, found.start()
    return None


def _math_shepherd_marks(pieces: list[str], label: str) -> list[int]:
    """The +1 / -1 that ``label`` holds where ``input`` has each tag (``label`` is ``input`` with
    each two-character tag replaced by one mark, so mark i sits i characters earlier)."""
    tags = len(pieces) - 1
    expected = sum(len(piece) for piece in pieces) + tags
    if len(label) != expected:
        message = (
            f"does not mark the {tags} step tags of input one to one: label should be input with "
            f"each {MATH_SHEPHERD_TAG} replaced by + or - ({expected:,} characters), it has "
            f"{len(label):,}"
        )
        raise DataError(None, None, "label", message, reason="labels_mismatch")
    marks: list[int] = []
    at = -1  # where in label the mark of the step ending the piece is
    for step, piece in enumerate(pieces[:-1], 1):
        at += len(piece) + 1
        mark = label[at]
        if mark not in "+-":
            message = (
                f"step {step} ends with {mark!r} where input has its tag {MATH_SHEPHERD_TAG}; "
                "expected + or -"
            )
            raise DataError(None, None, "label", message, reason="labels_mismatch")
        marks.append(1 if mark == "+" else -1)
    return marks
