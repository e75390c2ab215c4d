"""The one engine factory: every sampling site builds its engine there, and a new engine is one
class plus one ENGINES entry, picked with ``sampling.engine``."""

from __future__ import annotations

import pytest

from rlhf.rollout import factory
from rlhf.rollout.hf import HFGenerationEngine
from rlhf.rollout.types import SamplingConfig, SamplingParams


class CountingEngine(HFGenerationEngine):
    """An engine of its own (HF generate underneath) that counts the calls it serves."""

    calls = 0

    def generate(self, prompts, params):
        CountingEngine.calls += 1
        return super().generate(prompts, params)


def test_build_engine_gives_the_registered_class_and_samples(tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = factory.build_engine(load_model(str(tiny_model_dir)), tokenizer, batch_size=4)
    assert type(engine) is HFGenerationEngine
    batch = engine.generate(["Hi"], SamplingParams(max_new_tokens=3, num_samples=2))
    assert len(batch) == 2
    loaded = factory.load_engine(str(tiny_model_dir), batch_size=4)
    assert type(loaded) is HFGenerationEngine and loaded.batch_size == 4


def test_unknown_engines_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"engine kind 'sglang': expected one of \['hf', 'vllm'\]"):
        factory.engine_class("sglang")
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        SamplingConfig(engine="nope")
    assert "engine" not in vars(SamplingConfig().params(num_samples=1, seed=0))


def test_a_new_engine_is_one_entry_and_a_config_key(tmp_path, tiny_model_dir, monkeypatch):
    from rlhf.recipes.grpo import GRPOConfig, run_grpo

    monkeypatch.setitem(factory.ENGINES, "counting", f"{__name__}:CountingEngine")
    CountingEngine.calls = 0
    config = GRPOConfig.model_validate(
        {
            "out": str(tmp_path / "grpo"),
            "progress": False,
            "tensorboard": False,
            "model": {"path": str(tiny_model_dir)},
            "data": {"prompts": "builtin:arithmetic?n=12"},
            "reward": {"rule": "arithmetic"},
            "sampling": {"max_new_tokens": 4, "engine": "counting"},
            "rollout": {"iterations": 1, "prompts_per_iteration": 2, "samples_per_prompt": 2},
            "train": {"batch_size": 4},
            "eval": {"prompts": 2},
        }
    )
    run_grpo(config)
    # the rollout and the before / after evaluations (greedy + sampled each) all went through it
    assert CountingEngine.calls == 1 + 2 * 2
