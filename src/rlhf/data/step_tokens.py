"""Step-level records as a process reward model reads them: one sequence per solution, a label
at each step's end.

The sequence of a prompt x and steps s₁ … s_n is the prompt's tokens (as every recipe tokenises
a prompt, :func:`rlhf.data.tokenize.tokenize_prompt`), then for each step its tokens followed by
the *step separator*'s::

    x  ⏎  s₁ ⏎  s₂ ⏎  …  s_n ⏎          (⏎ = the separator, "\\n" by default)

(a text prompt that already ends with the separator gets no second one, so a solution reads as
the policy wrote it after its prompt).

Each piece is tokenised on its own and the ids concatenated, so a step's tokens do not depend
on its neighbours (a BPE merge across a step boundary would move the position the label is
read at). The label of step k is read at the *last token of the separator after it*: a causal
decoder has then read the prompt and steps 1 … k, and nothing later (Lightman et al. 2023
score steps this way; TRL's PRM trainer too).

Targets: a step labelled +1 is 1 ("no error"), −1 is 0; a neutral step (0) counts as correct
by default (``neutral="positive"``: it is no mistake; first-error accuracy counts only −1 as
an error), or as wrong, or is left out; an unlabelled step (None) is left out of the loss but
still scored. Soft labels in [0, 1] (Math-Shepherd's soft estimates) are the target itself.

A solution longer than ``max_length`` keeps its prompt and the steps that fit whole (with their
separator); the cut steps are counted as a ``"response end"`` cut; ``truncation="drop"`` drops
it instead. A solution of which not even the first step fits is dropped either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from rlhf.data.records import Text
from rlhf.data.tokenize import Cut, Truncation, TruncationReport, tokenize_prompt

logger = logging.getLogger("rlhf.data")

Neutral = Literal["positive", "negative", "ignore"]


class StepSolution(Protocol):
    """What a step-level record holds (:class:`rlhf.data.records.StepRecord`)."""

    @property
    def prompt(self) -> Text: ...
    @property
    def steps(self) -> Sequence[str]: ...
    @property
    def labels(self) -> Sequence[float | None]: ...


def step_target(label: float | None, neutral: Neutral = "positive") -> float | None:
    """A step label (+1, −1, 0, None, or a soft value in [0, 1]) as the PRM's target P(step
    correct), or None when the step is left out of the loss."""
    if label is None:
        return None
    if label == 1:
        return 1.0
    if label == -1:
        return 0.0
    if label == 0:
        return {"positive": 1.0, "negative": 0.0, "ignore": None}[neutral]
    if 0.0 < label < 1.0:
        return float(label)
    raise ValueError(f"a step label is +1, -1, 0, None or a soft value in (0, 1), got {label!r}")


@dataclass(frozen=True)
class StepExample:
    """One tokenised solution."""

    input_ids: tuple[int, ...]
    ends: tuple[int, ...]  # [n] the position of each kept step's last separator token
    targets: tuple[float | None, ...]  # [n] P(step correct) to learn, None: not in the loss
    labels: tuple[float | None, ...]  # [n] the steps' own labels (+1, −1, 0, None, soft)

    @property
    def length(self) -> int:
        return len(self.input_ids)


def tokenize_solution(
    tokenizer: Any,
    solution: StepSolution,
    separator: str,
    max_length: int | None,
    neutral: Neutral = "positive",
    truncation: Truncation = "truncate",
) -> tuple[StepExample, Cut] | None:
    """A solution's :class:`StepExample` and what truncation cut, or None when it cannot be
    kept (no step fits, or it is too long under ``truncation="drop"``)."""
    ids = list(tokenize_prompt(tokenizer, solution.prompt)[0])
    separator_ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if not separator_ids:
        raise ValueError(f"the step separator {separator!r} is no token of this tokenizer")
    ends: list[int] = []
    cut_tokens = 0
    if not (isinstance(solution.prompt, str) and solution.prompt.endswith(separator)):
        ids.extend(separator_ids)  # the prompt ends as every step does
    for step in solution.steps:
        piece = tokenizer(step, add_special_tokens=False)["input_ids"] + separator_ids
        if cut_tokens or (max_length is not None and len(ids) + len(piece) > max_length):
            cut_tokens += len(piece)
            continue
        ids.extend(piece)
        ends.append(len(ids) - 1)
    if not ends or (cut_tokens and truncation == "drop"):
        return None
    kept = len(ends)
    labels = tuple(solution.labels[:kept])
    targets = tuple(step_target(label, neutral) for label in labels)
    cut = Cut(cut_tokens, frozenset({"response end"})) if cut_tokens else Cut()
    return StepExample(tuple(ids), tuple(ends), targets, labels), cut


def tokenize_solutions(
    tokenizer: Any,
    solutions: Iterable[StepSolution],
    separator: str,
    max_length: int | None,
    neutral: Neutral = "positive",
    truncation: Truncation = "truncate",
    *,
    report: TruncationReport | None = None,
) -> list[StepExample]:
    """Every solution's :class:`StepExample`; ``report`` counts the kept (and cut) and the
    dropped ones. A solution with no step in the loss (every target None) is kept: it is still
    scored for first-error accuracy when its labels allow."""
    report = report if report is not None else TruncationReport(max_length, "solutions")
    examples = []
    for solution in solutions:
        tokenized = tokenize_solution(
            tokenizer, solution, separator, max_length, neutral, truncation
        )
        if tokenized is None:
            report.drop("longer than max_length")
            continue
        example, cut = tokenized
        report.add(cut)
        examples.append(example)
    return examples


@dataclass
class StepBatch:
    """Solutions right-padded into rows, with every kept step's position."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    step_rows: torch.Tensor  # [S] the row of each step (all steps of the batch, row-major)
    step_ends: torch.Tensor  # [S] its position in the row
    targets: torch.Tensor  # [S] float32 target, NaN where the step is not in the loss
    num_tokens: int

    @property
    def loss_units(self) -> int:
        """Steps in the loss (the Trainer averages the summed loss over these)."""
        return int((~self.targets.isnan()).sum())

    def to(self, device: torch.device | str) -> StepBatch:
        return StepBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.step_rows.to(device),
            self.step_ends.to(device),
            self.targets.to(device),
            self.num_tokens,
        )


def collate_steps(examples: Sequence[StepExample], pad_token_id: int) -> StepBatch:
    longest = max(example.length for example in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    rows, ends, targets = [], [], []
    for row, example in enumerate(examples):
        input_ids[row, : example.length] = torch.tensor(example.input_ids)
        attention_mask[row, : example.length] = 1
        rows += [row] * len(example.ends)
        ends += example.ends
        targets += [float("nan") if t is None else t for t in example.targets]
    return StepBatch(
        input_ids,
        attention_mask,
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(ends, dtype=torch.long),
        torch.tensor(targets, dtype=torch.float32),
        int(attention_mask.sum()),
    )
