"""Automatic step labels by Monte-Carlo completion (Math-Shepherd, Wang et al. 2024, §3.2).

How good is step k of a solution? Let the policy continue from it N times and see how often it
reaches the right final answer: a step from which the right answer is still reachable is a
good step. For each step k < n of a solution with steps s₁ … s_n, the policy samples N
completions of the prefix

    prompt + s₁ ⏎ … ⏎ s_k ⏎            (⏎ = ``separator``, the format it was trained on)

and each completed solution (s₁ … s_k and the completion's text) goes to ``verify(record,
solution_text)``, a check of the final answer (:data:`VERIFIERS`: the embedded step world's
checker, or the last number of the text against the record's ``answer``). With c of the N
correct:

* the **hard** estimate (eq. 4): +1 if c > 0, else −1, the step is good if any completion
  succeeds;
* the **soft** estimate (eq. 5): c / N, the share that succeeds, stored as a soft label
  (+1 and −1 at the ends, a value strictly between 0 and 1 otherwise), which the PRM's loss
  takes as its target (:func:`rlhf.data.step_tokens.step_target`).

The last step needs no completion: the solution itself is verified (+1 or −1). Every prefix of
every solution is sampled in one ``engine.generate`` call (prompt-major, seeded), so the labels
are reproducible for a given engine and seed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

from rlhf.data.records import StepRecord
from rlhf.rollout.types import GenerationEngine, SamplingParams

Estimate = Literal["hard", "soft"]
Verifier = Callable[[StepRecord, str], bool]  # (record, a solution's text) -> right answer?

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number_matches(record: StepRecord, text: str) -> bool:
    """Whether the last number in ``text`` equals the record's ``answer`` (as numbers: "9",
    "9.0"; commas in thousands ignored), the usual check of math word problems (GSM8K)."""
    if record.answer is None:
        raise ValueError("the last-number verifier needs each record's `answer`")
    numbers = _NUMBER.findall(text.replace(",", ""))
    expected = _NUMBER.findall(record.answer.replace(",", ""))
    return bool(numbers and expected) and float(numbers[-1]) == float(expected[-1])


def step_world_solves(record: StepRecord, text: str) -> bool:
    """The embedded step world's check: the text's steps solve the problem its prompt states
    (:func:`rlhf.sim.steps.verify_solution`)."""
    from rlhf.sim.steps import verify_solution

    if not isinstance(record.prompt, str):
        raise ValueError("the step world's prompts are plain text")
    return verify_solution(record.prompt, text)


VERIFIERS: dict[str, Verifier] = {"step_world": step_world_solves, "answer": last_number_matches}


def prefix_text(record: StepRecord, steps: int, separator: str) -> str:
    """The text the policy continues after step ``steps`` (the prompt as it is, then the
    first ``steps`` steps, each followed by the separator)."""
    if not isinstance(record.prompt, str):
        raise ValueError(
            "Monte-Carlo step labels continue a plain-text prompt; this record's prompt is a "
            "message list"
        )
    return record.prompt + "".join(step + separator for step in record.steps[:steps])


def estimate_label(correct: int, total: int, estimate: Estimate) -> float:
    """A step's label from ``correct`` of ``total`` completions reaching the right answer."""
    if total < 1:
        raise ValueError("a Monte-Carlo estimate needs at least one completion")
    if estimate == "hard":
        return 1 if correct > 0 else -1
    share = correct / total
    return 1 if share == 1.0 else -1 if share == 0.0 else share


def monte_carlo_labels(
    engine: GenerationEngine,
    records: Sequence[StepRecord],
    verify: Verifier,
    *,
    completions: int,
    max_new_tokens: int,
    separator: str = "\n",
    estimate: Estimate = "hard",
    temperature: float = 1.0,
    seed: int = 0,
) -> list[StepRecord]:
    """``records`` with every step labelled by Monte-Carlo completion (module docstring); the
    records' own labels are replaced, their steps and answers kept."""
    if completions < 1:
        raise ValueError(f"completions must be at least 1, got {completions}")
    prefixes = [
        (row, k, prefix_text(record, k, separator))
        for row, record in enumerate(records)
        for k in range(1, len(record.steps))  # the last step is verified as it is
    ]
    correct = [0] * len(prefixes)
    if prefixes:
        params = SamplingParams(
            max_new_tokens, temperature=temperature, num_samples=completions, seed=seed,
            return_logps=False,
        )  # fmt: skip
        batch = engine.generate([text for _, _, text in prefixes], params)
        for index, text in zip(batch.prompt_index.tolist(), batch.response_texts, strict=True):
            row, k, _ = prefixes[index]
            record = records[row]
            solution = separator.join(record.steps[:k]) + separator + text
            correct[index] += bool(verify(record, solution))
    labels: list[list[float]] = [[] for _ in records]
    for (row, _, _), count in zip(prefixes, correct, strict=True):
        labels[row].append(estimate_label(count, completions, estimate))
    out = []
    for row, record in enumerate(records):
        final = 1 if verify(record, separator.join(record.steps)) else -1
        out.append(replace(record, labels=(*labels[row], final)))
    return out
