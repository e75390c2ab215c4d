"""Conversational prompts with a ground-truth field work wherever a prompt does: `rlhf sample`,
`rlhf best-of-n` and GRPO with `rule=gsm8k` and the answer column, through the chat template."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.rewards.rules import arithmetic_answer, final_number
from rlhf.rollout.candidates import load_prompts_and_answers, read_candidates
from rlhf.sim.builtin import arithmetic

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_rows(n):
    """GSM8K-like rows whose prompt is a message list (a system turn, then the question) and
    whose `answer` is the question's, in GSM8K's `#### N` form."""
    questions = [record.prompt for record in arithmetic(n, seed=5)]
    return [
        {
            "prompt": [
                {"role": "system", "content": "Answer with the number."},
                {"role": "user", "content": question},
            ],
            "answer": f"#### {arithmetic_answer(question)}",
        }
        for question in questions
    ]


def test_answers_are_read_for_message_prompts_and_conversations(tmp_path):
    rows = chat_rows(4)
    prompts, metadata = load_prompts_and_answers(write_jsonl(tmp_path / "p.jsonl", rows), "answer")
    assert [tuple(m.content for m in p) for p in prompts] == [
        tuple(m["content"] for m in row["prompt"]) for row in rows
    ]
    assert [m["answer"] for m in metadata] == [row["answer"] for row in rows]

    # a conversation row: the prompt is every turn before the last assistant turn
    conversation = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": "an answer"},
            ],
            "solution": i,
        }
        for i in range(3)
    ]
    source = write_jsonl(tmp_path / "c.jsonl", conversation)
    prompts, metadata = load_prompts_and_answers(source, "solution")
    assert [p[0].content for p in prompts] == ["question 0", "question 1", "question 2"]
    assert [m["answer"] for m in metadata] == [0, 1, 2]

    # a column mapped by `columns` still names the file's own answer column
    renamed = [{"question": row["prompt"], "gold": row["answer"]} for row in rows]
    source = write_jsonl(tmp_path / "r.jsonl", renamed)
    _, metadata = load_prompts_and_answers(source, "gold", columns={"prompt": "question"})
    assert [m["answer"] for m in metadata] == [row["answer"] for row in rows]


def test_a_message_prompt_without_its_answer_is_named(tmp_path):
    rows = chat_rows(3)
    del rows[1]["answer"]
    with pytest.raises(ValueError, match=r"1 of 3 prompts .* have no 'answer'") as error:
        load_prompts_and_answers(write_jsonl(tmp_path / "p.jsonl", rows), "answer")
    assert "plain-text" not in str(error.value)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny SFT model (its tokenizer has a chat template) to sample from."""
    out = tmp_path_factory.mktemp("sft") / "run"
    result = invoke(
        "sft", "--preset", "tiny", f"out={out}", "train.max_steps=5", "progress=false",
        "tensorboard=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out / "model"


def test_sample_scores_each_chat_prompt_against_its_own_answer(policy, tmp_path):
    common = ("-m", policy, "-k", 3, "--max-new-tokens", 12, "--seed", 7, "--no-progress")
    rows = chat_rows(6)
    plain = tmp_path / "plain.jsonl"
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    first = invoke("sample", "--prompts", source, "-o", plain, *common)
    assert first.exit_code == 0, first.output
    # each prompt's answer becomes the final number of its own first sample (or one no sample
    # can reach): the same seeded sampling again must reward exactly the samples that give it
    for row, candidate in zip(rows, read_candidates(plain), strict=True):
        number = final_number(candidate.responses[0])
        row["answer"] = f"#### {number if number is not None else -987654}"
    source = write_jsonl(tmp_path / "answers.jsonl", rows)
    scored = tmp_path / "scored.jsonl"
    result = invoke(
        "sample", "--prompts", source, "--reward", "rule=gsm8k", "--answer-field", "answer",
        "-o", scored, *common,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    candidates = read_candidates(scored)
    assert len(candidates) == len(rows)
    for row, candidate in zip(rows, candidates, strict=True):
        assert not isinstance(candidate.prompt, str)
        answer = int(row["answer"].removeprefix("#### "))
        expected = [float(final_number(r) == answer) for r in candidate.responses]
        assert candidate.extra["rewards"] == expected

    report = tmp_path / "bon"
    result = invoke(
        "best-of-n", "-m", policy, "--prompts", source, "--reward", "rule=gsm8k",
        "--answer-field", "answer", "--max-n", 2, "--max-new-tokens", 12, "--out", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (report / "best_of_n.jsonl").read_text().strip()


def test_grpo_trains_on_chat_prompts_with_answers(tmp_path):
    source = write_jsonl(tmp_path / "prompts.jsonl", chat_rows(24))
    out = tmp_path / "grpo"
    result = invoke(
        "grpo", "--preset", "tiny", f"out={out}", "init_sft.train.max_steps=5",
        f"data.prompts={source}", "data.eval_prompts=null", "data.answer_field=answer",
        "reward.rule=gsm8k", "eval.gold_reward.rule=gsm8k", "rollout.iterations=1",
        "rollout.prompts_per_iteration=8", "rollout.samples_per_prompt=4",
        "rollout.minibatch_size=16", "train.batch_size=16", "eval.prompts=8",
        "sampling.max_new_tokens=8", "progress=false", "tensorboard=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("rollout_reward" in row for row in rows)
    assert any("greedy_reward" in key for row in rows for key in row)


def test_raft_scores_chat_prompts_against_their_answers(tmp_path):
    source = write_jsonl(tmp_path / "prompts.jsonl", chat_rows(16))
    out = tmp_path / "raft"
    result = invoke(
        "raft", "--preset", "tiny", f"out={out}", "init_sft.train.max_steps=5",
        f"prompts={source}", "answer_field=answer", "reward.rule=gsm8k", "raft.rounds=1",
        "raft.prompts_per_round=8", "raft.num_samples=2", "raft.eval_prompts=4",
        "raft.min_reward=null", "sampling.max_new_tokens=8", "progress=false",
        "tensorboard=false",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in (out / "rounds/round-1/selected.jsonl").open()]
    assert len(kept) == 8 and all(isinstance(row["prompt"], list) for row in kept)

    missing = invoke(
        "raft", "--preset", "tiny", f"out={tmp_path / 'again'}", f"prompts={source}",
        "answer_field=solution", "reward.rule=gsm8k",
    )  # fmt: skip
    assert missing.exit_code == 1 and "answer_field 'solution': 16 of 16 prompts" in missing.output
