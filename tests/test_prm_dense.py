"""A process reward model as a dense reward: where each token's text ends, each step's reward
on its last token (the change it makes to the running aggregate), and PPO's returns from
rewards placed on tokens."""

from __future__ import annotations

import pytest
import torch

from rlhf.losses.advantages import ppo_token_rewards
from rlhf.losses.prm import aggregate_steps
from rlhf.models.load import load_tokenizer, save_model
from rlhf.models.prm import init_process_reward_model
from rlhf.recipes.ppo import PPOSettings, ScoreNormaliser
from rlhf.rewards import RewardSpec, build_reward
from rlhf.rewards.base import Reward, RewardOutput, score_rollout
from rlhf.rollout.tokens import token_text_ends
from rlhf.rollout.types import RESPONSE_TOKEN_ENDS


def test_token_text_ends_say_where_each_token_s_text_ends(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    texts = ["2 + 3 = 5\nThe answer is 5.", "x"]
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    ends = token_text_ends(tokenizer, ids, mask, texts)
    for row, text, row_ends in zip(rows, texts, ends, strict=True):
        assert len(row_ends) == len(row) and row_ends[-1] == len(text)
        assert row_ends == sorted(row_ends)
        for t in range(len(row)):  # the prefix's text, as decoded alone
            assert row_ends[t] == len(tokenizer.decode(row[: t + 1]))


@pytest.fixture(scope="module")
def prm_dir(tiny_model_dir, tmp_path_factory):
    tokenizer = load_tokenizer(tiny_model_dir)
    folder = tmp_path_factory.mktemp("prm") / "prm"
    save_model(
        init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=4), tokenizer, folder
    )
    return folder


@pytest.mark.parametrize("how", ["product", "min", "last"])
def test_a_dense_prm_puts_each_step_s_change_on_its_last_token(tiny_model_dir, prm_dir, how):
    tokenizer = load_tokenizer(tiny_model_dir)
    reward = build_reward(RewardSpec(prm=str(prm_dir), prm_aggregation=how, prm_dense=True))
    prompt = "Compute 2 + 3 - 1.\n"
    responses = ["2 + 3 = 5\n5 - 1 = 4\nThe answer is 4.", "\n\n"]
    ends = []
    for text in responses:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ends.append([len(tokenizer.decode(ids[: t + 1])) for t in range(len(ids))])
    metadata = [{RESPONSE_TOKEN_ENDS: row} for row in ends]
    output = reward.score([prompt] * 2, responses, metadata)
    steps = reward.step_scores([prompt], responses[:1])[0]  # P(correct) of the 3 steps
    running = [aggregate_steps(steps[: k + 1], how).item() for k in range(3)]
    expected = torch.zeros(output.token_rewards.shape[1])
    for k, step_end in enumerate([9, 19, 36]):  # where "2 + 3 = 5", "5 - 1 = 4", ... end
        token = next(t for t, e in enumerate(ends[0]) if e >= step_end)
        expected[token] += running[k] - (running[k - 1] if k else 0.0)
    torch.testing.assert_close(output.token_rewards[0], expected, atol=1e-6, rtol=0)
    assert output.token_rewards[0].sum().item() == pytest.approx(output.scores[0].item(), abs=1e-6)
    assert output.scores[1].item() == 0.0 and output.token_rewards[1].abs().sum() == 0
    # without the token ends (an evaluation), the sequence score alone
    assert reward.score([prompt] * 2, responses).token_rewards is None
    with pytest.raises(ValueError, match="prm_dense"):
        RewardSpec(rule="step_world", prm_dense=True)


def test_ppo_token_rewards_place_a_dense_score():
    logps = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([0.6, -1.0])
    placed = torch.tensor([[0.5, 0.0, 0.1], [-0.25, -0.75, 0.0]])
    rewards, sums = ppo_token_rewards(scores, logps, logps, mask, kl_coef=0.1, score_tokens=placed)
    torch.testing.assert_close(rewards, placed)  # no KL: the scores where they were placed
    assert sums["score_sum"] == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="row 1 sums to -1"):
        ppo_token_rewards(
            torch.tensor([0.6, -0.5]), logps, logps, mask, kl_coef=0.1, score_tokens=placed
        )


def test_dense_normalisation_keeps_each_row_summing_to_its_normalised_score():
    scores = torch.tensor([1.0, 3.0, 8.0])
    placed = torch.tensor([[0.5, 0.5, 0.0], [1.0, 1.0, 1.0], [0.0, 4.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    settings = PPOSettings(reward_norm="batch", reward_clip=1.0)
    normalised, dense = ScoreNormaliser(settings).tokens(scores, placed, mask)
    torch.testing.assert_close(normalised, ScoreNormaliser(settings)(scores))
    torch.testing.assert_close((dense * mask).sum(-1), normalised)
    std = scores.std(unbiased=False)
    # the first tokens are only scaled; the shift and the clip land on the last real token
    torch.testing.assert_close(dense[:, 0], placed[:, 0] / std, atol=1e-6, rtol=1e-6)
    assert dense[0, 2] == 0


class TokenPlacer(Reward):
    """Reads the token ends: 1 on the token that completes the response's second character,
    0.5 on its last token."""

    reads_token_ends = True

    def score(self, prompts, responses, metadata=None):
        width = max(len(entry[RESPONSE_TOKEN_ENDS]) for entry in metadata)
        placed = torch.zeros(len(responses), width)
        for row, entry in enumerate(metadata):
            ends = entry[RESPONSE_TOKEN_ENDS]
            if ends:
                placed[row, next((t for t, e in enumerate(ends) if e >= 2), len(ends) - 1)] += 1
                placed[row, len(ends) - 1] += 0.5
        return RewardOutput(placed.sum(-1), token_rewards=placed)


def test_ppo_returns_follow_rewards_placed_on_tokens(tiny_model_dir):
    """γ = λ = 1, no KL, no whitening: R_t is the reward still to come after t."""
    from rlhf.recipes.ppo import make_experience

    from .test_ppo import make_parts

    settings = PPOSettings(gamma=1.0, lam=1.0, whiten_advantages=False)
    model, run, _ = make_parts(tiny_model_dir, settings)
    run.reward = TokenPlacer()
    result = make_experience(run, model.value, ScoreNormaliser(settings), 1)
    batch = run.sample(run.prompts_for(1), 1)  # the same seeded rollout again
    output = score_rollout(TokenPlacer(), run.prompts_for(1).texts, batch, None, run.tokenizer)
    placed = torch.nn.functional.pad(
        output.token_rewards, (0, result.mask.shape[1] - output.token_rewards.shape[1])
    )
    to_come = placed.flip(-1).cumsum(-1).flip(-1) * result.mask
    torch.testing.assert_close(result.returns, to_come, atol=1e-5, rtol=1e-5)
    # a reward that reads no token ends is not given them (nor without the tokenizer)
    seen = []
    score_rollout(lambda p, r, m: seen.extend(m) or torch.zeros(len(r)), run.prompts_for(1).texts,
                  batch, None, run.tokenizer)  # fmt: skip
    assert seen and all(RESPONSE_TOKEN_ENDS not in entry for entry in seen)


def test_process_advantages_against_hand_numbers():
    from rlhf.losses.advantages import process_advantages

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    rewards = [torch.tensor([0.9, 0.5]), torch.tensor([0.2])]
    advantages, sums = process_advantages(rewards, [[1, 3], [2]], mask, 2)
    group = torch.tensor([0.9, 0.5, 0.2])
    r = (group - group.mean()) / (group.std() + 1e-4)  # the group's steps, normalised together
    expected = torch.tensor(
        [
            [r[0] + r[1], r[0] + r[1], r[1], r[1]],  # a token: its step's and the later ones'
            [r[2], r[2], r[2], 0.0],  # padding: 0
        ]
    )
    torch.testing.assert_close(advantages, expected)
    assert sums == {"groups": 1.0, "tied_groups": 0.0, "steps": 3.0}
    centred, _ = process_advantages(rewards, [[1, 3], [2]], mask, 2, scale=False)
    assert centred[1, 0].item() == pytest.approx(0.2 - group.mean().item())
    # a response with no step: one step of reward 0 on its last token
    none, _ = process_advantages([torch.tensor([0.6]), torch.empty(0)], [[0], []], mask, 2)
    low = (torch.tensor([0.0]) - 0.3) / (torch.tensor([0.6, 0.0]).std() + 1e-4)
    assert none[1, 2].item() == pytest.approx(low.item()) and none[1, 0] == none[1, 2]
    tied, sums = process_advantages([torch.tensor([0.5])] * 2, [[0], [0]], mask, 2)
    assert tied.abs().sum() == 0 and sums["tied_groups"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        process_advantages(rewards, [[1, 3], [3]], mask, 2)  # row 1 has 3 tokens
    with pytest.raises(ValueError, match="2 step rewards, 1 tokens"):
        process_advantages(rewards, [[1], [2]], mask, 2)


def test_grpo_with_process_supervision_reads_the_prm_steps(tiny_model_dir, prm_dir):
    from functools import partial

    from rlhf.models.load import load_model
    from rlhf.recipes import grpo
    from rlhf.recipes.grpo import GRPOConfig, GRPOSettings

    from .online_helpers import make_buffer, make_run

    tokenizer = load_tokenizer(tiny_model_dir)
    run = make_run((load_model(tiny_model_dir, tokenizer=tokenizer), tokenizer), GRPOConfig)
    run.reward = build_reward(RewardSpec(prm=str(prm_dir)))
    buffer = make_buffer(run, partial(grpo.make_experience, run, GRPOSettings(process=True)))
    buffer.next_batch()
    experience = buffer.experience
    assert experience.metrics["rollout_prm_steps"] > 0
    # per-token advantages: within a response they change where a step ends
    real = experience.advantages * experience.mask
    assert real.abs().sum() > 0
    base = {
        "out": "x", "model": {"path": "x"}, "data": {"prompts": "x"},
        "grpo": {"process": True},
    }  # fmt: skip
    with pytest.raises(ValueError, match="process reward model alone"):
        GRPOConfig.model_validate(base | {"reward": {"rule": "step_world"}})
    with pytest.raises(ValueError, match=r"kl\.in_reward"):
        GRPOConfig.model_validate(
            base | {"reward": {"prm": "x"}, "kl": {"coef": 0.04, "in_reward": True}}
        )


def test_tied_or_nearly_tied_scores_normalise_to_nothing():
    """Scores that all tie carry no signal: normalised to 0 everywhere, not noise over ~0."""
    mask = torch.ones(3, 4)
    placed = torch.tensor([[0.3, 0.0, 0.0, 0.0]] * 3)
    for norm in ("batch", "running"):
        settings = PPOSettings(reward_norm=norm)
        scores, dense = ScoreNormaliser(settings).tokens(torch.full((3,), 0.3), placed, mask)
        assert scores.abs().sum() == 0 and dense.abs().sum() == 0
        assert ScoreNormaliser(settings)(torch.full((3,), 0.3)).abs().sum() == 0
    # a near tie over many tokens: the rows still sum to their normalised scores (float64)
    generator = torch.Generator().manual_seed(0)
    scores = 0.9 + 5e-4 * torch.randn(64, generator=generator)
    placed = torch.zeros(64, 256)
    placed[:, 7], placed[:, 200] = scores / 2, scores / 2
    mask = torch.ones(64, 256)
    normalised, dense = ScoreNormaliser(PPOSettings(reward_norm="batch")).tokens(
        scores, placed, mask
    )
    ppo_token_rewards(
        normalised, torch.zeros(64, 256), torch.zeros(64, 256), mask, kl_coef=0.0,
        score_tokens=dense,
    )  # fmt: skip


def test_the_last_step_takes_the_tokens_after_it():
    from rlhf.losses.advantages import process_advantages

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]])
    rewards = [torch.tensor([0.9, 0.5]), torch.tensor([0.2])]
    advantages, _ = process_advantages(rewards, [[0, 1], [1]], mask, 2)
    group = torch.tensor([0.9, 0.5, 0.2])
    r = (group - group.mean()) / (group.std() + 1e-4)
    # row 0's last step ends at token 1, but tokens 2 and 3 (EOS) belong to it
    torch.testing.assert_close(advantages[0], torch.stack([r[0] + r[1], r[1], r[1], r[1]]))
    torch.testing.assert_close(advantages[1], torch.stack([r[2]] * 4))


def test_grpo_process_refuses_reward_workers():
    from rlhf.recipes.grpo import GRPOConfig

    with pytest.raises(ValueError, match="reward_workers=0"):
        GRPOConfig.model_validate(
            {"out": "x", "model": {"path": "x"}, "data": {"prompts": "x"},
             "reward": {"prm": "x"}, "grpo": {"process": True},
             "distributed": {"reward_workers": 1}}
        )  # fmt: skip
