"""PPO: the critic's advantages (token rewards with the KL, GAE, whitening), the actor-critic
loss, early stopping, exact resume, and the CLI preset."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from rlhf.losses.policy import entropy_from_logits
from rlhf.models.load import load_model, load_tokenizer
from rlhf.models.value import load_value_model, value_head
from rlhf.online.experience import ExperienceBuffer
from rlhf.online.loss import policy_logps
from rlhf.online.phases import ReferenceTerm
from rlhf.online.settings import KLSettings, PolicyLossSettings
from rlhf.recipes.ppo import (
    ActorCritic,
    EarlyStop,
    PPOConfig,
    PPOSettings,
    RunningMoments,
    ScoreNormaliser,
    logps_and_entropy,
    make_experience,
    ppo_loss,
    run_ppo,
)

from .online_helpers import length_reward, make_buffer, make_run


def make_parts(model_dir, settings=None, kl=None, *, ppo_epochs=1, micro_batch_size=16):
    """A fresh policy + critic, an OnlineRun and an ExperienceBuffer over them (16 episodes a
    rollout)."""
    tokenizer = load_tokenizer(str(model_dir))
    policy = load_model(str(model_dir), tokenizer=tokenizer)
    critic = load_value_model(model_dir, tokenizer, seed=2)
    run = make_run(
        (policy, tokenizer),
        PPOConfig,
        kl=kl,
        ppo_epochs=ppo_epochs,
        batch_size=micro_batch_size,
        ppo=(settings or PPOSettings()).model_dump(),
    )
    make = partial(make_experience, run, critic, ScoreNormaliser(run.config.ppo))
    return ActorCritic(policy, critic), run, make_buffer(run, make)


def test_returns_are_the_score_minus_the_kl_still_to_come(tiny_model_dir):
    """γ = λ = 1, no whitening: R_t = score − β Σ_{t' ≥ t} k1_t' and Â_t = R_t − V(s_t)."""
    settings = PPOSettings(gamma=1.0, lam=1.0, whiten_advantages=False)
    model, run, _ = make_parts(tiny_model_dir, settings)
    generator = torch.Generator().manual_seed(0)
    seen = {}

    def perturbed_reference(batch):  # a reference 0.3-noisy around the sampling policy
        mask = batch.response_mask.float()
        noise = 0.3 * torch.randn(mask.shape, generator=generator)
        seen["logps"], seen["ref"] = batch.logps, (batch.logps + noise) * mask
        return ReferenceTerm(seen["ref"], None, coef=0.1, in_reward=True)

    run.reference_term = perturbed_reference
    result = make_experience(run, model.value, ScoreNormaliser(settings), 1)
    mask = result.mask
    k1 = (seen["logps"] - seen["ref"]) * mask
    to_come = k1.flip(-1).cumsum(-1).flip(-1)  # Σ_{t' ≥ t}
    expected = (result.scores[:, None] - 0.1 * to_come) * mask
    torch.testing.assert_close(result.returns, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.advantages, (result.returns - result.values) * mask)
    assert torch.all(result.values[mask == 0] == 0) and result.values[mask == 1].abs().sum() > 0


def test_advantages_are_whitened_over_real_tokens_only(tiny_model_dir):
    _, _, buffer = make_parts(tiny_model_dir)
    experience = buffer.next_batch()
    real = experience.mask.bool()
    assert experience.advantages[real].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert experience.advantages[real].std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.all(experience.advantages[~real] == 0)
    assert experience.values is not None and experience.returns is not None
    assert "rollout_explained_variance" in experience.metrics


def test_reward_normalisation_and_clipping():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0])
    batch = ScoreNormaliser(PPOSettings(reward_norm="batch"))(scores)
    assert batch.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert batch.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    clipped = ScoreNormaliser(PPOSettings(reward_norm="batch", reward_clip=1.0))
    assert clipped(scores).max().item() == 1.0
    running = ScoreNormaliser(PPOSettings(reward_norm="running"))
    running(scores)
    second = torch.tensor([0.0, -4.0])
    out = running(second)
    everything = torch.cat([scores, second]).double()
    assert running.moments.mean == pytest.approx(float(everything.mean()))
    assert running.moments.std == pytest.approx(float(everything.std(unbiased=False)))
    expected = (second - everything.mean()) / everything.std(unbiased=False)
    torch.testing.assert_close(out, expected.float(), atol=1e-5, rtol=1e-5)
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(running.state_dict()["reward_moments"])))
    assert restored.std == running.moments.std


def test_logps_and_entropy_match_a_full_forward(tiny_model_dir):
    model, _, buffer = make_parts(tiny_model_dir)
    batch = buffer.next_batch()
    logps, entropy = logps_and_entropy(model.policy, batch)
    with torch.no_grad():
        torch.testing.assert_close(logps, policy_logps(model.policy, batch), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logps, batch.old_logps, atol=1e-4, rtol=1e-4)
        # the entropy of the first response token, from a plain forward over each prompt
        for row in range(3):
            prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()][None]
            logits = model.policy(input_ids=prompt).logits[:, -1:]  # [1, 1, V]
            expected = entropy_from_logits(logits / batch.temperature)[0, 0]
            assert entropy[row, 0].item() == pytest.approx(expected.item(), abs=1e-4)
    assert torch.all(entropy[batch.mask == 0] == 0)


def test_a_ppo_update_lowers_the_loss_on_its_own_batch(tiny_model_dir):
    settings = PPOSettings(entropy_coef=0.01)
    model, _, buffer = make_parts(tiny_model_dir, settings)
    batch = buffer.next_batch()
    options = dict(settings=settings, policy=PolicyLossSettings(), kl=KLSettings(coef=0.0))

    def loss_and_metrics():
        loss, metrics = ppo_loss(model, batch, **options)
        return loss / batch.loss_units, metrics

    before, metrics = loss_and_metrics()
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-4)  # on-policy at the first step
    assert metrics["value_clip_frac"] == 0.0 and metrics["entropy"] > 0
    assert "rollout_reward" in metrics
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    head = value_head(model.value).weight.detach().clone()
    for _ in range(5):
        optimizer.zero_grad()
        loss, _ = loss_and_metrics()
        loss.backward()
        optimizer.step()
    after, metrics_after = loss_and_metrics()
    assert after.item() < before.item()
    assert metrics_after["value_loss"] < metrics["value_loss"]
    assert metrics_after["approx_kl"] > 0
    assert not torch.equal(value_head(model.value).weight, head)  # the critic trained too


def test_early_stop_ends_the_iteration_once_approx_kl_exceeds_the_target():
    class Loader:
        position, iteration = 2, 1

        def __len__(self):
            return 8

        def end_iteration(self):
            self.position = len(self)

    loader = Loader()
    stop = EarlyStop(loader, target=0.05)  # type: ignore[arg-type]
    stop.on_step_end(1, {"approx_kl": 0.01})
    assert loader.position == 2 and stop.stopped == 0
    stop.on_step_end(2, {"approx_kl": 0.2})
    assert loader.position == 8 and stop.stopped == 1


# ------------------------------------------------------------------------------ runs


def ppo_config(tmp_path, model_dir, name, **extra):
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
            "samples_per_prompt": 2,
            "ppo_epochs": 2,
            "minibatch_size": 4,
        },
        "kl": {"coef": 0.1, "target": 1.0, "horizon": 100},
        "ppo": {"reward_norm": "running", "entropy_coef": 0.01},
        "train": {"batch_size": 2, "lr": 1e-3, "save_every": 3},
        "eval": {"prompts": 4},
    }
    return PPOConfig.model_validate(values | extra)


def test_ppo_run_resumes_exactly_and_exports_the_policy_alone(
    tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr("rlhf.recipes.online_common.build_reward", lambda spec: length_reward)
    straight = run_ppo(ppo_config(tmp_path, tiny_model_dir, "a"))
    assert straight.final_step == 3 * 4  # iterations × ppo_epochs × 8 episodes / 4
    config = ppo_config(tmp_path, tiny_model_dir, "b")
    calls = {"n": 0}
    original = ExperienceBuffer._next_rollout

    def dies_in_the_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", dies_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(config)
    checkpoint = sorted((tmp_path / "b" / "checkpoints").iterdir())[-1]
    assert checkpoint.name == "step-0000008"
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "trainable.safetensors")
    assert any(k.startswith("value.") for k in saved) and any(
        k.startswith("policy.") for k in saved
    )
    monkeypatch.setattr(ExperienceBuffer, "_next_rollout", original)
    resumed = run_ppo(config, resume=True)
    assert resumed.final_step == straight.final_step
    for key in ("loss", "value_loss", "rollout_kl_coef"):
        expected = [row[key] for row in straight.metrics if key in row][-len(resumed.metrics) :]
        got = [row[key] for row in resumed.metrics if key in row]
        assert got == pytest.approx(expected[-len(got) :], rel=1e-5, abs=1e-6), key
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    assert not any("score" in name for name in a)  # the policy alone, as a causal LM
    config_json = json.loads((tmp_path / "a" / "model" / "config.json").read_text())
    assert config_json["architectures"] == ["LlamaForCausalLM"]


def test_value_path_loads_a_reward_model_folder_as_the_critic(
    tmp_path, tiny_model_dir, monkeypatch
):
    from rlhf.models.load import save_model
    from rlhf.models.reward import init_reward_model

    tokenizer = load_tokenizer(str(tiny_model_dir))
    reward_model = init_reward_model(tiny_model_dir, tokenizer, seed=1)
    with torch.no_grad():
        value_head(reward_model).weight.fill_(0.01)
    folder = save_model(reward_model, tokenizer, tmp_path / "rm")
    seen = {}
    import rlhf.recipes.ppo as ppo_module

    original = ppo_module.make_experience

    def spy(run, critic, normalise, iteration):
        seen["head"] = value_head(critic).weight.detach().clone()
        return original(run, critic, normalise, iteration)

    monkeypatch.setattr(ppo_module, "make_experience", spy)
    monkeypatch.setattr("rlhf.recipes.online_common.build_reward", lambda spec: length_reward)
    config = ppo_config(
        tmp_path,
        tiny_model_dir,
        "rm-critic",
        value={"path": str(folder)},
        rollout={"iterations": 1, "prompts_per_iteration": 4, "samples_per_prompt": 1},
        train={"batch_size": 4},
        eval={"prompts": 0},
    )
    run_ppo(config)
    assert torch.all(seen["head"] == 0.01)  # the first rollout's values came from the RM's head


def test_cli_tiny_preset_runs_and_logs_ppo_metrics(tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app

    out = tmp_path / "ppo"
    shrink = [
        "init_sft.train.max_steps=5",
        "data.prompts=builtin:arithmetic?n=48",
        "rollout.iterations=2",
        "rollout.prompts_per_iteration=8",
        "rollout.samples_per_prompt=2",
        "rollout.ppo_epochs=2",
        "rollout.minibatch_size=8",
        "train.batch_size=8",
        "eval.prompts=8",
        "sampling.max_new_tokens=8",
        "progress=false",
        "tensorboard=false",
    ]
    help_text = CliRunner().invoke(app, ["ppo", "--help"]).output
    for key in ("ppo.vf_coef", "ppo.target_kl", "value.path", "kl.target", "rollout.ppo_epochs"):
        assert key in help_text
    result = CliRunner().invoke(
        app, ["ppo", "--preset", "tiny", f"out={out}", *shrink], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "held-out:" in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train] == list(range(1, 9))  # 2 iterations × 2 × 16 / 8
    rollouts = [row for row in train if "rollout_reward" in row]
    assert [row["rollout_iteration"] for row in rollouts] == [1, 2]
    for key in ("rollout_kl", "rollout_explained_variance", "rollout_value", "rollout_kl_coef"):
        assert key in rollouts[0]
    for key in ("approx_kl", "clip_frac", "value_loss", "value_clip_frac", "policy_loss"):
        assert key in train[-1]
    assert (out / "model" / "config.json").is_file() and (out / "eval_initial.json").is_file()
