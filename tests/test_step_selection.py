"""Selecting one of N solutions (rlhf.eval.step_selection) against hand numbers, and the PRM
scorer on saved models."""

from __future__ import annotations

import pytest
import torch

from rlhf.eval.step_selection import Candidate, accuracy_at, select, selection_curves


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
