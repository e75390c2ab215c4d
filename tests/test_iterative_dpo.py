"""Iterative DPO: rounds of sample → label → DPO, resumable mid-round."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from rlhf.engine.trainer import Trainer
from rlhf.recipes.iterative_dpo import IterativeDPOConfig, run_iterative_dpo


def length_rule(prompts, responses, metadata=None):  # varies between samples of a random model
    return torch.tensor([float(len(response) % 3) for response in responses])


def config(tmp_path, model_dir, name, **extra):
    values = {
        "out": str(tmp_path / name),
        "overwrite": True,
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "prompts": "builtin:arithmetic?n=40",
        "reward": {"rule": "arithmetic"},
        "sampling": {"max_new_tokens": 6, "temperature": 1.0},
        "iterative": {
            "rounds": 2,
            "prompts_per_round": 16,
            "samples_per_prompt": 4,
            "eval_prompts": 4,
        },
        "loss": {"name": "dpo", "beta": 0.1},
        "data": {"max_length": 64},
        "train": {"batch_size": 4, "lr": 1e-3, "epochs": 1, "save_every": 2},
        "eval": {"kl_prompts": 2, "max_new_tokens": 6},
    }
    return IterativeDPOConfig.model_validate(values | extra)


def metric_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rounds_sample_label_and_train_from_the_previous_policy(
    tmp_path, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr("rlhf.recipes.iterative_dpo.build_reward", lambda spec: length_rule)
    result = run_iterative_dpo(config(tmp_path, tiny_model_dir, "a"))
    out = tmp_path / "a"
    for round_number in (1, 2):
        folder = out / "rounds" / f"round-{round_number}"
        pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
        assert 0 < len(pairs) <= 16  # one per prompt whose samples do not all tie
        for pair in pairs:  # best first, by the run's reward
            assert len(pair["chosen"]) % 3 > len(pair["rejected"]) % 3
        assert (folder / "model" / "model.safetensors").is_file()
    state = json.loads((out / "iterative_state.json").read_text())
    assert state["completed_rounds"] == 2
    assert state["policy"] == str(out / "rounds" / "round-2" / "model")
    rows = metric_rows(out / "metrics.jsonl")
    assert [row["step"] for row in rows if row["split"] == "eval"] == [0, 1, 2]
    rollouts = [row for row in rows if row["split"] == "rollout"]
    assert all(row["pairs"] > 0 and row["dpo_steps"] > 0 for row in rollouts)
    # the final model is the last round's
    final = load_file(out / "model" / "model.safetensors")
    last = load_file(out / "rounds" / "round-2" / "model" / "model.safetensors")
    assert all(torch.equal(final[name], last[name]) for name in final)
    assert result.final_step == sum(int(row["dpo_steps"]) for row in rollouts)


def test_a_run_resumes_mid_round_exactly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rlhf.recipes.iterative_dpo.build_reward", lambda spec: length_rule)
    straight = run_iterative_dpo(config(tmp_path, tiny_model_dir, "a"))
    first_round = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[1])
    steps_in_round_1 = int(first_round["dpo_steps"])

    calls = {"n": 0}
    original = Trainer._train_step

    def dies_in_round_2(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_in_round_1 + 3:  # round 2's third step; its checkpoint: step 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", dies_in_round_2)
    interrupted = config(tmp_path, tiny_model_dir, "b")
    with pytest.raises(KeyboardInterrupt):
        run_iterative_dpo(interrupted)
    round_2 = tmp_path / "b" / "rounds" / "round-2"
    assert sorted(p.name for p in (round_2 / "checkpoints").iterdir())[-1] == "step-0000002"
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = run_iterative_dpo(interrupted, resume=True)

    assert resumed.final_step == straight.final_step
    # round 2's losses after its checkpoint are the uninterrupted run's
    expected = [
        row["loss"]
        for row in metric_rows(tmp_path / "a" / "rounds" / "round-2" / "metrics.jsonl")
        if "loss" in row
    ]
    got = [row["loss"] for row in metric_rows(round_2 / "metrics.jsonl") if "loss" in row]
    assert got[-len(expected) + 2 :] == pytest.approx(expected[2:], rel=1e-5, abs=1e-6)
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.allclose(a[name], b[name], atol=1e-6) for name in a)
    # the same pairs: the interrupted round kept its own
    assert (round_2 / "pairs.jsonl").read_text() == (
        tmp_path / "a" / "rounds" / "round-2" / "pairs.jsonl"
    ).read_text()


def test_settings_that_cannot_work_are_refused(tmp_path):
    base = {"model": {"path": "x"}, "prompts": "p.jsonl", "reward": {"rule": "arithmetic"}}
    with pytest.raises(ValidationError, match="samples_per_prompt"):
        IterativeDPOConfig.model_validate(base | {"iterative": {"samples_per_prompt": 1}})
    with pytest.raises(ValidationError, match="reference=initial"):
        IterativeDPOConfig.model_validate(base | {"model": {"path": "x", "lora": {"r": 4}}})
    with pytest.raises(ValueError, match="no iterative DPO run"):
        run_iterative_dpo(IterativeDPOConfig.model_validate(base | {"out": str(tmp_path)}), True)


def test_the_tiny_preset_raises_the_sampled_reward(tmp_path):
    from rlhf.config import load_config
    from rlhf.recipes.registry import recipe

    preset = recipe("iterative-dpo").preset_file("tiny")
    overrides = [f"out={tmp_path / 'run'}", "progress=false", "tensorboard=false"]
    result = run_iterative_dpo(load_config(IterativeDPOConfig, preset, overrides))
    rewards = [row["eval_reward"] for row in result.metrics]
    assert len(rewards) == 7  # the start and six rounds
    assert sum(rewards[-2:]) / 2 > rewards[0]
