"""Self-play against a preference: Nash-MD's geometric mixture, SPPO's win rates and loss, and
both recipes."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from pydantic import ValidationError

from rlhf.losses.nash import geometric_mixture_logprobs, sppo_loss, win_rates
from rlhf.recipes import nash_md, sppo
from rlhf.rollout.factory import build_engine
from rlhf.rollout.mixture import GeometricMixtureEngine
from rlhf.rollout.types import SamplingParams

from .online_helpers import PROMPTS, make_run

# ------------------------------------------------------------------------------ the math


def test_the_geometric_mixture_against_hand_numbers():
    policy = torch.tensor([[math.log(0.5), math.log(0.5)]])
    reference = torch.tensor([[math.log(0.9), math.log(0.1)]]) + 3.0  # logits: any offset
    mixed = geometric_mixture_logprobs(policy, reference, 0.5)
    # ∝ √(0.5·0.9), √(0.5·0.1) = 0.6708, 0.2236 → 0.75, 0.25
    torch.testing.assert_close(mixed.exp(), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(
        geometric_mixture_logprobs(policy, reference, 0.0).exp(), policy.exp()
    )
    torch.testing.assert_close(
        geometric_mixture_logprobs(policy, reference, 1.0).exp(), torch.tensor([[0.9, 0.1]])
    )
    with pytest.raises(ValueError, match="beta"):
        geometric_mixture_logprobs(policy, reference, 1.5)


def test_win_rates_average_the_other_samples():
    matrix = torch.tensor([[[0.5, 0.8, 0.6], [0.2, 0.5, 0.9], [0.4, 0.1, 0.5]]])
    torch.testing.assert_close(win_rates(matrix), torch.tensor([0.7, 0.55, 0.25]))
    with pytest.raises(ValueError, match="K ≥ 2"):
        win_rates(torch.full((2, 1, 1), 0.5))


def test_sppo_loss_against_hand_numbers():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, sums = sppo_loss(logps, torch.tensor([-1.5, -2.0]), torch.tensor([0.75, 0.25]), eta=2.0)
    # targets η(P̂ − ½) = 0.5, −0.5; log-ratios 0.5, 0 → squares 0, 0.25
    assert loss.item() == pytest.approx(0.25)
    assert sums["target_sum"] == pytest.approx(0.0) and sums["log_ratio_sum"] == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(logps.grad, torch.tensor([0.0, 1.0]))  # 2(0 − (−0.5))
    with pytest.raises(ValueError, match="eta"):
        sppo_loss(logps, logps, logps, eta=0.0)


# ------------------------------------------------------------------------------ the mixture


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_model(str(tiny_model_dir), tokenizer=tokenizer), tokenizer


@pytest.fixture(scope="module")
def other(policy):
    """A reference unlike the policy: its output layer tilted."""
    model = copy.deepcopy(policy[0])
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)
    return model


PARAMS = SamplingParams(max_new_tokens=8, temperature=1.0, num_samples=3, seed=11)


def test_the_mixture_at_beta_0_samples_the_policy_and_at_1_the_reference(policy, other):
    model, tokenizer = policy
    prompts = PROMPTS[:4]
    mine = build_engine(model, tokenizer, batch_size=64).generate(prompts, PARAMS)
    theirs = build_engine(other, tokenizer, batch_size=64).generate(prompts, PARAMS)
    at_0 = GeometricMixtureEngine(model, tokenizer, other, 0.0).generate(prompts, PARAMS)
    at_1 = GeometricMixtureEngine(model, tokenizer, other, 1.0).generate(prompts, PARAMS)
    assert at_0.response_texts == mine.response_texts
    assert at_1.response_texts == theirs.response_texts
    half = GeometricMixtureEngine(model, tokenizer, other, 0.5).generate(prompts, PARAMS)
    assert half.response_texts not in (mine.response_texts, theirs.response_texts)
    with pytest.raises(ValueError, match="no top-p"):
        GeometricMixtureEngine(model, tokenizer, other, 0.5).generate(
            prompts, SamplingParams(max_new_tokens=4, temperature=1.0, top_p=0.9)
        )


# ------------------------------------------------------------------------------ the recipes


def preferring_longer(prompts, first, second, metadata=None):
    """A preference with ties: the longer response wins, equal lengths are a coin flip."""
    return torch.tensor(
        [
            0.5 if len(a) == len(b) else float(len(a) > len(b))
            for a, b in zip(first, second, strict=True)
        ]
    )


def test_sppo_compares_every_two_samples_once_and_mirrors_them(policy):
    calls = []

    def counted(prompts, first, second, metadata=None):
        calls.append(len(first))
        return preferring_longer(prompts, first, second)

    run = make_run(policy, sppo.SPPOConfig, ppo_epochs=1, preference={"rule": "world_gold"})
    batch = run.sample(run.prompts_for(1), 1)
    matrix = sppo.group_preferences(counted, PROMPTS[:4], batch.response_texts, 4)
    assert calls == [4 * 6]  # 4 prompts × C(4, 2)
    torch.testing.assert_close(matrix + matrix.transpose(1, 2), torch.ones(4, 4, 4))
    texts = batch.response_texts
    assert float(matrix[0, 0, 1]) == float(preferring_longer([], [texts[0]], [texts[1]])[0])


def test_sppo_experience_holds_win_rates_and_their_targets(policy):
    run = make_run(
        policy, sppo.SPPOConfig, ppo_epochs=1, preference={"rule": "world_gold"}, sppo={"eta": 2.0}
    )
    run.old_logps = False
    experience = sppo.make_experience(run, preferring_longer, 1)
    assert ((experience.scores >= 0) & (experience.scores <= 1)).all()
    per_sequence = (experience.advantages * experience.mask).sum(-1) / experience.mask.sum(-1)
    torch.testing.assert_close(per_sequence, 2.0 * (experience.scores - 0.5))
    # the win rates of a group average ½ (each comparison gives its two sides 1 in all)
    torch.testing.assert_close(experience.scores.view(4, 4).mean(-1), torch.full((4,), 0.5))


def test_nash_md_plays_each_sample_against_the_mixture(policy, other):
    from rlhf.models.reference import ReferenceModel

    run = make_run(
        policy,
        nash_md.NashMDConfig,
        ppo_epochs=1,
        preference={"rule": "world_gold"},
        reference=ReferenceModel.frozen(copy.deepcopy(other)),
    )
    model, tokenizer = policy
    opponent = GeometricMixtureEngine(model, tokenizer, run.reference.module, 0.5)
    experience = nash_md.make_experience(run, preferring_longer, opponent, 1)
    assert set(experience.scores.tolist()) <= {0.0, 0.5, 1.0}
    per_sequence = (experience.advantages * experience.mask).sum(-1) / experience.mask.sum(-1)
    torch.testing.assert_close(per_sequence, experience.scores - 0.5)
    assert 0 <= experience.metrics["rollout_win_rate_vs_mixture"] <= 1


def test_settings_that_cannot_work_are_refused():
    base = {
        "model": {"path": "x"},
        "data": {"prompts": "p"},
        "reward": {"rule": "world_gold"},
        "preference": {"rule": "world_gold"},
    }
    with pytest.raises(ValidationError, match="SPPO's win rates"):
        sppo.SPPOConfig.model_validate(base | {"rollout": {"samples_per_prompt": 1}})
    with pytest.raises(ValidationError, match="no KL term"):
        sppo.SPPOConfig.model_validate(base | {"kl": {"coef": 0.1}})
    with pytest.raises(ValidationError, match="aggregation"):
        sppo.SPPOConfig.model_validate(base | {"policy": {"aggregation": "token"}})
    with pytest.raises(ValidationError, match="rollout_workers"):
        nash_md.NashMDConfig.model_validate(base | {"distributed": {"rollout_workers": 1}})
    with pytest.raises(ValidationError, match="exactly one"):
        nash_md.NashMDConfig.model_validate(base | {"preference": {}})


@pytest.mark.parametrize("name", ["sppo", "nash-md"])
def test_the_tiny_preset_raises_the_worlds_gold_reward(name, tmp_path):
    from rlhf.config import load_config
    from rlhf.recipes.registry import recipe

    entry = recipe(name)
    config = load_config(
        entry.config_class(),
        entry.preset_file("tiny"),
        [f"out={tmp_path / 'run'}", "progress=false", "tensorboard=false"],
    )
    result = entry.run_function()(config, False)
    initial = json.loads((tmp_path / "run" / "eval_initial.json").read_text())
    final = [row for row in result.metrics if "eval_greedy_reward" in row][-1]
    assert final["eval_greedy_reward"] > initial["greedy_reward"]  # the world's gold reward
    assert final["eval_reward"] > initial["reward"]
