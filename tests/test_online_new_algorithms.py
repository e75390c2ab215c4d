"""DAPO, GSPO and REINFORCE++ as recipes: each one's make_experience on a tiny model (the loss
and advantage functions themselves: tests/test_losses_new_algorithms.py)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from rlhf.online.loss import policy_gradient_loss
from rlhf.recipes import dapo, gspo, reinforce_pp
from rlhf.recipes.dapo import DAPOConfig
from rlhf.recipes.gspo import GSPOConfig
from rlhf.recipes.reinforce_pp import ReinforcePPConfig, ReinforcePPSettings

from .online_helpers import make_buffer, make_run


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_model(str(tiny_model_dir), tokenizer=tokenizer), tokenizer


def first_number(prompt: str) -> int:
    return int(prompt.split()[2])  # "What is {a} + {b}?"


def half_tied_reward(prompts, responses):
    """0 for every sample of a prompt whose first number is even (a tied group); otherwise
    alternating 0, 1 along the call's rows, so a group of K ≥ 2 never ties."""
    return torch.tensor(
        [0.0 if first_number(p) % 2 == 0 else float(i % 2) for i, p in enumerate(prompts)]
    )


def dapo_run(policy, **dapo_settings):
    run = make_run(
        policy,
        DAPOConfig,
        ppo_epochs=1,
        sampling={"max_new_tokens": 8, "temperature": 1.0},
        dapo={"overlong_cache": 0} | dapo_settings,
    )
    run.reward = half_tied_reward
    return run


def test_dapo_refills_tied_groups_with_freshly_sampled_prompts(policy):
    run = dapo_run(policy, max_sampling_rounds=5)
    # the sampling the recipe should do, by hand: round 1 the iteration's 4 prompts, then each
    # round ⌈(target − kept) · sampled / kept⌉ more (the shortfall over the rate seen so far)
    target, kept, sampled, rounds = 4, 0, 0, 0
    prompts = run.prompts_for(1).texts
    while True:
        kept += sum(first_number(p) % 2 for p in prompts)
        sampled, rounds = sampled + len(prompts), rounds + 1
        if kept >= target or rounds == 5:
            break
        more = target - kept if kept == 0 else math.ceil((target - kept) * sampled / kept)
        prompts = dapo.refill_prompts(run, 1, rounds, more).texts
    assert rounds >= 2, "the seed should give a first round with tied groups"

    experience = dapo.make_experience(run, 1)
    metrics = experience.metrics
    assert metrics["rollout_sampling_rounds"] == rounds
    assert metrics["rollout_sampled_prompts"] == sampled
    assert metrics["rollout_informative_groups"] == kept
    assert len(experience) == 16  # trimmed to prompts_per_iteration groups of K = 4
    # every group in the loss carries signal: its rewards differ, so its advantages are not 0
    in_loss = experience.mask.bool().any(-1).view(4, 4)
    assert in_loss.all() == (kept >= target)
    advantages = experience.advantages.sum(-1).view(4, 4)
    assert torch.all(advantages[in_loss.all(-1)].abs().sum(-1) > 0)


def test_dapo_fills_a_short_batch_with_tied_groups_kept_out_of_the_loss(policy):
    run = dapo_run(policy, max_sampling_rounds=1)
    informative = sum(first_number(p) % 2 for p in run.prompts_for(1).texts)
    assert informative < 4, "the seed should give a first round with tied groups"
    experience = dapo.make_experience(run, 1)
    assert experience.metrics["rollout_short_groups"] == 4 - informative
    rows_in_loss = int(experience.mask.bool().any(-1).sum())
    assert rows_in_loss <= informative * 4  # tied fillers carry no token into the loss


def test_dapo_without_dynamic_sampling_trains_on_the_iteration_prompts(policy):
    run = dapo_run(policy, dynamic_sampling=False)
    experience = dapo.make_experience(run, 1)
    assert experience.metrics["rollout_sampling_rounds"] == 1
    assert experience.metrics["rollout_sampled_prompts"] == 4
    # every group stays in the loss, tied or not (a tied group's advantage is simply 0)
    assert experience.metrics["rollout_short_groups"] == 0
    assert bool(experience.mask.bool().any(-1).all())


def test_dapo_overlong_shaping_lowers_the_reward_of_long_responses(policy):
    run = make_run(
        policy,
        DAPOConfig,
        ppo_epochs=1,
        sampling={"max_new_tokens": 8, "temperature": 1.0},
        dapo={"overlong_cache": 4, "dynamic_sampling": False},
    )
    run.reward = lambda prompts, responses: torch.ones(len(responses))
    batch = run.sample(run.prompts_for(1), 1)
    lengths = batch.response_lengths.float()
    # eq. 13 by hand with L_max = 8, L_cache = 4: 0 up to 4 tokens, then (4 − |y|) / 4
    expected = torch.where(lengths <= 4, torch.zeros_like(lengths), (4 - lengths) / 4)
    assert expected.min() < 0, "some responses should reach the overlong region"
    experience = dapo.make_experience(run, 1)  # the same seed: the same samples
    assert experience.metrics["rollout_overlong_penalty"] == pytest.approx(
        float(expected.mean()), abs=1e-6
    )
    # all scores tie at 1, so the advantages come from the length penalty alone: within a
    # group the shorter responses get the larger advantage
    per_row = experience.advantages.sum(-1) / experience.mask.sum(-1).clamp(min=1)
    for group in range(4):
        rows = slice(4 * group, 4 * group + 4)
        shaped = expected[rows]
        if shaped.max() > shaped.min():
            assert per_row[rows][shaped.argmax()] > per_row[rows][shaped.argmin()]


def test_dapo_config_checks_the_overlong_cache():
    with pytest.raises(ValueError, match=r"dapo\.overlong_cache 16 must be below"):
        DAPOConfig.model_validate(
            {
                "out": "x",
                "model": {"path": "x"},
                "data": {"prompts": "x"},
                "reward": {"rule": "arithmetic"},
                "sampling": {"max_new_tokens": 16},
                "dapo": {"overlong_cache": 16},
            }
        )


def test_gspo_trains_on_sequences_with_a_length_normalised_ratio(policy):
    run = make_run(policy, GSPOConfig, ppo_epochs=1)
    experience = gspo.make_experience(run, 1)
    assert experience.aggregation == "sequence"
    assert experience.loss_units == int(experience.mask.bool().any(-1).sum())
    # shift one response's old log-probs by δ per token: its sequence ratio is e^{−δ}
    # whatever its length (the geometric mean of the token ratios)
    batch = experience.select(range(16))
    batch.old_logps = batch.old_logps.clone()
    row, delta = 0, 0.1
    batch.old_logps[row] += delta * batch.mask[row]
    from rlhf.losses.policy import gspo_policy_loss

    surrogate = partial(gspo_policy_loss, clip_eps=3e-4, clip_eps_high=4e-4)
    model = run.policy
    _, metrics = policy_gradient_loss(
        model, batch, policy=run.config.policy, kl=run.config.kl, surrogate=surrogate
    )
    tokens = float(batch.mask.sum())
    length = float(batch.mask[row].sum())
    # ratio is the token-weighted mean of the sequence ratios: 1 everywhere but row 0
    expected = ((tokens - length) + length * math.exp(-delta)) / tokens
    assert metrics["ratio"] == pytest.approx(expected, abs=1e-4)


def test_gspo_refuses_a_token_level_loss():
    with pytest.raises(ValueError, match=r"policy\.aggregation: GSPO"):
        GSPOConfig.model_validate(
            {
                "out": "x",
                "model": {"path": "x"},
                "data": {"prompts": "x"},
                "reward": {"rule": "arithmetic"},
                "policy": {"aggregation": "token"},
            }
        )


@pytest.mark.parametrize("baseline", ["none", "group"])
def test_reinforce_pp_normalises_advantages_over_the_whole_rollout(policy, baseline):
    run = make_run(policy, ReinforcePPConfig, ppo_epochs=1)
    settings = ReinforcePPSettings(baseline=baseline)
    buffer = make_buffer(run, partial(reinforce_pp.make_experience, run, settings))
    buffer.next_batch()
    experience = buffer.experience
    real = experience.mask.bool()
    values = experience.advantages[real]
    assert float(values.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(values.std()) == pytest.approx(1.0, abs=1e-3)  # over all tokens, not per group
    # each response's tokens share one advantage, ordered as its (baselined) reward
    per_row = experience.advantages.sum(-1) / experience.mask.sum(-1)
    scores = experience.scores
    if baseline == "group":
        scores = scores - scores.view(4, 4).mean(-1).repeat_interleave(4)
    order = torch.argsort(scores)
    assert torch.all(per_row[order].diff() >= -1e-5)


def test_reinforce_pp_keeps_k2_in_the_loss_by_default():
    config = ReinforcePPConfig.model_validate(
        {
            "out": "x",
            "model": {"path": "x"},
            "data": {"prompts": "x"},
            "reward": {"rule": "arithmetic"},
        }
    )
    assert config.kl.estimator == "k2" and not config.kl.in_reward and config.kl.coef > 0


def test_rollout_batches_concatenate_and_select_whole_prompts(policy):
    from rlhf.rewards.base import RewardOutput
    from rlhf.rollout.factory import build_engine
    from rlhf.rollout.types import RolloutBatch, SamplingParams

    model, tokenizer = policy
    engine = build_engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=6, num_samples=2, seed=1)
    first = engine.generate(["What is 12 + 40?\n", "Hi"], params)
    second = engine.generate(["Once upon a time there was a cat. What is 99 - 1?\n"], params)
    pad = tokenizer.pad_token_id
    both = RolloutBatch.concatenate([first, second], pad)
    assert len(both) == 6 and both.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    width = max(first.prompt_ids.shape[1], second.prompt_ids.shape[1])
    assert both.prompt_ids.shape[1] == width
    # left padding added to the shorter prompts: their real tokens end in the last column
    assert torch.equal(both.prompt_ids[4:, -second.prompt_ids.shape[1] :], second.prompt_ids)
    assert torch.all(both.prompt_mask[:4, : width - first.prompt_ids.shape[1]] == 0)
    assert torch.equal(both.response_mask.sum(-1)[:4], first.response_mask.sum(-1))
    assert both.response_texts == first.response_texts + second.response_texts
    picked = both.select_prompts([2, 0])
    assert picked.prompt_index.tolist() == [0, 0, 1, 1]
    assert picked.response_texts == second.response_texts + first.response_texts[:2]
    with pytest.raises(ValueError, match="with and without log-probs"):
        unlogged = engine.generate(["Hi"], SamplingParams(max_new_tokens=4, return_logps=False))
        RolloutBatch.concatenate([first, unlogged], pad)
    rewards = RewardOutput.concatenate(
        [RewardOutput(torch.tensor([1.0, 2.0]), {"a": torch.tensor([1.0, 0.0])}),
         RewardOutput(torch.tensor([3.0]), {"a": torch.tensor([5.0]), "b": torch.tensor([1.0])})]
    )  # fmt: skip
    assert rewards.scores.tolist() == [1.0, 2.0, 3.0] and list(rewards.components) == ["a"]
    assert rewards.select(torch.tensor([2, 0])).components["a"].tolist() == [5.0, 1.0]
