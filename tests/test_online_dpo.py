"""Online DPO: pairs of the policy's own samples, labelled, trained with a DPO-family loss."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from pydantic import ValidationError

from rlhf.losses.preference import PREFERENCE_LOSSES, PairLogps
from rlhf.online.experience import ExperienceBuffer
from rlhf.online.loss import pair_preference_loss, policy_logps
from rlhf.online.pairs import annotated_pairs, best_and_worst
from rlhf.recipes import online_dpo
from rlhf.recipes.online_dpo import OnlineDPOConfig, run_online_dpo

from .online_helpers import make_run


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_model(str(tiny_model_dir), tokenizer=tokenizer), tokenizer


def length_rule(prompts, responses, metadata=None):  # varies between samples of a random model
    return torch.tensor([float(len(response) % 3) for response in responses])


def dpo_run(policy, **extra):
    """An online DPO run over the tiny model (4 prompts × 4 samples), as prepare_online makes it:
    π_ref a frozen copy, no old log-probs, a reward that varies between samples."""
    import copy

    from rlhf.models.reference import ReferenceModel

    reference = ReferenceModel.frozen(copy.deepcopy(policy[0]))
    run = make_run(policy, OnlineDPOConfig, ppo_epochs=1, reference=reference, **extra)
    run.reward, run.old_logps = length_rule, False
    return run


def test_best_and_worst_of_each_group_and_ties():
    scores = torch.tensor([0.2, 0.9, 0.1, 0.5, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    chosen, rejected = best_and_worst(scores, 4)
    assert chosen.tolist() == [1, 4]  # group 2 ties: its first row both ways
    assert rejected.tolist() == [2, 4]


def test_an_iteration_makes_one_pair_per_prompt_chosen_first(policy):
    run = dpo_run(policy)
    refresh = online_dpo.ReferenceRefresh(run, 0)
    experience = online_dpo.make_experience(run, refresh, 1)
    assert experience.pairs and len(experience) == 8  # 4 prompts → 4 pairs
    scores = experience.scores.view(4, 2)
    kept = experience.mask.bool().any(-1).view(4, 2)
    assert (scores[:, 0] >= scores[:, 1]).all()  # chosen first: the best, then the worst
    assert torch.equal(kept[:, 0], scores[:, 0] > scores[:, 1])  # a tied group is left out
    assert (experience.group[0::2] == experience.group[1::2]).all()  # a pair answers one prompt
    assert experience.loss_units == int(kept[:, 0].sum())  # the loss is a mean over pairs
    assert experience.metrics["rollout_pairs"] == float(kept[:, 0].sum())
    assert experience.ref_logps is not None and experience.old_logps is None


def test_the_pair_loss_is_the_offline_loss_on_the_same_log_probs(policy):
    model, _ = policy
    run = dpo_run(policy)
    experience = online_dpo.make_experience(run, online_dpo.ReferenceRefresh(run, 0), 1)
    experience.ref_logps = experience.ref_logps - 0.05 * experience.mask  # a reference apart
    ipo = partial(PREFERENCE_LOSSES["ipo"].fn, beta=0.3)
    loss, metrics = pair_preference_loss(model, experience, loss=ipo)
    with torch.no_grad():
        logps = (policy_logps(model, experience) * experience.mask).sum(-1)
    reference = (experience.ref_logps * experience.mask).sum(-1)
    kept = experience.mask.bool().any(-1)[0::2]
    tokens = experience.mask.sum(-1)
    expected, sums = ipo(
        PairLogps(
            logps[0::2][kept], logps[1::2][kept], tokens[0::2][kept], tokens[1::2][kept],
            reference[0::2][kept], reference[1::2][kept],
        )
    )  # fmt: skip
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(sums["correct_pairs"] / sums["pairs"])
    loss.backward()  # gradients reach the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_the_buffer_keeps_pairs_together_and_gives_each_rank_whole_pairs(policy):
    run = dpo_run(policy)
    make = partial(online_dpo.make_experience, run, online_dpo.ReferenceRefresh(run, 0))
    buffer = ExperienceBuffer(make, episodes=8, micro_batch_size=4, seed=1, group_size=2)
    buffer.shard(1, 2)
    for _ in range(len(buffer)):
        batch = buffer.next_batch()
        assert len(batch) == 2 and batch.group[0] == batch.group[1]  # one whole pair
        assert batch.scores[0] >= batch.scores[1]
    with pytest.raises(ValueError, match="whole groups of 2 rows"):
        ExperienceBuffer(make, episodes=9, micro_batch_size=3, group_size=2)


def test_annotators_order_each_pair_by_the_worlds_gold(policy):
    from rlhf.sim.gold import gold_score

    run = dpo_run(
        policy,
        labeller={"kind": "annotators", "annotators": {"temperature": 1e-6, "careless": 0.0}},
    )
    prompts = run.prompts_for(1)
    batch = run.sample(prompts, 1)
    pool = run.config.labeller.annotators.pool(7)
    chosen, rejected = annotated_pairs(prompts.texts, batch.response_texts, 4, pool)
    for index, (c, r) in enumerate(zip(chosen.tolist(), rejected.tolist(), strict=True)):
        prompt = prompts.texts[index]
        if c == r:  # no two distinct responses
            assert len(set(batch.response_texts[index * 4 : index * 4 + 4])) == 1
            continue
        # near-noiseless annotators rank by gold: the pair is the best and the worst
        gold = [
            gold_score(prompt, batch.response_texts[row]) for row in range(index * 4, index * 4 + 4)
        ]
        assert gold_score(prompt, batch.response_texts[c]) == pytest.approx(max(gold))
        assert gold_score(prompt, batch.response_texts[r]) == pytest.approx(min(gold))
    again = run.config.labeller.pairs(
        prompts.texts, batch.response_texts, torch.zeros(len(batch)), 4, 7
    )
    assert torch.equal(again[0], chosen) and torch.equal(again[1], rejected)  # seeded


def test_settings_that_cannot_work_are_refused():
    base = {
        "model": {"path": "unused"},
        "data": {"prompts": "unused"},
        "reward": {"rule": "arithmetic"},
    }
    with pytest.raises(ValidationError, match=r"kl\.coef"):
        OnlineDPOConfig.model_validate(base | {"kl": {"coef": 0.1}})
    with pytest.raises(ValidationError, match="rows come in pairs"):
        OnlineDPOConfig.model_validate(
            base | {"train": {"batch_size": 3}, "rollout": {"prompts_per_iteration": 3}}
        )
    with pytest.raises(ValidationError, match="a pair needs"):
        OnlineDPOConfig.model_validate(base | {"rollout": {"samples_per_prompt": 1}})
    with pytest.raises(ValidationError, match="reference_refresh"):
        OnlineDPOConfig.model_validate(
            base | {"online_dpo": {"reference_refresh": 2}, "reference": {"path": "x"}}
        )
    config = OnlineDPOConfig.model_validate(base | {"loss": {"name": "simpo"}})
    assert not config.trains_against_reference  # reference-free: no π_ref forward
    assert config.episodes_per_iteration == 2 * config.rollout.prompts_per_iteration


def test_the_tiny_preset_raises_the_gold_reward(tmp_path):
    from rlhf.config import load_config
    from rlhf.recipes.registry import recipe

    entry = recipe("online-dpo")
    config = load_config(
        OnlineDPOConfig,
        entry.preset_file("tiny"),
        [f"out={tmp_path / 'run'}", "progress=false", "tensorboard=false"],
    )
    result = run_online_dpo(config)
    initial = json.loads((tmp_path / "run" / "eval_initial.json").read_text())
    final = [row for row in result.metrics if "eval_greedy_reward" in row][-1]
    # the arithmetic rule is this world's gold: exact-match accuracy on the 32 prompts
    assert final["eval_greedy_reward"] > initial["greedy_reward"]
    rollouts = [row for row in result.metrics if "rollout_reward" in row]
    first, last = rollouts[: len(rollouts) // 4], rollouts[-len(rollouts) // 4 :]
    mean = lambda rows: sum(row["rollout_reward"] for row in rows) / len(rows)  # noqa: E731
    assert mean(last) > mean(first)


def refresh_config(tmp_path, model_dir, name):
    return OnlineDPOConfig.model_validate(
        {
            "out": str(tmp_path / name),
            "overwrite": True,
            "progress": False,
            "tensorboard": False,
            "model": {"path": str(model_dir)},
            "data": {"prompts": "builtin:arithmetic?n=40"},
            "reward": {"rule": "arithmetic"},
            "sampling": {"max_new_tokens": 6, "temperature": 1.0},
            "rollout": {"iterations": 4, "prompts_per_iteration": 4, "samples_per_prompt": 4},
            "online_dpo": {"reference_refresh": 2},
            "train": {"batch_size": 4, "lr": 1e-3, "save_every": 2},
            "eval": {"prompts": 4},
        }
    )


def test_a_refreshed_reference_resumes_exactly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rlhf.recipes.online_common.build_reward", lambda spec: length_rule)
    straight = run_online_dpo(refresh_config(tmp_path, tiny_model_dir, "a"))
    assert straight.final_step == 4 * 2  # iterations × 8 rows / 4
    # π_ref moved to the policy before iteration 3: kept with the run
    assert (tmp_path / "a" / online_dpo.REFRESHED_REFERENCE / "iteration-3.safetensors").is_file()
    config = refresh_config(tmp_path, tiny_model_dir, "b")
    calls = {"n": 0}
    original = ExperienceBuffer._next_rollout

    def dies_in_the_fourth(self):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", dies_in_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_online_dpo(config)
    checkpoints = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert checkpoints[-1] == "step-0000006"  # after iteration 3, against the refreshed π_ref
    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", original)
    resumed = run_online_dpo(config, resume=True)
    expected = [row["loss"] for row in straight.metrics if "loss" in row][6:]
    got = [row["loss"] for row in resumed.metrics if "loss" in row]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # without the refreshed weights the resume would be against another π_ref: named
    (tmp_path / "b" / online_dpo.REFRESHED_REFERENCE / "iteration-3.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="iteration 3"):
        run_online_dpo(config, resume=True)
