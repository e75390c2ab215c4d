"""Process reward models: the per-step loss and the aggregations against hand numbers, the
step tokenisation, the token-classifier model and its first-error metric."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from rlhf.data.step_tokens import collate_steps, step_target, tokenize_solution
from rlhf.losses.prm import aggregate_steps, first_error, step_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_step_loss_against_hand_numbers():
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0])
    targets = torch.tensor([1.0, 0.0, float("nan"), 0.7])  # the third step is not in the loss
    loss, metrics = step_loss(logits, targets)
    expected = (
        -math.log(sigmoid(0.0))
        - math.log(1 - sigmoid(2.0))
        - (0.7 * math.log(sigmoid(1.0)) + 0.3 * math.log(1 - sigmoid(1.0)))
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # 0.6931 + 2.1269 + 0.6133
    assert metrics["steps"] == 3 and metrics["positive_steps"] == 2
    # logit 0 is not > 0 (judged wrong, label right), logit 2 judged right (label wrong),
    # logit 1 judged right against a soft 0.7: one of three
    assert metrics["correct_steps"] == 1


def test_step_loss_has_a_gradient_only_through_labelled_steps():
    logits = torch.tensor([0.5, -0.5], requires_grad=True)
    loss, _ = step_loss(logits, torch.tensor([1.0, float("nan")]))
    loss.backward()
    assert logits.grad[0].item() == pytest.approx(sigmoid(0.5) - 1.0)
    assert logits.grad[1].item() == 0.0


def test_aggregations_and_first_error_against_hand_numbers():
    p = torch.tensor([0.9, 0.5, 0.8])
    assert aggregate_steps(p, "min").item() == pytest.approx(0.5)
    assert aggregate_steps(p, "product").item() == pytest.approx(0.36)
    assert aggregate_steps(p, "last").item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no scored step"):
        aggregate_steps(torch.tensor([]), "min")
    assert first_error([True, True, False, False]) == 2
    assert first_error([True, True]) is None


def test_step_targets():
    assert [step_target(x) for x in (1, -1, 0, None, 0.25)] == [1.0, 0.0, 1.0, None, 0.25]
    assert step_target(0, "negative") == 0.0 and step_target(0, "ignore") is None
    with pytest.raises(ValueError, match="a step label is"):
        step_target(2)


@dataclass
class Solution:
    prompt: str
    steps: tuple[str, ...]
    labels: tuple[float | None, ...]


def test_tokenize_solution_reads_each_step_at_its_separator(tiny_model_dir):
    from rlhf.models.load import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    solution = Solution("What is 2 + 3 + 4?", ("2 + 3 = 5", "5 + 4 = 9"), (1, -1))
    example, cut = tokenize_solution(tokenizer, solution, "\n", max_length=None)
    separator = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert not cut and example.targets == (1.0, 0.0) and example.labels == (1, -1)
    for end in example.ends:  # each step's score is read at its separator's last token
        assert list(example.input_ids[end - len(separator) + 1 : end + 1]) == separator
    assert example.ends[-1] == example.length - 1
    # the second step's tokens sit between the two separators, tokenised on their own
    second = tokenizer("5 + 4 = 9", add_special_tokens=False)["input_ids"]
    start = example.ends[0] + 1
    assert list(example.input_ids[start : start + len(second)]) == second
    # a limit that fits only the first step keeps it and counts the cut
    short, cut = tokenize_solution(tokenizer, solution, "\n", max_length=example.ends[0] + 1)
    assert short.ends == example.ends[:1] and short.targets == (1.0,) and cut.tokens > 0
    assert (
        tokenize_solution(tokenizer, solution, "\n", example.ends[0] + 1, truncation="drop") is None
    )
    assert tokenize_solution(tokenizer, solution, "\n", max_length=3) is None  # no step fits


def test_the_model_reads_one_logit_per_step_and_exports_its_separator(tiny_model_dir, tmp_path):
    from transformers import AutoModelForTokenClassification

    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.prm import PRM_KEY, init_process_reward_model, step_logits

    tokenizer = load_tokenizer(tiny_model_dir)
    model = init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=0)
    solutions = [
        Solution("What is 2 + 3 + 4?", ("2 + 3 = 5", "5 + 4 = 9"), (1, 1)),
        Solution("What is 1 + 1?", ("1 + 1 = 3",), (-1,)),
    ]
    examples = [tokenize_solution(tokenizer, s, "\n", None)[0] for s in solutions]
    batch = collate_steps(examples, tokenizer.pad_token_id)
    assert batch.step_rows.tolist() == [0, 0, 1] and batch.loss_units == 3
    logits = step_logits(
        model, batch.input_ids, batch.attention_mask, batch.step_rows, batch.step_ends
    )
    assert logits.shape == (3,)
    # a causal decoder's first step does not see the second: the same score alone
    alone = collate_steps(
        [
            tokenize_solution(
                tokenizer, Solution("What is 2 + 3 + 4?", ("2 + 3 = 5",), (1,)), "\n", None
            )[0]
        ],
        tokenizer.pad_token_id,
    )
    first = step_logits(
        model, alone.input_ids, alone.attention_mask, alone.step_rows, alone.step_ends
    )
    assert first[0].item() == pytest.approx(logits[0].item(), abs=1e-5)
    save_model(model, tokenizer, tmp_path / "prm")
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "prm")
    assert getattr(loaded.config, PRM_KEY)["separator"] == "\n"
    again = loaded(batch.input_ids, attention_mask=batch.attention_mask).logits[
        batch.step_rows, batch.step_ends, 0
    ]
    assert torch.allclose(again, logits, atol=1e-5)
    with pytest.raises(ValueError, match="step separator"):
        init_process_reward_model(tmp_path / "prm", tokenizer, "\n\n")


def test_true_first_error_needs_the_labels_up_to_it():
    from rlhf.recipes.prm import true_first_error

    assert true_first_error([1, 1, -1, None]) == (True, 2)
    assert true_first_error([1, 0, 1]) == (True, None)
    assert true_first_error([1, None, -1]) == (False, None)


def test_rlhf_prm_tiny_trains_evaluates_and_exports(tmp_path):
    """The tiny preset through the CLI, cut short: held-out step and first-error accuracy are
    logged, and the folder loads as a token classifier marked with its separator."""
    import json

    from transformers import AutoConfig
    from typer.testing import CliRunner

    from rlhf.cli import app

    out = tmp_path / "prm"
    result = CliRunner().invoke(
        app,
        ["prm", "--preset", "tiny", f"out={out}", "progress=false", "train.max_steps=40",
         "train.eval_every=20", "train.save_every=0",
         "data.train=builtin:step-solutions?n=400&seed=0&split=train&max_operand=5"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row.get("split") == "eval"]
    assert [row["step"] for row in evals] == [20, 40]
    for row in evals:
        assert 0 <= row["step_accuracy"] <= 1 and 0 <= row["first_error_accuracy"] <= 1
        assert row["solutions"] > 0 and row["steps"] >= row["solutions"]
    config = AutoConfig.from_pretrained(out / "model")
    assert config.architectures == ["LlamaForTokenClassification"]
    assert config.rlhf_process_reward["separator"] == "\n"


def test_rlhf_prm_refuses_records_without_steps(tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app

    result = CliRunner().invoke(
        app,
        ["prm", "--preset", "tiny", f"out={tmp_path / 'x'}",
         "data.train=builtin:world-preferences?n=20"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "step-level records" in result.output and "PreferenceRecord" in result.output
