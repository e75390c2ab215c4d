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


def config_of(config_class, **sections):
    """A config of ``config_class`` with only the required keys, plus ``sections``."""
    required = {"out": "x", "model": {"path": "x"}, "data": {"prompts": "x"}}
    return config_class.model_validate(required | {"reward": {"rule": "arithmetic"}} | sections)


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
    # (at most 4 × target = 16 a round), each prompt not yet sampled in this iteration
    target, kept, sampled, rounds = 4, 0, 0, 0
    prompts = run.prompts_for(1).texts
    used = set(prompts)
    while True:
        kept += sum(first_number(p) % 2 for p in prompts)
        sampled, rounds = sampled + len(prompts), rounds + 1
        if kept >= target or rounds == 5:
            break
        more = target - kept if kept == 0 else math.ceil((target - kept) * sampled / kept)
        prompts = dapo.refill_prompts(run, 1, rounds, min(more, 16), used).texts
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
    # the informative groups first, in the loss; the tied fillers after them, out of it
    in_loss = experience.mask.bool().any(-1).view(4, 4).all(-1)
    assert in_loss.tolist() == [g < informative for g in range(4)]
    fillers = experience.group >= informative
    assert torch.all(experience.advantages[fillers] == 0)
    assert torch.all(experience.scores.view(4, 4)[informative:] == 0)  # they tied at 0


def test_dapo_refills_with_prompts_the_iteration_has_not_sampled(policy):
    run = dapo_run(policy)
    first = run.prompts_for(1).texts
    used = set(first)
    refill = dapo.refill_prompts(run, 1, 1, 6, used).texts
    assert len(refill) == 6 and not set(refill) & set(first) and len(set(refill)) == 6
    assert used == set(first) | set(refill)
    again = dapo.refill_prompts(run, 1, 1, 6, set(first)).texts
    assert again == refill  # seeded by (seed, iteration, round): a resumed run draws the same
    # once every prompt has been used, prompts repeat rather than run out
    everything = dapo.refill_prompts(run, 1, 2, 30, set()).texts
    assert len(everything) == 30 and len(set(everything)) == 20


def test_dapo_judges_groups_on_the_score_not_the_length_shaping(policy):
    run = make_run(
        policy,
        DAPOConfig,
        ppo_epochs=1,
        sampling={"max_new_tokens": 8, "temperature": 1.0},
        dapo={"overlong_cache": 4, "max_sampling_rounds": 1},
    )
    run.reward = lambda prompts, responses: torch.zeros(len(responses))  # every group wrong
    experience = dapo.make_experience(run, 1)
    # length differences would make the shaped rewards differ, but no group has a right and a
    # wrong answer: none is informative, all are fillers out of the loss
    assert experience.metrics["rollout_informative_groups"] == 0
    assert experience.metrics["rollout_overlong_penalty"] < 0
    assert experience.mask.sum() == 0


def test_dapo_without_dynamic_sampling_trains_on_the_iteration_prompts(policy):
    run = dapo_run(policy, dynamic_sampling=False)
    experience = dapo.make_experience(run, 1)
    assert experience.metrics["rollout_sampling_rounds"] == 1
    assert experience.metrics["rollout_sampled_prompts"] == 4
    # every group stays in the loss, tied or not (a tied group's advantage is simply 0),
    # while the log still counts the groups with signal
    odd = sum(first_number(p) % 2 for p in run.prompts_for(1).texts)
    assert experience.metrics["rollout_informative_groups"] == odd < 4
    assert bool(experience.mask.bool().any(-1).all())
    texts = run.prompts_for(1).texts
    assert torch.all(
        experience.advantages[[first_number(texts[g]) % 2 == 0 for g in experience.group]] == 0
    )


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
        config_of(DAPOConfig, sampling={"max_new_tokens": 16}, dapo={"overlong_cache": 16})


def test_gspo_trains_on_sequences_with_a_length_normalised_ratio(policy):
    from rlhf.losses.policy import gspo_policy_loss

    run = make_run(policy, GSPOConfig, ppo_epochs=1)
    experience = gspo.make_experience(run, 1)
    assert experience.aggregation == "sequence"
    assert experience.loss_units == int(experience.mask.bool().any(-1).sum())
    batch = experience.select(range(16))
    row = int(batch.mask.sum(-1).argmax())  # a response of at least two tokens
    assert batch.mask[row].sum() >= 2
    # shift one token's old log-prob by +δ and another's by −δ: each token ratio moves
    # (e^{∓δ}) but their geometric mean, GSPO's sequence ratio, stays exactly 1
    delta = 0.3
    batch.old_logps = batch.old_logps.clone()
    batch.old_logps[row, 0] += delta
    batch.old_logps[row, 1] -= delta
    options = dict(policy=run.config.policy, kl=run.config.kl)
    surrogate = partial(gspo_policy_loss, clip_eps=3e-4, clip_eps_high=4e-4)
    _, sequence = policy_gradient_loss(run.policy, batch, surrogate=surrogate, **options)
    _, token = policy_gradient_loss(run.policy, batch, **options)  # PPO's token ratios
    assert sequence["clip_frac"] == 0  # no sequence left the [1 − 3e-4, 1 + 4e-4] range
    assert sequence["ratio"] == pytest.approx(1.0, abs=1e-5)
    tokens = float(batch.mask.sum())
    assert token["ratio"] == pytest.approx(1 + (math.exp(-delta) + math.exp(delta) - 2) / tokens)


def test_run_gspo_trains_with_the_sequence_level_loss(tmp_path, tiny_model_dir, monkeypatch):
    import rlhf.recipes.gspo as gspo_module

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return gspo_policy_loss(*args, **kwargs)

    from rlhf.losses.policy import gspo_policy_loss

    monkeypatch.setattr(gspo_module, "gspo_policy_loss", spy)
    config = GSPOConfig.model_validate(
        {
            "out": str(tmp_path / "gspo"),
            "progress": False,
            "tensorboard": False,
            "model": {"path": str(tiny_model_dir)},
            "data": {"prompts": "builtin:arithmetic?n=12"},
            "reward": {"rule": "arithmetic"},
            "sampling": {"max_new_tokens": 4},
            "rollout": {"iterations": 1, "prompts_per_iteration": 2, "samples_per_prompt": 2},
            "train": {"batch_size": 4},
            "eval": {"prompts": 0},
        }
    )
    gspo.run_gspo(config)
    assert calls and calls[0] == {"clip_eps": 3e-4, "clip_eps_high": 4e-4}


def test_gspo_refuses_a_token_level_loss():
    with pytest.raises(ValueError, match=r"policy\.aggregation: GSPO"):
        config_of(GSPOConfig, policy={"aggregation": "token"})


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


def test_reinforce_pp_refuses_the_kl_in_the_reward():
    with pytest.raises(ValueError, match=r"kl\.in_reward: REINFORCE\+\+"):
        config_of(ReinforcePPConfig, kl={"in_reward": True, "estimator": "k1", "coef": 0.05})


def test_reinforce_pp_keeps_k2_in_the_loss_by_default():
    config = config_of(ReinforcePPConfig)
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
    first_part = RewardOutput(
        torch.tensor([1.0, 2.0]), {"a": torch.tensor([1.0, 0.0])}, torch.tensor([[1.0, 0.0]] * 2)
    )
    second_part = RewardOutput(
        torch.tensor([3.0]), {"a": torch.tensor([5.0])}, torch.tensor([[0.5, 0.5, 2.0]])
    )
    rewards = RewardOutput.concatenate([first_part, second_part])
    assert rewards.scores.tolist() == [1.0, 2.0, 3.0] and list(rewards.components) == ["a"]
    assert rewards.token_rewards.tolist() == [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 2]]
    picked = rewards.select(torch.tensor([2, 0]))
    assert picked.components["a"].tolist() == [5.0, 1.0]
    assert picked.token_rewards.tolist() == [[0.5, 0.5, 2], [1, 0, 0]]
    with pytest.raises(ValueError, match="different reward components"):
        RewardOutput.concatenate([first_part, RewardOutput(torch.tensor([3.0]))])
    with pytest.raises(ValueError, match="per-token rewards"):
        RewardOutput.concatenate(
            [first_part, RewardOutput(torch.tensor([3.0]), {"a": torch.tensor([1.0])})]
        )
