"""Selecting one of N solutions (rlhf.eval.step_selection) against hand numbers, and the PRM
scorer on saved models."""

from __future__ import annotations

import pytest
import torch

from rlhf.eval.step_selection import (
    Candidate,
    accuracy_at,
    comparison,
    scored_candidates,
    select,
    selection_curves,
    selection_points,
)


def c(correct, answer, steps=(), orm=None):
    return Candidate(correct, answer, tuple(steps), orm)


# three candidates: the PRM prefers the right one by every aggregation, the ORM and the vote
# prefer a wrong one
RIGHT = c(True, "9", (0.9, 0.9), orm=0.2)
WRONG_A = c(False, "10", (0.95, 0.5), orm=0.7)
WRONG_B = c(False, "10", (0.6, 0.7), orm=0.1)


def test_each_method_against_hand_numbers():
    trio = [WRONG_A, RIGHT, WRONG_B]
    assert select(trio, "prm", "product") is RIGHT  # 0.475, 0.81, 0.42
    assert select(trio, "prm", "min") is RIGHT  # 0.5, 0.9, 0.6
    assert select(trio, "prm", "last") is RIGHT  # 0.5, 0.9, 0.7
    assert select(trio, "orm") is WRONG_A  # 0.7 is the highest outcome score
    assert select(trio, "majority") is WRONG_A  # "10" twice: the first of them
    # weighted by product: "10" gets 0.475 + 0.42 = 0.895 > "9"'s 0.81
    assert select(trio, "weighted_majority", "product") is WRONG_A
    # weighted by min: "10" 0.5 + 0.6 = 1.1 > 0.9
    assert select(trio, "weighted_majority", "min") is WRONG_A
    # with a weaker second wrong candidate, the weights turn the vote
    weak = c(False, "10", (0.1, 0.2))
    assert select([WRONG_A, RIGHT, weak], "weighted_majority", "product").answer == "9"


def test_ties_go_to_the_first_and_unanswered_candidates_do_not_vote():
    first, second = c(False, "1", (0.5,)), c(True, "2", (0.5,))
    assert select([first, second], "prm") is first
    assert select([c(False, None), second, c(False, None)], "majority") is second
    assert select([c(False, None), c(True, None)], "majority").correct is False  # none answer
    assert select([c(False, "1", ()), c(True, "2", (0.1,))], "prm").correct  # unscored loses
    with pytest.raises(ValueError, match="outcome_score"):
        select([c(True, "1")], "orm")
    with pytest.raises(ValueError, match="no candidate"):
        select([], "prm")


def test_accuracy_at_n_averages_disjoint_groups():
    # problem 1: candidates right, wrong, wrong, right (PRM scores make the right ones win)
    p1 = [c(True, "9", (0.9,)), c(False, "8", (0.2,)), c(False, "7", (0.3,)), c(True, "9", (0.8,))]
    # problem 2: every candidate wrong
    p2 = [c(False, "1", (0.5,))] * 4
    # N = 1: problem 1 right in 2 of 4 groups (0.5), problem 2 in none: (0.5 + 0) / 2
    assert accuracy_at([p1, p2], 1, "prm") == pytest.approx(0.25)
    # N = 2: groups (right, wrong) and (wrong, right): the PRM picks right in both: (1 + 0) / 2
    assert accuracy_at([p1, p2], 2, "prm") == pytest.approx(0.5)
    assert accuracy_at([p1, p2], 4, "majority") == pytest.approx(0.5)  # "9" twice
    curves = selection_curves([p1, p2], [1, 2, 4], methods=("prm", "majority"))
    assert curves == {"prm": [0.25, 0.5, 0.5], "majority": [0.25, 0.25, 0.5]}
    with pytest.raises(ValueError, match="fewer than N"):
        accuracy_at([p1], 8, "prm")


def test_the_prm_scorer_reads_the_steps_of_each_solution(tiny_model_dir, tmp_path):
    from rlhf.data.step_tokens import collate_steps, tokenize_solution
    from rlhf.models.load import load_model, load_tokenizer, save_model
    from rlhf.models.prm import ProcessRewardModel, init_process_reward_model, step_logits

    tokenizer = load_tokenizer(tiny_model_dir)
    model = init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=1)
    save_model(model, tokenizer, tmp_path / "prm")
    scorer = ProcessRewardModel.load(tmp_path / "prm")
    prompts = ["What is 2 + 3?", "What is 1 + 1?"]
    solutions = [["2 + 3 = 5", "The answer is 5."], ["1 + 1 = 3"]]
    scores = scorer.step_probabilities(prompts, solutions, batch_size=1)
    assert [s.shape[0] for s in scores] == [2, 1]

    class Row:
        def __init__(self, prompt, steps):
            self.prompt, self.steps, self.labels = prompt, steps, (None,) * len(steps)

    example = tokenize_solution(tokenizer, Row(prompts[0], solutions[0]), "\n", None)[0]
    batch = collate_steps([example], tokenizer.pad_token_id)
    direct = step_logits(
        model, batch.input_ids, batch.attention_mask, batch.step_rows, batch.step_ends
    )
    assert torch.allclose(scores[0], direct.sigmoid(), atol=1e-5)
    assert scorer.step_probabilities(prompts[:1], [solutions[0]], max_length=3)[0].numel() == 0
    plain = load_model(tiny_model_dir, tokenizer=tokenizer)  # a causal LM, no PRM marker
    with pytest.raises(ValueError, match="not a process reward model"):
        ProcessRewardModel(plain, tokenizer)


def test_step_world_rule_reward():
    from rlhf.rewards import RewardSpec, build_reward

    reward = build_reward(RewardSpec(rule="step_world"))
    prompt = "Compute 7 + 5 - 3.\n"
    right = "7 + 5 = 12\n12 - 3 = 9\nThe answer is 9."
    slipped = "7 + 5 = 12\n12 - 3 = 10\nThe answer is 10."
    scores = reward([prompt] * 3, [right, slipped, "9"])
    assert scores.tolist() == [1.0, 0.0, 0.0]


def test_a_prm_as_a_reward_aggregates_its_steps(tiny_model_dir, tmp_path):
    from rlhf.losses.prm import aggregate_steps
    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.prm import ProcessRewardModel, init_process_reward_model
    from rlhf.rewards import RewardSpec, build_reward

    tokenizer = load_tokenizer(tiny_model_dir)
    save_model(
        init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=2),
        tokenizer,
        tmp_path / "prm",
    )
    prompt, response = "What is 2 + 3?", "2 + 3 = 5\n\nThe answer is 5.\n"
    for how in ("product", "min", "last"):
        reward = build_reward(RewardSpec(prm=str(tmp_path / "prm"), prm_aggregation=how))
        scores = reward([prompt, prompt], [response, "  \n"])
        steps = ProcessRewardModel.load(tmp_path / "prm").step_probabilities(
            [prompt], [["2 + 3 = 5", "The answer is 5."]]
        )[0]
        assert scores[0].item() == pytest.approx(aggregate_steps(steps, how).item(), abs=1e-6)
        assert scores[1].item() == 0.0  # no step: no reward


def test_oracle_and_selection_points_with_standard_errors():
    p1 = [c(False, "8", (0.9,), orm=0.1), c(True, "9", (0.2,), orm=0.9)]
    p2 = [c(False, "1", (0.5,), orm=0.5)] * 2
    assert select(p1, "oracle").correct and not select(p2, "oracle").correct
    points = selection_points([p1, p2], [1, 2], comparison(with_outcome=True))
    by = {(p.selector, p.n): p for p in points}
    assert [s.label for s in comparison(with_outcome=False)] == [
        "oracle (any right)", "prm (product)", "prm (min)", "prm (last)", "majority",
        "weighted majority",
    ]  # fmt: skip
    # N = 1: every selector takes the one candidate: problem 1 right in 1 of 2 groups, 2 never
    assert {round(p.accuracy, 6) for p in points if p.n == 1} == {0.25}
    assert by["oracle (any right)", 1].se == pytest.approx(0.25)  # std of (0.5, 0) / √2
    assert by["oracle (any right)", 2].accuracy == pytest.approx(0.5)
    assert by["prm (product)", 2].accuracy == 0.0  # prefers the wrong 0.9
    assert by["orm", 2].accuracy == pytest.approx(0.5)  # prefers the right 0.9


class StepScores:
    """Stands in for a ProcessReward: the step scores of known responses."""

    def __init__(self, scores):
        self.scores = scores

    def step_scores(self, prompts, responses):
        return [torch.tensor(self.scores[r]) for r in responses]


def test_scored_candidates_read_gold_answers_steps_and_outcome():
    from rlhf.rollout.candidates import CandidateRecord

    sample = CandidateRecord(
        "Compute 2 + 3.",
        ("2 + 3 = 5\nThe answer is 5.", "2 + 3 = 6\nThe answer is 6.", "no idea"),
        (True, True, False),
        (-1.0, -2.0, -3.0),
        {"rewards": [0.1, 0.7, 0.0], "gold": [1.0, 0.0, 0.0]},
    )
    prm = StepScores({sample.responses[0]: [0.9, 0.8], sample.responses[1]: [0.3, 0.9],
                      "no idea": []})  # fmt: skip
    (candidates,) = scored_candidates([sample], prm)
    assert [x.correct for x in candidates] == [True, False, False]
    assert [x.answer for x in candidates] == ["5", "6", None]
    assert candidates[0].step_scores == pytest.approx((0.9, 0.8))
    assert [x.outcome_score for x in candidates] == pytest.approx([0.1, 0.7, 0.0])
    (without,) = scored_candidates([sample], prm, with_outcome=False)
    assert without[0].outcome_score is None
    continuous = CandidateRecord("p", ("a",), (True,), (0.0,), {"rewards": [0.0], "gold": [0.37]})
    with pytest.raises(ValueError, match="0/1 verifier"):
        scored_candidates([continuous], StepScores({"a": [0.5]}))
    no_gold = CandidateRecord("p", ("a",), (True,), (0.0,), {"rewards": [0.0]})
    with pytest.raises(ValueError, match="gold verifier"):
        scored_candidates([no_gold], StepScores({"a": [0.5]}))


def test_best_of_n_with_a_prm_compares_the_choices(tiny_model_dir, tmp_path):
    """`rlhf best-of-n --prm` through the command line: one accuracy per selector and N, the
    same for all at N = 1 (one candidate), the oracle above every other."""
    import json

    from typer.testing import CliRunner

    from rlhf.cli import app
    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.prm import init_process_reward_model

    tokenizer = load_tokenizer(tiny_model_dir)
    model = init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=3)
    save_model(model, tokenizer, tmp_path / "prm")
    out = tmp_path / "bon"
    common = [
        "best-of-n", "-m", str(tiny_model_dir), "--prompts", "builtin:step-problems?n=3",
        "--reward", "rule=step_world", "--max-n", "4", "--max-new-tokens", "12",
        "--prm", str(tmp_path / "prm"), "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(app, [*common, "--gold", "rule=step_world"])
    assert result.exit_code == 0, result.output
    assert "weighted majority" in result.output
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    selectors = [s.label for s in comparison(with_outcome=True)]
    assert [(r["selector"], r["n"]) for r in rows] == [(s, n) for s in selectors for n in (1, 2, 4)]
    assert len({r["accuracy"] for r in rows if r["n"] == 1}) == 1
    oracle = {r["n"]: r["accuracy"] for r in rows if r["selector"].startswith("oracle")}
    assert all(r["accuracy"] <= oracle[r["n"]] for r in rows)
    assert (out / "selection.csv").exists()
    markdown = (out / "report.md").read_text()
    assert "## Choosing one of N solutions" in markdown and "| weighted majority |" in markdown
    no_gold = CliRunner().invoke(app, common)
    assert no_gold.exit_code == 1 and "0/1 verifier as --gold" in no_gold.output
    continuous = CliRunner().invoke(app, [*common, "--gold", "rule=world_gold"])
    assert continuous.exit_code == 1 and "0/1 verifier" in continuous.output
    assert "Traceback" not in continuous.output
