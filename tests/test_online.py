"""The online RL phases: ExperienceBuffer, Experience, each algorithm's make_experience,
exact resume, learning."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from rlhf.online.experience import Experience, ExperienceBuffer
from rlhf.online.loss import policy_gradient_loss, policy_logps
from rlhf.online.phases import AdaptiveKLController
from rlhf.online.settings import KLSettings, PolicyLossSettings
from rlhf.recipes import grpo, reinforce, remax, rloo
from rlhf.recipes.grpo import GRPOConfig, GRPOSettings, run_grpo

from .online_helpers import length_reward, make_buffer, make_run


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    return load_model(str(tiny_model_dir), tokenizer=tokenizer), tokenizer


def grpo_buffer(policy, settings=None, **options):
    run = make_run(policy, GRPOConfig, **options)
    return run, make_buffer(run, partial(grpo.make_experience, run, settings or GRPOSettings()))


def test_buffer_yields_each_episode_once_per_epoch_then_collects_anew(policy):
    _, buffer = grpo_buffer(policy)
    assert len(buffer) == 2 * 16 // 4  # ppo_epochs × episodes / micro-batch
    first = [buffer.next_batch() for _ in range(len(buffer))]
    assert buffer.iteration == 1 and buffer.epoch == 0 and buffer.position == len(buffer)
    experience = buffer.experience
    assert experience is not None and len(experience) == 16
    # rollout metrics ride on the first micro-batch only
    assert "rollout_reward" in first[0].metrics and not first[1].metrics
    # each ppo epoch is a permutation of the 16 episodes
    seen = [tuple(row.tolist()) for batch in first for row in batch.response_ids]
    everything = sorted(tuple(row.tolist()) for row in experience.response_ids)
    assert sorted(seen[:16]) == everything and sorted(seen[16:]) == everything
    # group-normalised advantages on real tokens only; the old log-probs 0 on padding
    assert torch.all(experience.advantages[experience.mask == 0] == 0)
    assert torch.all(experience.old_logps[experience.mask == 0] == 0)
    buffer.next_batch()
    assert buffer.iteration == 2 and buffer.position == 1


def test_buffer_refuses_experience_of_the_wrong_size(policy):
    run = make_run(policy, GRPOConfig)
    whole = grpo.make_experience(run, GRPOSettings(), 1)
    short = make_buffer(run, lambda iteration: whole.select(range(8)))
    with pytest.raises(ValueError, match="returned 8 rows, expected 16"):
        short.next_batch()


def test_experience_select_and_loss_units(policy):
    _, buffer = grpo_buffer(policy)
    buffer.next_batch()
    experience = buffer.experience
    part = experience.select([0, 5, 7])
    assert len(part) == 3 and torch.equal(part.response_ids[1], experience.response_ids[5])
    assert part.loss_units == int(experience.mask[[0, 5, 7]].sum())
    part.aggregation = "sequence"
    assert part.loss_units == 3
    part.mask[1] = 0  # a row dropped from the loss is no unit of it
    assert part.loss_units == 2
    moved = part.to("cpu")
    assert isinstance(moved, Experience) and moved.num_tokens > 0


def test_grpo_drops_tied_groups_from_the_loss(policy):
    def tied_reward(prompts, responses):  # the first prompt's group ties, the others do not
        return torch.tensor(
            [
                0.0 if p == prompts[0] else float(len(r) % 3)
                for p, r in zip(prompts, responses, strict=True)
            ]
        )

    run, buffer = grpo_buffer(policy, GRPOSettings(tied_groups="drop"))
    run.reward = tied_reward
    buffer.next_batch()
    experience = buffer.experience
    first = experience.group == 0
    assert experience.mask[first].sum() == 0 and experience.mask[~first].sum() > 0
    assert experience.metrics["rollout_tied_groups"] >= 1


def test_reinforce_baseline_moves_and_is_checkpointed(policy):
    def reinforce_buffer():
        run = make_run(policy, reinforce.ReinforceConfig, ppo_epochs=1)
        baseline = reinforce.MovingBaseline(momentum=0.5)
        make = partial(reinforce.make_experience, run, baseline)
        return baseline, make_buffer(run, make, state={"estimator": baseline})

    baseline, buffer = reinforce_buffer()
    for _ in range(len(buffer)):
        buffer.next_batch()
    state = buffer.state_dict()
    assert state["estimator"]["baseline"] == pytest.approx(float(buffer.experience.scores.mean()))
    fresh_baseline, fresh = reinforce_buffer()
    fresh.load_state_dict(state)
    assert fresh_baseline.value == baseline.value and fresh.iteration == 1
    fresh.next_batch()
    assert fresh.iteration == 2  # a boundary checkpoint: the next call collects
    with pytest.raises(ValueError, match="lacks"):
        reinforce_buffer()[1].load_state_dict(
            {key: state[key] for key in state if key != "estimator"}
        )


def test_resume_refuses_a_checkpoint_of_another_seed(policy):
    run = make_run(policy, rloo.RLOOConfig)
    state = make_buffer(run, partial(rloo.make_experience, run)).state_dict()
    other = make_run(policy, rloo.RLOOConfig)
    buffer = make_buffer(other, partial(rloo.make_experience, other))
    buffer.seed = 4
    with pytest.raises(ValueError, match=r"train\.seed 3, this run has 4"):
        buffer.load_state_dict(state)


def test_resume_refuses_a_checkpoint_inside_an_iteration(policy):
    run = make_run(policy, rloo.RLOOConfig)
    buffer = make_buffer(run, partial(rloo.make_experience, run))
    buffer.next_batch()
    with pytest.raises(ValueError, match="inside iteration 1"):
        make_buffer(run, partial(rloo.make_experience, run)).load_state_dict(buffer.state_dict())


def test_remax_scores_a_greedy_baseline_per_prompt(policy):
    from dataclasses import replace

    from rlhf.rewards.base import score_rollout

    run = make_run(policy, remax.ReMaxConfig, ppo_epochs=1)
    experience = remax.make_experience(run, 1)
    # the baseline by hand: each prompt decoded greedily once, with the rollout's seed, scored
    prompts = run.prompts_for(1)
    greedy_params = replace(run.sampling_params(1), temperature=0.0, num_samples=1)
    greedy_batch = run.engine.generate(prompts.texts, greedy_params)
    greedy = score_rollout(run.reward, prompts.texts, greedy_batch).scores.repeat_interleave(4)
    per_sequence = experience.advantages.sum(-1) / experience.mask.sum(-1)  # [16]
    torch.testing.assert_close(per_sequence, experience.scores - greedy)  # A = r − r(greedy)
    assert experience.metrics["rollout_greedy_reward"] == pytest.approx(float(greedy.mean()))


def test_kl_in_the_reward_and_the_adaptive_coefficient(policy):
    import copy

    from rlhf.models.reference import ReferenceModel

    model, _ = policy

    reference = ReferenceModel.frozen(copy.deepcopy(model))
    # move the reference away so the KL is not 0; seeded, since a sampled k1 estimate over 16
    # samples can come out below the target (even negative) for some perturbations
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in reference.module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    kl = KLSettings(coef=0.1, estimator="k1", in_reward=True, target=0.01, horizon=100)
    run = make_run(policy, rloo.RLOOConfig, reference=reference, kl=kl)
    batch = run.sample(run.prompts_for(1), 1)
    term = run.reference_term(batch)
    assert term.kl is not None and term.ref_logps is not None and term.coef == 0.1
    scores = torch.arange(16.0)
    assert torch.allclose(term.penalised(scores), scores - 0.1 * term.kl.sum(-1))
    # KL far above the target: β grows by the capped 20% × episodes / horizon
    assert run.kl_controller.coef == pytest.approx(0.1 * (1 + 0.2 * 16 / 100))
    # RLOO's advantages see the penalised reward: leave-one-out over score − β·KL, with the
    # β this rollout recorded (the controller has moved on to the next one's)
    from rlhf.losses.advantages import rloo_advantages

    coef = run.kl_controller.coef
    batch = run.sample(run.prompts_for(2), 2)
    scores = length_reward(None, batch.response_texts)
    kl_sum = run.reference_term(batch).kl.sum(-1)
    run.kl_controller.coef = coef  # as if this second look at rollout 2 had not happened
    experience = rloo.make_experience(run, 2)
    assert experience.kl_coef == pytest.approx(coef)
    expected = rloo_advantages(scores - coef * kl_sum, 4)
    per_sequence = experience.advantages.sum(-1) / experience.mask.sum(-1)
    torch.testing.assert_close(per_sequence, expected, atol=1e-5, rtol=1e-5)


def test_adaptive_controller_follows_ziegler():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    controller.update(3.0, 256)  # KL half the target: error −0.5 clipped to −0.2
    assert controller.coef == pytest.approx(0.2 * (1 - 0.2 * 256 / 10000))
    fixed = AdaptiveKLController(0.2, target=None, horizon=10000)
    fixed.update(100.0, 256)
    assert fixed.coef == 0.2


def test_a_policy_step_raises_the_log_prob_of_positive_advantages(policy, tiny_model_dir):
    from rlhf.models.load import load_model

    _, tokenizer = policy
    model = load_model(str(tiny_model_dir), tokenizer=tokenizer)
    run = make_run((model, tokenizer), rloo.RLOOConfig, ppo_epochs=1)
    batch = rloo.make_experience(run, 1).select(range(16))
    direction = torch.where(torch.arange(16) % 2 == 0, 1.0, -1.0)
    batch.advantages = direction[:, None] * batch.mask
    settings = dict(policy=PolicyLossSettings(), kl=KLSettings(coef=0.0))
    loss, metrics = policy_gradient_loss(model, batch, **settings)
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-4)  # on-policy: old = current
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    (loss / batch.loss_units).backward()
    optimizer.step()
    with torch.no_grad():
        after = policy_logps(model, batch)
    gained = ((after - batch.old_logps) * batch.mask).sum(-1)
    assert (gained * direction).mean() > 0
    assert gained[direction > 0].mean() > gained[direction < 0].mean()


def grpo_config(tmp_path, model_dir, name, **extra):
    values = {
        "out": str(tmp_path / name),
        "overwrite": True,
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "data": {"prompts": "builtin:arithmetic?n=40"},
        "reward": {"rule": "arithmetic"},
        "sampling": {"max_new_tokens": 6, "temperature": 1.0},
        "rollout": {
            "iterations": 3,
            "prompts_per_iteration": 4,
            "samples_per_prompt": 4,
            "ppo_epochs": 2,
            "minibatch_size": 8,
        },
        "train": {"batch_size": 4, "lr": 1e-3, "save_every": 3},
        "eval": {"prompts": 4},
    }
    return GRPOConfig.model_validate(values | extra)


def test_grpo_run_resumes_exactly_from_an_iteration_boundary(tmp_path, tiny_model_dir, monkeypatch):
    def length_rule(prompts, responses, metadata=None):  # not all tied on a random model
        return length_reward(prompts, responses)

    monkeypatch.setattr("rlhf.recipes.online_common.build_reward", lambda spec: length_rule)
    straight = run_grpo(grpo_config(tmp_path, tiny_model_dir, "a"))
    assert straight.final_step == 3 * 4  # iterations × ppo_epochs × 16 / 8
    # save_every 3 is rounded up to whole iterations (4 steps)
    config = grpo_config(tmp_path, tiny_model_dir, "b")
    calls = {"n": 0}
    original = ExperienceBuffer._next_rollout

    def dies_in_the_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", dies_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(config)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())[-1] == "step-0000008"
    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", original)
    resumed = run_grpo(config, resume=True)
    assert resumed.final_step == straight.final_step
    expected = [row["loss"] for row in straight.metrics if "loss" in row][8:]
    got = [row["loss"] for row in resumed.metrics if "loss" in row]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows if row["split"] == "train"] == list(range(1, 13))


def test_prompt_answers_reach_the_reward_as_metadata(tmp_path):
    from rlhf.recipes.online_common import OnlineDataConfig, load_prompt_set, split_prompts

    rows = [{"question": f"Q{i}: 2 + {i}?", "answer": f"... #### {2 + i}"} for i in range(10)]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = OnlineDataConfig(
        prompts=str(path), columns={"prompt": "question"}, answer_field="answer"
    )
    prompts = load_prompt_set(str(path), data)
    assert prompts.metadata == [{"answer": row["answer"]} for row in rows]
    train, held = split_prompts(prompts, 3, seed=0)
    assert len(held) == 3 and len(train) == 7
    for part in (train, held):
        for text, entry in zip(part.texts, part.metadata, strict=True):
            assert entry["answer"].endswith(str(2 + int(text[1 : text.index(":")])))
    path.write_text(json.dumps({"question": "no answer here"}) + "\n")
    with pytest.raises(ValueError, match=r"data\.answer_field 'answer': 1 of 1"):
        load_prompt_set(str(path), data)


def test_grpo_tiny_preset_raises_arithmetic_accuracy(tmp_path):
    """The learning check (~15 s): from a briefly SFT'd tiny model, GRPO raises the greedy
    exact-match accuracy and the sampled reward on the prompts it trains on. (On held-out
    prompts such a model, which has memorised rather than learned arithmetic, gets worse;
    the next test starts from a noisy SFT instead, whose gains carry over.)"""
    from rlhf.config import load_config, preset_path, read_yaml

    settings = [f"out={tmp_path / 'grpo'}", "progress=false", "tensorboard=false"]
    config = load_config(GRPOConfig, None, settings, base=read_yaml(preset_path("grpo", "tiny")))
    result = run_grpo(config)
    before = json.loads((tmp_path / "grpo" / "eval_initial.json").read_text())
    after = {k.removeprefix("eval_"): v for k, v in result.metrics[-1].items() if "eval_" in k}
    assert after["greedy_reward"] >= before["greedy_reward"] + 0.09  # ≥ 3 of 32 prompts
    assert after["reward"] > before["reward"]
    rewards = [row["rollout_reward"] for row in result.metrics if "rollout_reward" in row]
    assert len(rewards) == 40
    assert sum(rewards[-8:]) / 8 > sum(rewards[:8]) / 8 + 0.15
    assert 0 < after["kl"] < 5


def test_lora_policy_uses_its_base_as_the_reference(tmp_path, tiny_model_dir, monkeypatch):
    """With LoRA the reference is the base model (adapter disabled), no copy: the adapter
    starts at zero, so the first rollout's KL to the reference is exactly 0."""
    from rlhf.models.reference import ReferenceModel

    monkeypatch.setattr("rlhf.recipes.online_common.build_reward", lambda spec: length_reward)
    rollout = {"iterations": 2, "prompts_per_iteration": 4, "samples_per_prompt": 4}
    config = grpo_config(
        tmp_path,
        tiny_model_dir,
        "lora",
        model={"path": str(tiny_model_dir), "lora": {"r": 4}},
        rollout=rollout | {"minibatch_size": 8},
    )
    frozen, copies = ReferenceModel.frozen.__func__, []

    def counting(cls, module):
        copies.append(module)
        return frozen(cls, module)

    monkeypatch.setattr(ReferenceModel, "frozen", classmethod(counting))
    result = run_grpo(config)
    assert not copies  # no frozen copy of the policy was made
    rollouts = [row for row in result.metrics if "rollout_kl" in row]
    assert rollouts[0]["rollout_kl"] == pytest.approx(0.0, abs=1e-5)
    assert rollouts[1]["rollout_kl"] != pytest.approx(0.0, abs=1e-7)
    assert (tmp_path / "lora" / "model").is_dir()


def test_mixed_precision_reaches_the_rollouts(tmp_path, tiny_model_dir, monkeypatch):
    """With ``train.mixed_precision=bf16`` the rollout's reference and reward passes run under
    bf16 autocast like the loss (compiled sampling stays fp32: test_rollout_compiled.py)."""
    import rlhf.engine.trainer as trainer_module
    import rlhf.online.phases as phases
    import rlhf.recipes.grpo as grpo_module

    monkeypatch.setattr(trainer_module, "cpu_has_bf16_units", lambda: True)
    seen: dict[str, set] = {"reference": set(), "score": set()}

    def recorder(name, function):
        def recorded(*args, **kwargs):
            seen[name].add(torch.is_autocast_enabled("cpu"))
            return function(*args, **kwargs)

        return recorded

    monkeypatch.setattr(phases, "reference_logps", recorder("reference", phases.reference_logps))
    monkeypatch.setattr(grpo_module, "score_rollout", recorder("score", grpo_module.score_rollout))
    config = grpo_config(
        tmp_path,
        tiny_model_dir,
        "bf16",
        rollout={"iterations": 1, "prompts_per_iteration": 4, "samples_per_prompt": 2},
        kl={"coef": 0.05},
        train={"batch_size": 8, "lr": 1e-3, "mixed_precision": "bf16"},
        eval={"prompts": 0},
    )
    result = run_grpo(config)
    assert seen["reference"] == {True} and seen["score"] == {True}
    losses = [row["loss"] for row in result.metrics if "loss" in row]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_a_step_with_every_group_dropped_leaves_the_policy_as_it_was(
    tmp_path, tiny_model_dir, monkeypatch
):
    """All rewards tie and grpo.tied_groups=drop: nothing enters the loss, so no backward runs
    and the optimiser (AdamW, weight decay included) leaves every weight as it was."""
    from safetensors.torch import load_file

    monkeypatch.setattr(
        "rlhf.recipes.online_common.build_reward",
        lambda spec: lambda prompts, responses: torch.zeros(len(responses)),
    )
    config = grpo_config(
        tmp_path,
        tiny_model_dir,
        "dropped",
        grpo={"tied_groups": "drop"},
        rollout={"iterations": 1, "prompts_per_iteration": 4, "samples_per_prompt": 4},
        train={"batch_size": 4, "lr": 1e-2, "weight_decay": 0.1},
        eval={"prompts": 0},
    )
    result = run_grpo(config)
    losses = [row for row in result.metrics if "loss" in row]
    assert losses and all(row["loss"] == 0 and row["loss_units"] == 0 for row in losses)
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(tmp_path / "dropped" / "model" / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)
