"""Rewards behind one protocol: the arithmetic rule, reward specs, the reward-model wrapper."""

from __future__ import annotations

import pytest
import torch

from rlhf.config import ConfigError
from rlhf.data.records import Message
from rlhf.rewards import (
    ArithmeticCorrectness,
    RewardFunction,
    RewardModelReward,
    RewardSpec,
    arithmetic_answer,
    build_reward,
    final_number,
    parse_reward_spec,
    response_as_text,
)
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
