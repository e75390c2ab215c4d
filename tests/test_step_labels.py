"""Monte-Carlo step labels (Math-Shepherd): the hard and soft estimates on a hand-built case
with a scripted engine, and one run on the real HF engine."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.records import StepRecord
from rlhf.rollout.step_labels import (
    VERIFIERS,
    estimate_label,
    last_number_matches,
    monte_carlo_labels,
    prefix_text,
)
from rlhf.rollout.types import RolloutBatch

PROMPT = "Compute 7 + 5 - 3.\n"
# 7 + 5 = 12 is right; 12 - 3 = 10 slips (the answer would be 9)
RECORD = StepRecord(PROMPT, ("7 + 5 = 12", "12 - 3 = 10", "The answer is 10."), (None,) * 3)


class ScriptedEngine:
    """Answers each prompt with the listed continuations (an engine whose samples we choose,
    to check the estimator's arithmetic)."""

    def __init__(self, continuations: dict[str, list[str]]) -> None:
        self.continuations, self.calls = continuations, []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params))
        texts = [t for p in prompts for t in self.continuations[p][: params.num_samples]]
        rows = len(texts)
        empty = torch.zeros((rows, 1), dtype=torch.long)
        return RolloutBatch(
            prompt_ids=empty, prompt_mask=empty, response_ids=empty, response_mask=empty,
            logps=None, ended_with_eos=torch.ones(rows, dtype=torch.bool),
            prompt_index=torch.arange(len(prompts)).repeat_interleave(params.num_samples),
            response_texts=texts,
        )  # fmt: skip


def scripted() -> ScriptedEngine:
    after_first = prefix_text(RECORD, 1, "\n")
    after_second = prefix_text(RECORD, 2, "\n")
    return ScriptedEngine(
        {
            # from the right first step: 3 of 4 completions reach 9
            after_first: [
                "12 - 3 = 9\nThe answer is 9.",
                "12 - 3 = 9\nThe answer is 9.",
                "12 - 3 = 8\nThe answer is 8.",
                "12 - 3 = 9\nThe answer is 9.",
            ],
            # from the slip (10), no completion can reach 9 by valid steps
            after_second: ["The answer is 10."] * 4,
        }
    )


def test_hard_and_soft_estimates_on_a_hand_built_case():
    assert prefix_text(RECORD, 1, "\n") == PROMPT + "7 + 5 = 12\n"
    engine = scripted()
    (hard,) = monte_carlo_labels(
        engine, [RECORD], VERIFIERS["step_world"], completions=4, max_new_tokens=16
    )
    # step 1: 3/4 succeed → +1; step 2: 0/4 → −1; step 3 (the answer) is verified as it is: 10 ≠ 9
    assert hard.labels == (1, -1, -1) and hard.steps == RECORD.steps
    ((prompts, params),) = engine.calls
    assert prompts == [PROMPT + "7 + 5 = 12\n", PROMPT + "7 + 5 = 12\n12 - 3 = 10\n"]
    assert params.num_samples == 4 and not params.return_logps
    (soft,) = monte_carlo_labels(
        scripted(),
        [RECORD],
        VERIFIERS["step_world"],
        completions=4,
        max_new_tokens=16,
        estimate="soft",
    )
    assert soft.labels == (0.75, -1, -1)


def test_a_right_solution_verified_at_its_last_step():
    right = StepRecord(PROMPT, ("7 + 5 = 12", "12 - 3 = 9", "The answer is 9."), (None,) * 3)
    engine = ScriptedEngine(
        {
            prefix_text(right, 1, "\n"): ["12 - 3 = 9\nThe answer is 9."],
            prefix_text(right, 2, "\n"): ["The answer is 9."],
        }
    )
    (labelled,) = monte_carlo_labels(
        engine, [right], VERIFIERS["step_world"], completions=1, max_new_tokens=8
    )
    assert labelled.labels == (1, 1, 1)


def test_estimate_label_and_bad_inputs():
    assert [estimate_label(c, 4, "hard") for c in (0, 1, 4)] == [-1, 1, 1]
    assert [estimate_label(c, 4, "soft") for c in (0, 1, 4)] == [-1, 0.25, 1]
    with pytest.raises(ValueError, match="at least one completion"):
        estimate_label(0, 0, "soft")
    with pytest.raises(ValueError, match="completions must be"):
        monte_carlo_labels(
            scripted(), [RECORD], VERIFIERS["step_world"], completions=0, max_new_tokens=4
        )
    chat = StepRecord(({"role": "user", "content": "hi"},), ("a", "b"), (None, None))
    with pytest.raises(ValueError, match="plain-text prompt"):
        prefix_text(chat, 1, "\n")


def test_labels_from_a_real_engine_are_seeded_and_readable(tiny_model_dir, tmp_path):
    """The HF engine on a tiny (untrained) model: one label per step, reproducible for a seed,
    and the labelled records round-trip through the readers (soft labels included)."""
    from rlhf.data.readers import read_records, write_records
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.rollout import HFGenerationEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    engine = HFGenerationEngine(load_model(tiny_model_dir, tokenizer=tokenizer), tokenizer)
    options = dict(completions=3, max_new_tokens=12, estimate="soft", seed=5)
    first = monte_carlo_labels(engine, [RECORD, RECORD], VERIFIERS["step_world"], **options)
    again = monte_carlo_labels(engine, [RECORD, RECORD], VERIFIERS["step_world"], **options)
    assert first == again and [len(r.labels) for r in first] == [3, 3]
    assert all(label == -1 or label == 1 or 0 < label < 1 for r in first for label in r.labels)
    write_records(tmp_path / "labelled.jsonl", first)
    assert read_records(tmp_path / "labelled.jsonl").records == first


def test_last_number_verifier():
    record = StepRecord("Q?", ("a",), (None,), answer="1,250")
    assert last_number_matches(record, "so 1000 + 250 = 1250. The answer is 1250.")
    assert last_number_matches(record, "1250.0")
    assert not last_number_matches(record, "The answer is 1249.")
    assert not last_number_matches(record, "no number")
    with pytest.raises(ValueError, match="needs each record's `answer`"):
        last_number_matches(StepRecord("Q?", ("a",), (None,)), "1")


def test_rlhf_label_steps_writes_one_label_per_step(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app
    from rlhf.data.readers import read_records

    out = tmp_path / "labelled.jsonl"
    result = CliRunner().invoke(
        app,
        ["label-steps", "-m", str(tiny_model_dir), "-i", "builtin:step-solutions?n=3&seed=0",
         "-o", str(out), "-n", "2", "--max-new-tokens", "8", "--estimate", "soft"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    labelled = read_records(out).records
    assert len(labelled) == 3 and all(len(r.labels) == len(r.steps) for r in labelled)
    bad = CliRunner().invoke(
        app, ["label-steps", "-m", str(tiny_model_dir), "-i", "builtin:step-problems?n=2",
              "-o", str(out)],
    )  # fmt: skip
    assert bad.exit_code != 0 and "not step-level solutions" in bad.output


def test_a_separator_typed_on_the_command_line_keeps_its_characters():
    from rlhf.cli.sample import unescape

    assert unescape("\\n") == "\n" and unescape("\\n\\n") == "\n\n"
    assert unescape("ки\\n") == "ки\n"  # non-ASCII kept, not read as UTF-8 bytes
    assert unescape("é") == "é" and unescape("\\u2014") == "—"
