"""Opt-in compiled decoding (``SamplingParams.compile``): a ``torch.compile``'d one-token step
over a static KV cache must sample what ``generate`` samples (same seed, same tokens, up to a
float-rounding flip of a near-tie), cut and pad responses the same way, and compile once per
batch shape, never per generated token.

Every call here decodes 12 rows into a 64-column cache, so the file compiles one graph (about
10-15 s on a small CPU); a new batch size or cache size would compile another."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlhf.rollout.hf as hf
from rlhf.models.compile import compiled_decode_step
from rlhf.rollout import SamplingParams
from rlhf.rollout.types import SamplingConfig

PROMPTS = [
    "What is 12 + 30?\n",
    "Once upon a time there was a little cat who liked to play. What is 99 - 1?\n",
    "Hi",
]


def both(engine, prompts=PROMPTS, num_samples=4, **settings):
    """The same call eager (``generate``) and compiled."""
    params = SamplingParams(max_new_tokens=10, seed=5, num_samples=num_samples, **settings)
    eager = engine.generate(prompts, params)
    compiled = engine.generate(prompts, dataclasses.replace(params, compile=True))
    return eager, compiled


def assert_same_batch(eager, compiled):
    assert torch.equal(compiled.prompt_ids, eager.prompt_ids)
    assert torch.equal(compiled.prompt_mask, eager.prompt_mask)
    assert torch.equal(compiled.response_ids, eager.response_ids)
    assert torch.equal(compiled.response_mask, eager.response_mask)
    assert torch.equal(compiled.ended_with_eos, eager.ended_with_eos)
    assert compiled.response_texts == eager.response_texts
    # log-probs come from the same teacher-forced pass over the same tokens: identical
    torch.testing.assert_close(compiled.logps, eager.logps, atol=0, rtol=0)


def test_compiled_greedy_decoding_equals_generate(eos_engine):
    eager, compiled = both(eos_engine, temperature=0.0)
    assert eager.prompt_mask[:, 0].min() == 0, "prompts should be left-padded"
    assert_same_batch(eager, compiled)


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)],
    ids=["plain", "filtered"],
)
def test_compiled_sampling_draws_the_tokens_of_generate_for_a_seed(eos_engine, settings):
    # the random stream is consumed as generate consumes it (one multinomial over every row per
    # step), so the same seed gives the same tokens; exact here, in general up to a rounding
    # difference of the compiled kernels flipping a near-tie
    eager, compiled = both(eos_engine, **settings)
    assert eager.response_lengths.min() < eager.response_lengths.max(), "EOS at varied lengths"
    assert eager.ended_with_eos.any()
    assert_same_batch(eager, compiled)


def test_compiled_logits_match_eager_step_by_step(eos_engine):
    # the closeness the token equality above rests on: each step's logits against an eager
    # step over the same static cache
    from transformers import StaticCache

    from rlhf.models.compile import _decode_step

    model, tokenizer = eos_engine.model, eos_engine.tokenizer
    ids = torch.tensor([tokenizer("Hi there", add_special_tokens=False)["input_ids"]] * 12)
    mask = torch.ones((12, 64), dtype=torch.long)
    caches = [StaticCache(config=model.config, max_cache_len=64) for _ in range(2)]
    with torch.no_grad():
        for t in range(ids.shape[1]):
            position = torch.full((12, 1), t)
            token = ids[:, t : t + 1].contiguous()  # as compiled_generate passes it
            eager = _decode_step(model, token, position, mask, caches[0])
            # the first step allocates the cache, eagerly (as compiled_generate does)
            step = compiled_decode_step() if t > 0 else _decode_step
            compiled = step(model, token, position, mask, caches[1])
            torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_compiled_sampling_without_shared_prompts(eos_engine):
    # one sample per prompt: every row is prefilled on its own, not copied from its group's
    eager, compiled = both(eos_engine, prompts=PROMPTS * 4, num_samples=1, temperature=1.0)
    assert_same_batch(eager, compiled)


def test_compiled_step_compiles_once_per_shape_not_per_token(eos_engine):
    import torch._dynamo.utils as dynamo_utils

    params = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=4, compile=True)
    eos_engine.generate(PROMPTS, params)  # compiles this batch shape if nothing did yet
    dynamo_utils.counters.clear()
    eos_engine.generate(PROMPTS, dataclasses.replace(params, seed=1, max_new_tokens=20))
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 0, "recompiled for a new length"


def test_models_without_a_static_cache_fall_back_to_generate(eos_engine, monkeypatch):
    monkeypatch.setattr(hf, "has_plain_head", lambda model: False)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, compile=True)
    ids = torch.ones((1, 3), dtype=torch.long)
    cannot = hf.compiled_generate(eos_engine.model, ids, ids, ids[0], params, [2], 0)
    assert cannot is None
    eager = eos_engine.generate(PROMPTS, dataclasses.replace(params, compile=False))
    assert_same_batch(eager, eos_engine.generate(PROMPTS, params))


def test_sampling_config_passes_compile_through():
    assert SamplingConfig().params(1, 0).compile is False
    assert SamplingConfig(compile=True).params(1, 0).compile is True
