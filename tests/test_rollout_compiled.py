"""Opt-in compiled decoding (``SamplingParams.compile``): a ``torch.compile``'d one-token step
over a static KV cache must decode what ``generate`` decodes greedily (same tokens, up to a
float-rounding flip of a near-tie), sample from the same distribution (with its own, faster
draw: :func:`rlhf.rollout.compiled.exponential_race`, so a seed gives other tokens than
``generate``'s), cut and pad responses the same way, and compile once per batch shape, never
per generated token.

Every call here decodes 12 rows into a 64-column cache, so the file compiles one graph (about
10-15 s on a small CPU); a new batch size or cache size would compile another."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlhf.models.teacher_forcing as teacher_forcing
import rlhf.rollout.compiled as compiled
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


def assert_same_batch(eager, compiled, logps_atol=0.0):
    assert torch.equal(compiled.prompt_ids, eager.prompt_ids)
    assert torch.equal(compiled.prompt_mask, eager.prompt_mask)
    assert torch.equal(compiled.response_ids, eager.response_ids)
    assert torch.equal(compiled.response_mask, eager.response_mask)
    assert torch.equal(compiled.ended_with_eos, eager.ended_with_eos)
    assert compiled.response_texts == eager.response_texts
    # log-probs come from the same teacher-forced pass over the same tokens: identical (or,
    # from passes over other groupings of the rows, equal up to rounding)
    torch.testing.assert_close(compiled.logps, eager.logps, atol=logps_atol, rtol=0)


def test_compiled_greedy_decoding_equals_generate(eos_engine):
    eager, compiled = both(eos_engine, temperature=0.0)
    assert eager.prompt_mask[:, 0].min() == 0, "prompts should be left-padded"
    assert_same_batch(eager, compiled)


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)],
    ids=["plain", "filtered"],
)
def test_compiled_sampling_is_seeded_and_cut_at_the_first_eos(eos_engine, settings):
    params = SamplingParams(max_new_tokens=10, seed=7, num_samples=4, compile=True, **settings)
    first = eos_engine.generate(PROMPTS, params)
    again = eos_engine.generate(PROMPTS, params)
    other = eos_engine.generate(PROMPTS, dataclasses.replace(params, seed=6))
    assert_same_batch(first, again)
    assert not torch.equal(other.response_ids, first.response_ids)
    lengths = first.response_lengths
    assert lengths.min() < lengths.max(), "EOS at varied lengths"
    assert first.ended_with_eos.any()
    pad, stops = eos_engine.tokenizer.pad_token_id, torch.tensor(eos_engine.stop_ids)
    for row, length in enumerate(lengths.tolist()):
        ids = first.response_ids[row]
        assert (ids[length:] == pad).all()
        assert not torch.isin(ids[: length - 1], stops).any()  # cut at the first EOS
        assert bool(torch.isin(ids[length - 1], stops)) == bool(first.ended_with_eos[row])
    # log-probs are the teacher-forced pass's over the sampled tokens
    forced = teacher_forcing.response_logprobs(
        eos_engine.model,
        first.prompt_ids,
        first.prompt_mask,
        first.response_ids,
        first.response_mask,
        temperature=params.logp_temperature,
    )
    torch.testing.assert_close(first.logps, forced, atol=1e-5, rtol=0)


def test_exponential_race_draws_each_token_with_its_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.049, 0.001, 0.0])
    draws = 200_000
    torch.manual_seed(0)
    counts = torch.bincount(compiled.exponential_race(probs.expand(draws, -1)), minlength=6)
    assert counts[5] == 0, "a token of probability 0 was drawn"
    expected = probs[:5] * draws
    chi_square = float(((counts[:5] - expected) ** 2 / expected).sum())
    assert chi_square < 23.0  # chi-square, 4 degrees of freedom: P(> 23) < 1e-4


def test_exponential_race_never_draws_a_token_of_probability_zero(monkeypatch):
    # U = 0 for every token (E = −log U infinite unclamped, so p / E = 0 for all and argmax
    # would return column 0, a filtered-out token): the clamp keeps E finite
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: torch.zeros(*args, **kwargs))
    probs = torch.tensor([[0.0, 0.2, 0.8], [0.0, 1.0, 0.0]])
    assert compiled.exponential_race(probs).tolist() == [2, 1]


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
    # each prompt given 4 times with one sample each: every row is prefilled on its own, not
    # copied from its group's, and the rows (so their random draws) are those of 4 samples
    params = SamplingParams(max_new_tokens=10, seed=5, temperature=1.0, compile=True)
    repeated = [prompt for prompt in PROMPTS for _ in range(4)]
    unshared = eos_engine.generate(repeated, params)
    shared = eos_engine.generate(PROMPTS, dataclasses.replace(params, num_samples=4))
    assert torch.equal(unshared.prompt_index, torch.arange(12))
    assert_same_batch(shared, unshared, logps_atol=1e-5)


def test_compiled_step_compiles_once_per_shape_not_per_token(eos_engine):
    import torch._dynamo.utils as dynamo_utils

    params = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=4, compile=True)
    eos_engine.generate(PROMPTS, params)  # compiles this batch shape if nothing did yet
    dynamo_utils.counters.clear()
    eos_engine.generate(PROMPTS, dataclasses.replace(params, seed=1, max_new_tokens=20))
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 0, "recompiled for a new length"


def test_models_without_a_static_cache_fall_back_to_generate(eos_engine, monkeypatch):
    monkeypatch.setattr(compiled, "has_plain_head", lambda model: False)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, compile=True)
    ids = torch.ones((1, 3), dtype=torch.long)
    cannot = compiled.compiled_generate(eos_engine.model, ids, ids, ids[0], params, [2], 0)
    assert cannot is None
    eager = eos_engine.generate(PROMPTS, dataclasses.replace(params, compile=False))
    assert_same_batch(eager, eos_engine.generate(PROMPTS, params))


def test_sampling_config_passes_compile_through():
    assert SamplingConfig().params(1, 0).compile is False
    assert SamplingConfig(compile=True).params(1, 0).compile is True


@pytest.mark.parametrize("compile", [False, True], ids=["generate", "compiled"])
def test_sampling_ignores_mixed_precision(eos_engine, monkeypatch, compile):
    """Under bf16 autocast (the Trainer's mixed precision) decoding still runs in the model's
    own fp32: the same tokens (and, compiled, the same graph: autocast is part of what dynamo
    guards, so a bf16 step would compile another); only the teacher-forced log-prob pass
    after decoding runs in bf16."""
    import torch._dynamo.utils as dynamo_utils

    steps = []
    forward = type(eos_engine.model).forward

    def recorded(self, *args, **kwargs):
        steps.append(torch.is_autocast_enabled("cpu"))
        return forward(self, *args, **kwargs)

    params = SamplingParams(max_new_tokens=10, temperature=0.0, num_samples=4, compile=compile)
    plain = eos_engine.generate(PROMPTS, params)
    dynamo_utils.counters.clear()
    if not compile:  # generate's steps (a compiled step is one graph, not a Python call)
        monkeypatch.setattr(type(eos_engine.model), "forward", recorded)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = eos_engine.generate(PROMPTS, params)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 0
    assert torch.equal(mixed.response_ids, plain.response_ids)
    if not compile:
        assert steps and not any(steps)
    assert not torch.equal(mixed.logps, plain.logps)  # that pass did run in bf16
    torch.testing.assert_close(mixed.logps, plain.logps, atol=0.1, rtol=0)


def test_compiled_sampling_refuses_overflowing_logits(eos_engine):
    """Finite weights grown huge overflow the logits: the compiled loop stops at the first
    step (exponential_race would pick tokens from NaNs without a word)."""
    from rlhf.models.finite import NonFiniteError

    norm = eos_engine.model.model.norm.weight
    saved = norm.detach().clone()
    params = SamplingParams(max_new_tokens=10, seed=5, num_samples=4, compile=True)
    try:
        with torch.no_grad():
            norm.fill_(3e38)
        with pytest.raises(NonFiniteError, match="sampling: the model's next-token logits"):
            eos_engine.generate(PROMPTS, params)
    finally:
        with torch.no_grad():
            norm.copy_(saved)
