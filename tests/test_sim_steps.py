"""The embedded step world: problems, the gold step checker, noisy solutions and builtins."""

from __future__ import annotations

import random

import pytest

from rlhf.data.records import CompletionRecord, PromptRecord, StepRecord
from rlhf.sim import steps
from rlhf.sim.builtin import load_builtin
from rlhf.sim.steps import StepProblem
from rlhf.sim.world import is_heldout_prompt

# Compute 7 + 5 - 3 + 8.
PROBLEM = StepProblem(operands=(7, 5, 3, 8), operators=("+", "-", "+"))
SOLUTION = ["7 + 5 = 12", "12 - 3 = 9", "9 + 8 = 17", "The answer is 17."]


# ---------------------------------------------------------------- problems


def test_problem_prompt_answer_and_parse_round_trip():
    assert PROBLEM.prompt == "Compute 7 + 5 - 3 + 8.\n"
    assert PROBLEM.answer == 17
    assert PROBLEM.operations == (("+", 5), ("-", 3), ("+", 8))
    assert steps.parse_problem(PROBLEM.prompt) == PROBLEM
    # any spacing, and inside a longer text (e.g. a chat-templated prompt)
    assert steps.parse_problem("User: Compute 7+5 -3 +  8 .\nAssistant:") == PROBLEM
    for problem in steps.step_problems(300, seed=5, min_ops=1, max_ops=5):
        assert steps.parse_problem(problem.prompt) == problem
    with pytest.raises(ValueError, match="not a step problem"):
        steps.parse_problem("What is 47 + 38?\n")


@pytest.mark.parametrize(
    ("operands", "operators"),
    [((7,), ()), ((7, 5), ("+", "-")), ((7, 5), ("*",)), ((7, -5), ("+",))],
)
def test_bad_problems_are_refused(operands, operators):
    with pytest.raises(ValueError):
        StepProblem(operands, operators)


def test_problems_are_seeded_sized_and_never_negative():
    problems = steps.step_problems(500, seed=3)
    assert problems == steps.step_problems(500, seed=3) != steps.step_problems(500, seed=4)
    assert {len(p.operators) for p in problems} == {2, 3, 4}
    assert {len(p.operators) for p in steps.step_problems(200, 3, 5, 5)} == {5}
    for problem in problems:
        assert all(0 <= x <= steps.MAX_OPERAND for x in problem.operands)
        value = problem.operands[0]
        for operator, right in problem.operations:
            value = value + right if operator == "+" else value - right
            assert value >= 0
        assert value == problem.answer
    assert len({p.prompt for p in problems}) > 490  # nearly all distinct
    with pytest.raises(ValueError, match="min_ops"):
        steps.step_problems(5, 0, min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="split"):
        steps.step_problems(5, 0, split="test")


def test_splits_are_disjoint_and_cover_all():
    train = {p.prompt for p in steps.step_problems(800, 0, split="train")}
    held = {p.prompt for p in steps.step_problems(200, 0, split="eval")}
    assert len(train) > 700 and len(held) > 150
    assert not train & held
    everything = steps.step_problems(1000, 0)
    share = sum(is_heldout_prompt(p.prompt) for p in everything) / len(everything)
    assert 0.15 < share < 0.25  # one in five held out
    # a split keeps its side of the same stream, in order
    assert [p for p in everything if not is_heldout_prompt(p.prompt)] == (
        steps.step_problems(len(everything) - round(share * 1000), 0, split="train")
    )


# ---------------------------------------------------------------- the gold checker


def test_canonical_solution_is_all_correct():
    assert steps.solve(PROBLEM) == SOLUTION
    assert steps.check_steps(PROBLEM, SOLUTION) == [1, 1, 1, 1]
    assert steps.first_error([1, 1, 1, 1]) is None
    assert steps.final_answer(SOLUTION) == 17 and steps.is_correct(PROBLEM, SOLUTION)
    for problem in steps.step_problems(200, seed=1, min_ops=1, max_ops=5):
        solution = steps.solve(problem)
        assert len(solution) == len(problem.operators) + 1
        assert steps.check_steps(problem, solution) == [1] * len(solution)
        assert steps.is_correct(problem, solution)


def test_a_slip_is_wrong_and_continuing_from_it_is_right():
    # 12 - 3 is 9, not 10; the rest continues correctly from the stated 10 (PRM800K)
    slipped = ["7 + 5 = 12", "12 - 3 = 10", "10 + 8 = 18", "The answer is 18."]
    labels = steps.check_steps(PROBLEM, slipped)
    assert labels == [1, -1, 1, 1]
    assert steps.first_error(labels) == 1
    assert steps.final_answer(slipped) == 18 and not steps.is_correct(PROBLEM, slipped)
    # continuing from the true value instead of the stated one is not a valid step
    assert steps.check_steps(PROBLEM, ["7 + 5 = 12", "12 - 3 = 10", "9 + 8 = 17"]) == [1, -1, -1]
    # two slips that cancel: the right answer through wrong steps
    cancel = ["7 + 5 = 14", "14 - 3 = 9", "9 + 8 = 17", "The answer is 17."]
    assert steps.check_steps(PROBLEM, cancel) == [-1, -1, 1, 1]
    assert steps.is_correct(PROBLEM, cancel)


@pytest.mark.parametrize(
    ("solution", "labels"),
    [
        # a wrong answer step
        (["7 + 5 = 12", "12 - 3 = 9", "9 + 8 = 17", "The answer is 16."], [1, 1, 1, -1]),
        # a wrong first operand
        (["8 + 5 = 13", "13 - 3 = 10", "10 + 8 = 18"], [-1, 1, 1]),
        # an operation out of order: "- 3" skipped uses up its slot, "+ 8" then comes too soon
        (["7 + 5 = 12", "12 + 8 = 20", "20 - 3 = 17"], [1, -1, -1]),
        # the wrong operator
        (["7 - 5 = 2", "2 - 3 = -1", "-1 + 8 = 7", "The answer is 7."], [-1, 1, 1, 1]),
        # prose and cut-off lines are -1 and change nothing
        (
            ["Let me think.", "7 + 5 = 12", "12 - 3 =", "12 - 3 = 9", "9 + 8 = 17"],
            [-1, 1, -1, 1, 1],
        ),
        # answering early, an extra step, anything after the answer
        (["7 + 5 = 12", "The answer is 12."], [1, -1]),
        (["7 + 5 = 12", "The answer is 12.", "12 - 3 = 9"], [1, -1, -1]),
        ([*SOLUTION[:3], "17 + 1 = 18", "The answer is 18."], [1, 1, 1, -1, 1]),
        ([*SOLUTION, "The answer is 17."], [1, 1, 1, 1, -1]),
        # spacing is free, the answer's full stop optional
        (["  7+5=12 ", "12 -3= 9", "9 + 8 = 17", "The answer is 17"], [1, 1, 1, 1]),
        ([], []),
    ],
)
def test_step_labels(solution, labels):
    assert steps.check_steps(PROBLEM, solution) == labels


def test_final_answer_only_from_an_answer_step():
    assert steps.final_answer([]) is None
    assert steps.final_answer(SOLUTION[:3]) is None  # no answer step
    assert steps.final_answer(["The answer is -4."]) == -4
    assert not steps.is_correct(PROBLEM, SOLUTION[:3])
    assert steps.first_error([1, -1, 1, -1]) == 1 and steps.first_error([]) is None


def test_split_steps_reads_a_completion():
    text = "\n".join(SOLUTION)
    assert steps.split_steps(text) == SOLUTION
    assert steps.split_steps("  7 + 5 = 12\n\n12 - 3 = 9  \n") == SOLUTION[:2]


# ---------------------------------------------------------------- noisy solutions


def test_noisy_solutions_slip_at_the_rate_asked_and_only_there():
    rng = random.Random(0)
    problems = steps.step_problems(2000, seed=7)
    for rate in (0.0, 0.2, 0.5):
        wrong = total = correct = 0
        for problem in problems:
            solution = steps.noisy_solution(problem, rate, rng)
            assert len(solution) == len(problem.operators) + 1
            labels = steps.check_steps(problem, solution)
            wrong += labels.count(-1)
            total += len(labels)
            correct += steps.is_correct(problem, solution)
            if -1 not in labels:
                assert solution == steps.solve(problem)
        assert abs(wrong / total - rate) < 0.02
        if rate == 0.0:
            assert correct == len(problems)
        else:  # a slip rarely cancels out
            assert correct / len(problems) < (1 - rate) ** 3 + 0.05
    with pytest.raises(ValueError, match="error_rate"):
        steps.noisy_solution(PROBLEM, 1.5, rng)


def test_noisy_solutions_are_seeded():
    first = steps.noisy_solutions(50, seed=2, error_rate=0.4)
    assert first == steps.noisy_solutions(50, seed=2, error_rate=0.4)
    assert [p for p, _ in first] == steps.step_problems(50, 2)


# ---------------------------------------------------------------- builtins


def test_step_problems_builtin_feeds_online_rl():
    from rlhf.rollout.candidates import load_prompts

    source = "builtin:step-problems?n=60&seed=1&split=eval"
    records = load_builtin(source)
    assert len(records) == 60 and all(isinstance(r, PromptRecord) for r in records)
    assert records == load_builtin(source) != load_builtin(source.replace("seed=1", "seed=2"))
    assert all(is_heldout_prompt(r.prompt) for r in records)
    assert [steps.parse_problem(r.prompt) for r in records] == steps.step_problems(
        60, 1, split="eval"
    )
    prompts = load_prompts("builtin:step-problems?n=100&min_ops=3&max_ops=3")
    assert len(prompts) > 90 and all(p.count(" + ") + p.count(" - ") == 3 for p in prompts)


def test_step_sft_builtin_is_canonical_solutions(tmp_path):
    from rlhf.data.readers import read_records, write_records
    from rlhf.recipes.common import DataConfig, load_records

    source = "builtin:step-sft?n=40&seed=3&split=train"
    records = load_builtin(source)
    assert len(records) == 40 and all(isinstance(r, CompletionRecord) for r in records)
    for record in records:
        problem = steps.parse_problem(record.prompt)
        solution = steps.split_steps(record.completion)
        assert record.completion == "\n".join(steps.solve(problem)) == "\n".join(solution)
        assert steps.is_correct(problem, solution)
    assert load_records(source, DataConfig(train=source)) == records
    write_records(tmp_path / "sft.jsonl", records)
    assert read_records(tmp_path / "sft.jsonl").records == records


def test_step_solutions_builtin_rows(tmp_path):
    from rlhf.data.readers import read_records, write_records

    records = load_builtin("builtin:step-solutions?n=300&seed=4&error_rate=0.25")
    assert all(isinstance(r, StepRecord) for r in records)
    assert records == load_builtin("builtin:step-solutions?n=300&seed=4&error_rate=0.25")
    assert [r.prompt for r in records] == [
        r.prompt for r in load_builtin("builtin:step-problems?n=300&seed=4")
    ]
    wrong = total = 0
    for record in records:
        row = record.to_dict()
        assert set(row) >= {"prompt", "steps", "labels", "answer"}
        problem = steps.parse_problem(row["prompt"])
        assert row["answer"] == str(problem.answer)
        assert list(row["labels"]) == steps.check_steps(problem, row["steps"])
        assert len(row["steps"]) == len(problem.operators) + 1
        wrong += list(row["labels"]).count(-1)
        total += len(row["labels"])
    assert 0.2 < wrong / total < 0.3
    write_records(tmp_path / "steps.jsonl", records)  # the readers' checks pass every row
    assert read_records(tmp_path / "steps.jsonl").records == records
    clean = load_builtin("builtin:step-solutions?n=20&seed=4&error_rate=0")
    assert all(set(r.to_dict()["labels"]) == {1} for r in clean)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("builtin:step-solutions?error_rate=1.5", "error_rate is a share"),
        ("builtin:step-problems?split=test", "split 'test'"),
        ("builtin:step-sft?min_ops=4&max_ops=2", "min_ops"),
        ("builtin:step-problems?error_rate=0.1", r"use n and seed and split and min_ops"),
    ],
)
def test_step_builtin_options_are_checked(source, message):
    with pytest.raises(ValueError, match=message):
        load_builtin(source)


def test_step_outcomes_are_thumbs_labelled_by_the_final_answer():
    from rlhf.data.records import BinaryRecord
    from rlhf.sim.builtin import load_builtin
    from rlhf.sim.steps import parse_problem, split_steps, verify_solution

    rows = load_builtin("builtin:step-outcomes?n=50&seed=3&k=4&error_rate=0.3")
    assert len(rows) == 200 and all(isinstance(r, BinaryRecord) for r in rows)
    for row in rows:
        assert row.label == verify_solution(row.prompt, row.completion)
        assert split_steps(row.completion)[-1].startswith("The answer is")
    # four solutions of each problem, consecutive; some right and some wrong overall
    assert len({r.prompt for r in rows[:4]}) == 1 and parse_problem(rows[0].prompt)
    assert 0 < sum(r.label for r in rows) < len(rows)
    assert load_builtin("builtin:step-outcomes?n=50&seed=3&k=4&error_rate=0.3") == rows
    with pytest.raises(ValueError, match="at least one solution"):
        load_builtin("builtin:step-outcomes?n=5&k=0")
