"""PPO: the critic's advantages (token rewards with the KL, GAE, whitening), the actor-critic
loss, early stopping, exact resume, and the CLI preset."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.losses.policy import entropy_from_logits
from rlhf.models.load import load_model, load_tokenizer
from rlhf.models.value import load_value_model, value_head
from rlhf.recipes.online import ExperienceLoader, KLSettings, PolicyLossSettings, RolloutSettings
from rlhf.recipes.ppo import (
    ActorCritic,
    EarlyStop,
    PPOConfig,
    PPOEstimator,
    PPOSettings,
    RunningMoments,
    logps_and_entropy,
    ppo_loss,
    run_ppo,
)
from rlhf.rollout.types import SamplingConfig

PROMPTS = [f"What is {a} + {b}?\n" for a, b in zip(range(10, 30), range(40, 60), strict=True)]


def length_reward(prompts, responses, metadata=None):
    """A cheap reward that varies between samples: the response's length mod 3."""
    return torch.tensor([float(len(response) % 3) for response in responses])


def make_parts(model_dir, settings=None, kl=None, *, ppo_epochs=1, micro_batch_size=16):
    """A fresh policy + critic and an ExperienceLoader over them (16 episodes a rollout)."""
    from rlhf.rollout.hf import HFGenerationEngine

    tokenizer = load_tokenizer(str(model_dir))
    policy = load_model(str(model_dir), tokenizer=tokenizer)
    critic = load_value_model(model_dir, tokenizer, seed=2)
    kl = kl or KLSettings(coef=0.0)
    estimator = PPOEstimator(settings or PPOSettings(), kl)
    estimator.critic = critic
    loader = ExperienceLoader(
        engine=HFGenerationEngine(policy, tokenizer, batch_size=64),
        reward=length_reward,
        estimator=estimator,
        prompts=PROMPTS,
        prompt_metadata=None,
        reference=None,
        sampling=SamplingConfig(max_new_tokens=8, temperature=1.0),
        rollout=RolloutSettings(
            prompts_per_iteration=4, samples_per_prompt=4, ppo_epochs=ppo_epochs
        ),
        kl=kl,
        micro_batch_size=micro_batch_size,
        seed=3,
    )
    return ActorCritic(policy, critic), estimator, loader


def test_returns_are_the_score_minus_the_kl_still_to_come(tiny_model_dir):
    """γ = λ = 1, no whitening: R_t = score − β Σ_{t' ≥ t} k1_t' and Â_t = R_t − V(s_t)."""
    settings = PPOSettings(gamma=1.0, lam=1.0, whiten_advantages=False)
    _, estimator, loader = make_parts(tiny_model_dir, settings)
    rollout = loader.collect(1)
    mask = rollout.mask
    generator = torch.Generator().manual_seed(0)
    rollout.ref_logps = rollout.batch.logps + 0.3 * torch.randn(mask.shape, generator=generator)
    rollout.ref_logps = rollout.ref_logps * mask
    rollout.kl_coef = 0.1
    result = estimator(rollout)
    k1 = (rollout.batch.logps - rollout.ref_logps) * mask
    to_come = k1.flip(-1).cumsum(-1).flip(-1)  # Σ_{t' ≥ t}
    expected = (rollout.scores[:, None] - 0.1 * to_come) * mask
    torch.testing.assert_close(result.returns, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.advantages, (result.returns - result.values) * mask)
    assert torch.all(result.values[mask == 0] == 0) and result.values[mask == 1].abs().sum() > 0


def test_advantages_are_whitened_over_real_tokens_only(tiny_model_dir):
    _, _, loader = make_parts(tiny_model_dir)
    experience = loader.next_batch()
    real = experience.mask.bool()
    assert experience.advantages[real].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert experience.advantages[real].std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.all(experience.advantages[~real] == 0)
    assert experience.values is not None and experience.returns is not None
    assert "rollout_explained_variance" in experience.metrics


def test_reward_normalisation_and_clipping():
    scores = torch.tensor([1.0, 2.0, 3.0, 10.0])
    batch = PPOEstimator(PPOSettings(reward_norm="batch"), KLSettings()).normalized_scores(scores)
    assert batch.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert batch.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    clipped = PPOEstimator(PPOSettings(reward_norm="batch", reward_clip=1.0), KLSettings())
    assert clipped.normalized_scores(scores).max().item() == 1.0
    running = PPOEstimator(PPOSettings(reward_norm="running"), KLSettings())
    running.normalized_scores(scores)
    second = torch.tensor([0.0, -4.0])
    out = running.normalized_scores(second)
    everything = torch.cat([scores, second]).double()
    assert running.moments.mean == pytest.approx(float(everything.mean()))
    assert running.moments.std == pytest.approx(float(everything.std(unbiased=False)))
    expected = (second - everything.mean()) / everything.std(unbiased=False)
    torch.testing.assert_close(out, expected.float(), atol=1e-5, rtol=1e-5)
    restored = RunningMoments()
    restored.load_state_dict(json.loads(json.dumps(running.state_dict()["reward_moments"])))
    assert restored.std == running.moments.std


def test_logps_and_entropy_match_a_full_forward(tiny_model_dir):
    from rlhf.recipes.online import policy_logps

    model, _, loader = make_parts(tiny_model_dir)
    batch = loader.next_batch()
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
    model, _, loader = make_parts(tiny_model_dir, settings)
    batch = loader.next_batch()
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
    monkeypatch.setattr("rlhf.recipes.online.build_reward", lambda spec: length_reward)
    straight = run_ppo(ppo_config(tmp_path, tiny_model_dir, "a"))
    assert straight.final_step == 3 * 4  # iterations × ppo_epochs × 8 episodes / 4
    config = ppo_config(tmp_path, tiny_model_dir, "b")
    calls = {"n": 0}
    original = ExperienceLoader._next_rollout

    def dies_in_the_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(ExperienceLoader, "_next_rollout", dies_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(config)
    checkpoint = sorted((tmp_path / "b" / "checkpoints").iterdir())[-1]
    assert checkpoint.name == "step-0000008"
    from safetensors.torch import load_file

    saved = load_file(checkpoint / "trainable.safetensors")
    assert any(k.startswith("value.") for k in saved) and any(
        k.startswith("policy.") for k in saved
    )
    monkeypatch.setattr(ExperienceLoader, "_next_rollout", original)
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
    original = PPOEstimator.__call__

    def spy(self, rollout):
        seen["head"] = value_head(self.critic).weight.detach().clone()
        return original(self, rollout)

    monkeypatch.setattr(PPOEstimator, "__call__", spy)
    monkeypatch.setattr("rlhf.recipes.online.build_reward", lambda spec: length_reward)
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
