"""Rewards behind one protocol: rules (arithmetic, GSM8K answers, formats), composites,
penalties (missing EOS, length) on hand-made rollouts, reward specs, the reward-model wrapper."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
import torch
import yaml

from rlhf.config import ConfigError, validate_config
from rlhf.data.records import Message
from rlhf.rewards import (
    AnswerFormat,
    ArithmeticCorrectness,
    CompositeReward,
    LengthPenalty,
    MathAnswer,
    MissingEOSPenalty,
    RegexFormat,
    RewardFunction,
    RewardModelReward,
    RewardOutput,
    RewardSpec,
    arithmetic_answer,
    build_reward,
    call_reward,
    dense_token_rewards,
    final_number,
    parse_number,
    parse_reward_spec,
    reference_answer,
    response_answer,
    response_as_text,
    rollout_metadata,
    score_reward,
)
from rlhf.rollout.types import RolloutBatch
from rlhf.sim.builtin import arithmetic


def test_arithmetic_rule_scores_the_final_number():
    rule = ArithmeticCorrectness()
    assert isinstance(rule, RewardFunction)
    prompts = ["What is 47 + 38?\n", "What is 47 - 38?\n", "What is 10 + 10?\n", "What is 3 - 5?"]
    responses = ["47 + 38 = 85", "47 - 38 = 8", "The answer is 20.", "3 - 5 = -2"]
    assert rule(prompts, responses).tolist() == [1.0, 0.0, 1.0, 1.0]
    assert rule(["What is 1 + 1?"], ["no idea"]).tolist() == [0.0]
    chat = (Message("system", "Be brief."), Message("user", "What is 2 + 3?"))
    assert rule([chat], ["5"]).tolist() == [1.0]
    assert final_number("85 apples, 86 pears") == 86 and final_number("") is None


def test_arithmetic_rule_agrees_with_the_builtin_demonstrations():
    records = arithmetic(200, seed=3)
    rewards = ArithmeticCorrectness()([r.prompt for r in records], [r.completion for r in records])
    assert rewards.dtype == torch.float32 and bool((rewards == 1).all())
    assert arithmetic_answer(records[0].prompt) == int(records[0].completion.split()[-1])


def test_arithmetic_rule_refuses_other_prompts():
    with pytest.raises(ValueError, match="not an arithmetic question"):
        ArithmeticCorrectness()(["Write a haiku."], ["..."])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        ArithmeticCorrectness()(["What is 1 + 1?"] * 2, ["2"])


def test_reward_specs():
    assert parse_reward_spec("rule=arithmetic") == RewardSpec(rule="arithmetic")
    assert parse_reward_spec("model=runs/rm/model,batch_size=4").batch_size == 4
    with pytest.raises(ConfigError, match="unknown rule 'nope'"):
        parse_reward_spec("rule=nope")
    with pytest.raises(ConfigError, match="exactly one"):
        parse_reward_spec("device=cpu")
    with pytest.raises(ConfigError, match="expected rule=NAME"):
        parse_reward_spec("arithmetic")
    assert isinstance(build_reward(RewardSpec(rule="arithmetic")), ArithmeticCorrectness)
    assert response_as_text("Hi", "Hello") == "Hello"
    assert response_as_text((Message("user", "Hi"),), "Hello") == (Message("assistant", "Hello"),)


def test_reward_model_reward_is_the_normalised_score(tiny_model_dir, tiny_tokenizer, tmp_path):
    from rlhf.models.load import save_model
    from rlhf.models.reward import init_reward_model, load_reward_model, set_normalization

    model = init_reward_model(tiny_model_dir, tiny_tokenizer)
    set_normalization(model, 2.0, 0.5)
    folder = save_model(model, tiny_tokenizer, tmp_path / "rm")
    reward = build_reward(RewardSpec(model=str(folder), device="cpu"))
    assert isinstance(reward, RewardModelReward)
    prompts = ["What is 1 + 1?\n", (Message("user", "Hi"),)]
    responses = ["1 + 1 = 2", "Hello!"]
    scores = reward(prompts, responses)
    loaded = load_reward_model(folder)
    paired = [responses[0], (Message("assistant", "Hello!"),)]
    raw = loaded.score(prompts, paired, normalized=False)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, 2.0 * raw + 0.5)


# --- the protocol: metadata, RewardOutput, plain functions ---------------------------------


def test_plain_functions_stay_rewards_with_or_without_metadata():
    def two(prompts, responses):
        return torch.ones(len(responses))

    def three(prompts, responses, metadata):
        return torch.tensor([float(m["answer"]) for m in metadata])

    metadata = [{"answer": "2"}, {"answer": "5"}]
    assert call_reward(two, ["a", "b"], ["x", "y"], metadata).tolist() == [1.0, 1.0]
    assert call_reward(three, ["a", "b"], ["x", "y"], metadata).tolist() == [2.0, 5.0]
    assert call_reward(lambda p, r: [0.5] * len(r), ["a"], ["x"]).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        call_reward(lambda p, r: torch.ones(3), ["a"], ["x"])
    with pytest.raises(ValueError, match="2 responses but 1 metadata rows"):
        call_reward(two, ["a", "b"], ["x", "y"], [{}])
    # a Reward answers the old two-argument call, the new one, and score()
    rule = ArithmeticCorrectness()
    assert rule(["What is 1 + 1?"], ["2"], [{"finished": True}]).tolist() == [1.0]
    output = rule.score(["What is 1 + 1?"], ["2"])
    assert isinstance(output, RewardOutput) and output.components == {}
    assert output.token_rewards is None and output.metrics() == {"reward": 1.0}


# --- GSM8K-style answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("72", 72),
        ("1,080", 1080),
        ("$1,080.00", 1080),
        ("-7", -7),
        ("3/4", Fraction(3, 4)),
        ("72.50 dollars", Fraction(145, 2)),
        ("about 15%", 15),
        ("none", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_response_answer_prefers_the_marker_then_the_last_number():
    assert response_answer("5 + 3 = 8, then 8 * 9 = 72.\n#### 72") == 72
    assert response_answer("#### 72\nI double-checked it 3 times.") == 72
    assert response_answer("So she makes $18 every day.") == 18
    assert response_answer("10-3=7") == 7  # the minus of a subtraction is not a sign
    assert response_answer("The answer is \\boxed{1,200}.") == 1200
    assert response_answer("So she makes $18 every day.", strict=True) is None
    assert response_answer("no digits here") is None
    assert reference_answer("She sells 9 eggs.\n#### 1,080") == 1080
    assert reference_answer(72) == 72 and reference_answer(0.1) == Fraction(1, 10)
    assert reference_answer("no number") is None and reference_answer(True) is None


def test_gsm8k_rules_score_against_the_metadata_answer():
    prompts = ["Q1", "Q2", "Q3", "Q4", "Q5"]
    responses = [
        "9 * 2 = 18\n#### 18",
        "She makes $18.00 a day.",
        "Total: 1,080 dollars",
        "#### 17",
        "18 eggs, hmm, or 3",
    ]
    answers = ["Janet sells 9 eggs.\n#### 18", "18", "#### 1080", "18", 18]
    metadata = [{"answer": a} for a in answers]
    assert build_reward(RewardSpec(rule="gsm8k"))(prompts, responses, metadata).tolist() == [
        1.0, 1.0, 1.0, 0.0, 0.0,
    ]  # fmt: skip
    strict = build_reward(RewardSpec(rule="gsm8k_strict"))
    assert strict(prompts, responses, metadata).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    answer_line = build_reward(RewardSpec(rule="gsm8k_format"))
    assert answer_line(prompts, responses).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no metadata was given"):
        MathAnswer()(["Q"], ["1"])
    with pytest.raises(ValueError, match="row 1: metadata has no 'answer'"):
        MathAnswer()(["Q", "Q"], ["1", "2"], [{"answer": "1"}, {"finished": True}])
    with pytest.raises(ValueError, match="row 0: ground truth answer='n/a' holds no number"):
        MathAnswer()(["Q"], ["1"], [{"answer": "n/a"}])


def test_the_gsm8k_data_parses_and_its_solutions_score_one():
    from tests.conftest import SHARED, require_shared

    folder = require_shared(SHARED / "data" / "gsm8k")
    rows = [json.loads(line) for line in (folder / "test.jsonl").open(encoding="utf-8")]
    assert rows and all(reference_answer(row["answer"]) is not None for row in rows)
    metadata = [{"answer": row["answer"]} for row in rows]
    questions = [row["question"] for row in rows]
    solutions = [row["answer"] for row in rows]  # the reference solutions end "#### N"
    assert bool((MathAnswer(strict=True)(questions, solutions, metadata) == 1).all())
    assert bool((AnswerFormat()(questions, solutions) == 1).all())
    wrong = [solution.rsplit("####", 1)[0] + "#### 123456789" for solution in solutions]
    assert float(MathAnswer()(questions, wrong, metadata).sum()) == 0.0


def test_regex_format():
    reward = build_reward(RewardSpec(regex=r"(?s)<think>.*</think>\s*Answer: \d+"))
    responses = ["<think>2+2\n=4</think> Answer: 4", "Answer: 4", "<think></think>Answer: x"]
    assert reward(["q"] * 3, responses).tolist() == [1.0, 0.0, 0.0]
    full = RegexFormat(r"\d+", full_match=True)
    assert full(["q", "q"], ["42", "42!"]).tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"regex: .*does not compile"):
        validate_config(RewardSpec, {"regex": "("})


# --- composite and penalties ----------------------------------------------------------------


def constant(value: float):
    return lambda prompts, responses: torch.full((len(responses),), value)


def test_composite_is_the_weighted_sum_with_each_part_on_its_own():
    composite = CompositeReward(
        {
            "correct": (1.0, MathAnswer()),
            "format": (0.5, AnswerFormat()),
            "bias": (2.0, constant(0.25)),
        }
    )
    metadata = [{"answer": "4"}, {"answer": "4"}, {"answer": "4"}]
    output = composite.score(["q"] * 3, ["#### 4", "4", "#### 5"], metadata)
    assert output.scores.tolist() == [2.0, 1.5, 1.0]
    assert {name: v.tolist() for name, v in output.components.items()} == {
        "correct": [1.0, 1.0, 0.0],
        "format": [1.0, 0.0, 1.0],
        "bias": [0.25, 0.25, 0.25],
    }
    assert output.token_rewards is None
    assert output.metrics("reward") == pytest.approx(
        {"reward": 1.5, "reward/correct": 2 / 3, "reward/format": 2 / 3, "reward/bias": 0.25}
    )
    nested = CompositeReward({"inner": (2.0, composite), "other": (1.0, constant(1.0))})
    inner = nested.score(["q"] * 3, ["#### 4", "4", "#### 5"], metadata)
    assert inner.scores.tolist() == [5.0, 4.0, 3.0]
    assert set(inner.components) == {
        "inner",
        "inner/correct",
        "inner/format",
        "inner/bias",
        "other",
    }
    with pytest.raises(ValueError, match="without '/'"):
        CompositeReward({"a/b": (1.0, constant(1.0))})


def hand_made_rollout() -> RolloutBatch:
    """Two prompts × two samples, R = 4 response tokens at most, EOS id 2, pad id 0.

    Row 0 ends with EOS after 3 tokens; row 1 ran to max_new_tokens without EOS (truncated);
    row 2 is EOS alone; row 3 is truncated after 4 tokens, one of them an EOS-free pad-free
    run.
    """
    response_ids = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [9, 9, 9, 9]])
    response_mask = (torch.arange(4)[None] < torch.tensor([[3], [4], [1], [4]])).long()
    return RolloutBatch(
        prompt_ids=torch.tensor([[1, 3], [1, 3], [1, 4], [1, 4]]),
        prompt_mask=torch.ones(4, 2, dtype=torch.long),
        response_ids=response_ids,
        response_mask=response_mask,
        logps=torch.zeros(4, 4),
        ended_with_eos=torch.tensor([True, False, True, False]),
        prompt_index=torch.tensor([0, 0, 1, 1]),
        response_texts=["#### 4", "#### 4 and then", "", "#### 9"],
    )


def test_rollout_metadata_marks_truncation_and_carries_prompt_metadata():
    batch = hand_made_rollout()
    metadata = rollout_metadata(batch, [{"answer": "4"}, {"answer": "9"}])
    assert metadata == [
        {"answer": "4", "finished": True, "response_tokens": 3},
        {"answer": "4", "finished": False, "response_tokens": 4},
        {"answer": "9", "finished": True, "response_tokens": 1},
        {"answer": "9", "finished": False, "response_tokens": 4},
    ]
    assert rollout_metadata(batch)[1] == {"finished": False, "response_tokens": 4}


def test_missing_eos_penalty_subtracts_or_replaces_on_truncated_rows_only():
    batch = hand_made_rollout()
    metadata = rollout_metadata(batch, [{"answer": "4"}, {"answer": "9"}])
    prompts, responses = ["q"] * 4, batch.response_texts
    assert MathAnswer()(prompts, responses, metadata).tolist() == [1.0, 1.0, 0.0, 1.0]
    subtract = MissingEOSPenalty(MathAnswer(), penalty=1.5).score(prompts, responses, metadata)
    assert subtract.scores.tolist() == [1.0, -0.5, 0.0, -0.5]
    assert subtract.components["missing_eos"].tolist() == [0.0, -1.5, 0.0, -1.5]
    zeroed = MissingEOSPenalty(MathAnswer(), value=0.0)(prompts, responses, metadata)
    assert zeroed.tolist() == [1.0, 0.0, 0.0, 0.0]
    fixed = MissingEOSPenalty(MathAnswer(), value=-1.0)(prompts, responses, metadata)
    assert fixed.tolist() == [1.0, -1.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="row 0: metadata has no 'finished'"):
        MissingEOSPenalty(MathAnswer(), value=0.0)(["q"], ["#### 4"], [{"answer": "4"}])
    with pytest.raises(ValueError, match="exactly one"):
        MissingEOSPenalty(MathAnswer(), penalty=1.0, value=0.0)


def test_length_penalty_per_token_and_on_the_sequence():
    batch = hand_made_rollout()
    metadata = rollout_metadata(batch)
    prompts, responses = ["q"] * 4, batch.response_texts
    output = LengthPenalty(0.1, free=2).score(prompts, responses, metadata)
    torch.testing.assert_close(output.scores, torch.tensor([-0.1, -0.2, 0.0, -0.2]))
    expected = torch.tensor([[0, 0, -0.1, 0], [0, 0, -0.1, -0.1], [0, 0, 0, 0], [0, 0, -0.1, -0.1]])
    torch.testing.assert_close(output.token_rewards, expected)
    assert bool((output.token_rewards[batch.response_mask == 0] == 0).all())
    chars = LengthPenalty(0.5, free=6, unit="chars")(prompts, responses)
    torch.testing.assert_close(chars, torch.tensor([0.0, -4.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="metadata has no 'response_tokens'"):
        LengthPenalty(0.1)(["q"], ["a"], [{"finished": True}])


def test_dense_token_rewards_put_a_sequence_reward_on_the_last_token():
    batch = hand_made_rollout()
    output = RewardOutput(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    dense = dense_token_rewards(output, batch.response_lengths)
    torch.testing.assert_close(
        dense, torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 2.0], [3.0, 0, 0, 0], [0, 0, 0, 4.0]])
    )
    torch.testing.assert_close(dense.sum(-1), output.scores)


def test_spec_with_penalties_builds_the_whole_reward_and_per_token_rewards_add_up():
    batch = hand_made_rollout()
    metadata = rollout_metadata(batch, [{"answer": "4"}, {"answer": "9"}])
    spec = RewardSpec(
        composite={
            "correct": RewardSpec(rule="gsm8k"),
            "format": RewardSpec(rule="gsm8k_format", weight=0.5),
        },
        length_penalty=0.1,
        length_free=3,
        missing_eos_reward=0.0,
    )
    reward = build_reward(spec)
    output = score_reward(reward, ["q"] * 4, batch.response_texts, metadata)
    # correct [1, 1, 0, 1] + 0.5 * format [1, 1, 0, 1] - 0.1 * max(0, L - 3) [0, 1, 0, 1];
    # the truncated rows 1 and 3 are set to 0
    torch.testing.assert_close(output.scores, torch.tensor([1.5, 0.0, 0.0, 0.0]))
    assert set(output.components) == {"correct", "format", "length_penalty", "missing_eos"}
    torch.testing.assert_close(
        output.components["missing_eos"], torch.tensor([0.0, -1.4, 0.0, -1.4])
    )
    torch.testing.assert_close(output.token_rewards.sum(-1), output.scores)
    torch.testing.assert_close(output.token_rewards[0], torch.tensor([0, 0, 1.5, 0]))
    assert spec.describe() == "composite(correct+format)-length0.1,eos=0"
    subtract = build_reward(
        RewardSpec(rule="gsm8k", missing_eos_penalty=1.0, length_penalty=0.1, length_free=3)
    )
    scores = score_reward(subtract, ["q"] * 4, batch.response_texts, metadata)
    torch.testing.assert_close(scores.scores, torch.tensor([1.0, -0.1, 0.0, -0.1]))
    assert set(scores.components) == {"gsm8k", "length_penalty", "missing_eos"}
    torch.testing.assert_close(scores.token_rewards.sum(-1), scores.scores)


def test_score_rollout_gives_rewards_the_rollout_metadata():
    from rlhf.rewards.base import score_rollout

    batch = hand_made_rollout()
    reward = build_reward(RewardSpec(rule="gsm8k", missing_eos_penalty=2.0))
    prompts = ["What is 2 + 2?", "What is 3 * 3?"]
    scores = score_rollout(reward, prompts, batch, [{"answer": "4"}, {"answer": "9"}]).scores
    assert scores.tolist() == [1.0, -1.0, 0.0, -1.0]
    ones = score_rollout(lambda p, r: torch.ones(len(r)), prompts, batch).scores
    assert ones.tolist() == [1.0] * 4


# --- config ---------------------------------------------------------------------------------


def test_spec_errors_name_the_key():
    cases = {
        "composite.a.rule": {"composite": {"a": {"rule": "nope"}}},
        "composite.b.judge": {"composite": {"b": {"judge": {"endpoint": "http://x/v1"}}}},
        "length_penalty": {"rule": "gsm8k", "length_penalty": -1},
        "length_unit": {"rule": "gsm8k", "length_unit": "words"},
        "judge.timeout_s": {"judge": {"endpoint": "http://x/v1", "model": "m", "timeout_s": 0}},
        "judge.concurrency": {"judge": {"endpoint": "http://x/v1", "model": "m", "concurrency": 0}},
        "judge.colour": {"judge": {"endpoint": "http://x/v1", "model": "m", "colour": 1}},
        "composite": {"composite": {"length_penalty": {"rule": "gsm8k"}}},
    }
    for key, data in cases.items():
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate_config(RewardSpec, data)
    with pytest.raises(ConfigError, match="at most one of missing_eos_penalty"):
        validate_config(
            RewardSpec, {"rule": "gsm8k", "missing_eos_penalty": 1, "missing_eos_reward": 0}
        )
    with pytest.raises(ConfigError, match=r"got rule, regex"):
        validate_config(RewardSpec, {"rule": "gsm8k", "regex": "x"})
    with pytest.raises(ConfigError, match=r"unknown placeholder.*question"):
        validate_config(RewardSpec, {"judge": {"local_model": "m", "template": "{question}"}})
    with pytest.raises(ConfigError, match=r"yes_no needs judge\.local_model"):
        validate_config(
            RewardSpec, {"judge": {"endpoint": "http://x", "model": "m", "method": "yes_no"}}
        )
    with pytest.raises(ConfigError, match=r"use judge\.local_model"):
        validate_config(RewardSpec, {"judge": {"local_model": "m", "model": "m"}})
    with pytest.raises(ConfigError, match="must be whole numbers"):
        validate_config(RewardSpec, {"judge": {"local_model": "m", "max_score": 4.5}})
    with pytest.raises(ConfigError, match=r"exactly one of judge\.endpoint and judge\.local_model"):
        validate_config(RewardSpec, {"judge": {"model": "m"}})


def test_every_spec_field_is_described():
    from rlhf.rewards.spec import JudgeSpec

    for cls in (RewardSpec, JudgeSpec):
        missing = [name for name, f in cls.model_fields.items() if not f.description]
        assert not missing, f"{cls.__name__}: {missing}"


def test_reward_spec_files_and_the_command_line_form(tmp_path):
    config = {
        "composite": {
            "correct": {"rule": "gsm8k"},
            "format": {"rule": "gsm8k_format", "weight": 0.2},
        },
        "missing_eos_penalty": 1.0,
    }
    yaml_file = tmp_path / "reward.yaml"
    yaml_file.write_text(yaml.safe_dump(config))
    json_file = tmp_path / "reward.json"
    json_file.write_text(json.dumps({"reward": config}))
    from_yaml = parse_reward_spec(str(yaml_file))
    assert from_yaml == parse_reward_spec(str(json_file)) == validate_config(RewardSpec, config)
    assert from_yaml.composite["format"].weight == 0.2
    changed = parse_reward_spec(f"config={yaml_file},missing_eos_penalty=2")
    assert changed.missing_eos_penalty == 2.0 and changed.composite == from_yaml.composite
    assert parse_reward_spec("rule=gsm8k,missing_eos_reward=0").missing_eos_reward == 0.0
    with pytest.raises(ConfigError, match="cannot read config"):
        parse_reward_spec(str(tmp_path / "absent.yaml"))
    (tmp_path / "bad.yaml").write_text("composite: {a: {rule: nope}}")
    with pytest.raises(ConfigError, match=r"bad.yaml.*\n  composite.a.rule: .*unknown rule"):
        parse_reward_spec(str(tmp_path / "bad.yaml"))


def test_raft_config_takes_a_composite_reward():
    from rlhf.config import load_config
    from rlhf.recipes.raft import RAFTConfig

    base = {
        "model": {"path": "x"},
        "prompts": "builtin:arithmetic",
        "reward": {"composite": {"sum": {"rule": "arithmetic"}, "short": {"regex": "^.{0,20}$"}}},
    }
    config = load_config(RAFTConfig, base=base, overrides=["reward.missing_eos_reward=0"])
    assert config.reward.missing_eos_reward == 0.0
    assert isinstance(build_reward(config.reward), MissingEOSPenalty)
