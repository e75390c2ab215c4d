"""Each prompt read once: shared-prompt prefill in sampling, shared-prompt forwards (log-probs,
values), and skipping the old log-prob pass when one optimiser step trains on a rollout. Each
shortcut must give the numbers of the long way, up to float rounding."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

import rlhf.models.teacher_forcing as teacher_forcing
import rlhf.rollout.compiled as compiled
from rlhf.online.experience import Experience
from rlhf.online.loss import policy_gradient_loss
from rlhf.online.phases import needs_old_logps
from rlhf.online.settings import KLSettings, RolloutSettings
from rlhf.online.settings import PolicyLossSettings as LossSettings
from rlhf.recipes import grpo
from rlhf.recipes.grpo import GRPOConfig, GRPOSettings
from rlhf.recipes.online_common import Prompts
from rlhf.rollout import HFGenerationEngine, SamplingParams

from .online_helpers import make_buffer, make_run

PROMPTS = [
    "What is 12 + 30?\n",
    "Once upon a time there was a little cat who liked to play. What is 99 - 1?\n",
    "Hi",
]


def sampled(engine, temperature=0.8, num_samples=4, seed=5):
    params = SamplingParams(
        max_new_tokens=10, temperature=temperature, num_samples=num_samples, seed=seed
    )
    batch = engine.generate(PROMPTS, params)
    assert batch.response_lengths.min() < batch.response_lengths.max()
    assert batch.prompt_mask[:, 0].min() == 0, "prompts should be left-padded"
    return batch


def test_shared_prefill_samples_the_tokens_of_plain_generate(eos_engine, monkeypatch):
    # the same seed gives the same tokens with and without the once-per-prompt prefill (exact
    # here; in general up to the rounding of a smaller prefill batch flipping a sample)
    calls = []
    original = compiled.shared_prompt_cache

    def counted(*args):
        cache = original(*args)
        calls.append(bool(cache))
        return cache

    monkeypatch.setattr(compiled, "shared_prompt_cache", counted)
    shared = sampled(eos_engine)
    assert calls == [True]
    monkeypatch.setattr(compiled, "shared_prompt_cache", lambda *args: {})
    plain = sampled(eos_engine)
    assert torch.equal(shared.response_ids, plain.response_ids)
    assert torch.equal(shared.ended_with_eos, plain.ended_with_eos)
    torch.testing.assert_close(shared.logps, plain.logps, atol=1e-5, rtol=0)


def test_shared_prefill_follows_chunks_that_split_a_prompts_rows(eos_engine, monkeypatch):
    # 3 prompts x 4 samples in chunks of 5 rows: groups cut across chunks still line up
    engine = HFGenerationEngine(eos_engine.model, eos_engine.tokenizer, batch_size=5)
    shared = sampled(engine)
    monkeypatch.setattr(compiled, "shared_prompt_cache", lambda *args: {})
    plain = sampled(engine)
    assert torch.equal(shared.response_ids, plain.response_ids)


def tensors(batch):
    return batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask


@pytest.fixture(params=["sdpa", "eager"])
def attention(request, eos_engine):
    """The engine's model with each attention kernel (eager adds a custom 4-D mask to the
    scores: the packed pass must hand it an additive mask, not a bool one)."""
    eos_engine.model.set_attn_implementation(request.param)
    yield request.param
    eos_engine.model.set_attn_implementation("sdpa")


def test_shared_prompt_logprobs_and_gradients_equal_the_unshared_ones(eos_engine, attention):
    model = eos_engine.model
    assert model.config._attn_implementation == attention
    batch = sampled(eos_engine)
    # a shuffled subset: groups of 1 to 4 rows, in any order; one row with no response token
    rows = torch.tensor([5, 0, 9, 2, 11, 6, 3])
    prompt_ids, prompt_mask, response_ids, response_mask = (t[rows] for t in tensors(batch))
    response_mask = response_mask.clone()
    response_mask[4] = 0
    groups = batch.prompt_index[rows]
    args = (model, prompt_ids, prompt_mask, response_ids, response_mask)
    weights = torch.randn(response_ids.shape, generator=torch.Generator().manual_seed(0))

    def run(**kwargs):
        model.zero_grad(set_to_none=True)
        logps = teacher_forcing.response_logprobs(*args, temperature=0.7, **kwargs)
        (logps * weights).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return logps.detach(), grads

    assert teacher_forcing.shared_prompt_chunks(model, groups, 16) is not None
    plain, plain_grads = run(batch_size=16)
    shared, shared_grads = run(batch_size=16, groups=groups)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    assert (shared[response_mask == 0] == 0).all()
    assert len(shared_grads) == len(plain_grads)
    for a, b in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # whole groups per chunk, however small the batch size
    chunked, _ = run(batch_size=2, groups=groups)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)


def test_rollout_logps_use_the_shared_pass_and_match_the_plain_one(eos_engine):
    batch = sampled(eos_engine)
    plain = teacher_forcing.response_logprobs(eos_engine.model, *tensors(batch), temperature=0.8)
    torch.testing.assert_close(batch.logps, plain, atol=1e-5, rtol=0)


def test_shared_prompt_values_equal_the_unshared_ones(eos_engine, tiny_model_dir):
    from rlhf.models.value import load_value_model, response_values

    critic = load_value_model(tiny_model_dir, eos_engine.tokenizer, seed=1)
    batch = sampled(eos_engine)
    groups = batch.prompt_index

    def run(**kwargs):
        critic.zero_grad(set_to_none=True)
        values = response_values(critic, *tensors(batch), **kwargs)
        values.square().sum().backward()
        grads = [p.grad.clone() for p in critic.parameters() if p.grad is not None]
        return values.detach(), grads

    plain, plain_grads = run(batch_size=64)
    shared, shared_grads = run(batch_size=64, groups=groups)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    for a, b in zip(shared_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_models_that_cannot_read_packed_rows_take_the_plain_pass(eos_engine, monkeypatch):
    batch = sampled(eos_engine)
    monkeypatch.setattr(teacher_forcing, "shares_prompt_prefix", lambda model: False)
    assert teacher_forcing.shared_prompt_chunks(eos_engine.model, batch.prompt_index, 8) is None
    # no group of two rows: nothing to share
    assert teacher_forcing.shared_prompt_chunks(eos_engine.model, torch.arange(5), 8) is None


# ------------------------------------------------------------------ skipping old log-probs


def test_when_old_logps_are_needed():
    loss_kl = KLSettings(coef=0.04, estimator="k3", in_reward=False)
    one = RolloutSettings(prompts_per_iteration=2, samples_per_prompt=4, ppo_epochs=1)
    assert not needs_old_logps(one, loss_kl, episodes=8, minibatch_size=8)
    # several steps per rollout: the ratio moves away from 1
    assert needs_old_logps(one, loss_kl, episodes=8, minibatch_size=4)
    two_epochs = one.model_copy(update={"ppo_epochs": 2})
    assert needs_old_logps(two_epochs, loss_kl, episodes=8, minibatch_size=8)
    # the KL in the reward and the adaptive coefficient read the rollout's KL
    assert needs_old_logps(one, KLSettings(coef=0.05), episodes=8, minibatch_size=8)
    assert not needs_old_logps(one, KLSettings(coef=0.0), episodes=8, minibatch_size=8)
    adaptive = loss_kl.model_copy(update={"target": 1.0})
    assert needs_old_logps(one, adaptive, episodes=8, minibatch_size=8)
    # advantages that read them (PPO's per-token KL rewards)
    assert needs_old_logps(one, loss_kl, episodes=8, minibatch_size=8, advantages_read_them=True)


def make_grpo_buffer(engine, reference, *, old_logps, kl):
    def reward(prompts, responses):
        return torch.tensor([float(len(r) % 3) for r in responses])

    run = make_run(
        (engine.model, engine.tokenizer),
        GRPOConfig,
        reference=reference,
        kl=kl,
        ppo_epochs=1,
        batch_size=12,
        sampling={"max_new_tokens": 10, "temperature": 0.8},
        rollout={"prompts_per_iteration": 3, "samples_per_prompt": 4, "ppo_epochs": 1},
        policy={"aggregation": "sequence"},
    )
    run.prompts, run.reward, run.old_logps = Prompts(PROMPTS), reward, old_logps
    return make_buffer(run, partial(grpo.make_experience, run, GRPOSettings()))


def test_skipping_old_logps_gives_the_same_loss_gradients_and_kl_metrics(eos_engine):
    from rlhf.models.reference import ReferenceModel

    model = eos_engine.model
    frozen = ReferenceModel.frozen(copy.deepcopy(model))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so the KL is not 0
        for parameter in frozen.module.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    kl = KLSettings(coef=0.1, estimator="k3", in_reward=False)
    batches = {}
    for old_logps in (True, False):
        buffer = make_grpo_buffer(eos_engine, frozen, old_logps=old_logps, kl=kl)
        batches[old_logps] = buffer.next_batch()
    kept, skipped = batches[True], batches[False]
    assert isinstance(skipped, Experience) and skipped.old_logps is None
    assert kept.old_logps is not None
    assert torch.equal(kept.response_ids, skipped.response_ids)  # same samples
    torch.testing.assert_close(kept.advantages, skipped.advantages)
    assert "rollout_kl" in kept.metrics and "rollout_kl" not in skipped.metrics

    settings = LossSettings(clip_eps=0.2, aggregation="sequence")
    results = {}
    for name, batch in (("kept", kept), ("skipped", skipped)):
        model.zero_grad(set_to_none=True)
        model.train()
        loss, metrics = policy_gradient_loss(model, batch, policy=settings, kl=kl)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[name] = (loss.detach(), metrics, grads)
    model.zero_grad(set_to_none=True)
    model.eval()
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = results["kept"], results["skipped"]
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert metrics_b["ratio"] == pytest.approx(1.0) and metrics_b["clip_frac"] == 0
    # the rollout's KL metrics, from the update's forward pass instead of the rollout's
    for key in ("rollout_kl", "rollout_kl_estimate"):
        assert metrics_b[key] == pytest.approx(metrics_a[key], abs=1e-4)


def test_the_kl_in_the_reward_refuses_a_rollout_without_old_logps(eos_engine):
    from rlhf.models.reference import ReferenceModel

    reference = ReferenceModel.frozen(copy.deepcopy(eos_engine.model))
    buffer = make_grpo_buffer(eos_engine, reference, old_logps=False, kl=KLSettings(coef=0.05))
    with pytest.raises(ValueError, match="needs the sampling policy's log-probs"):
        buffer.next_batch()


def test_reward_model_reads_repeated_prompts_once_with_the_same_scores(tiny_model_dir, monkeypatch):
    import rlhf.models.reward as reward_module
    from rlhf.models.load import load_tokenizer
    from rlhf.models.reward import RewardModel, init_reward_model

    tokenizer = load_tokenizer(tiny_model_dir)
    model = init_reward_model(tiny_model_dir, tokenizer, seed=2)
    scorer = RewardModel(model, tokenizer, gain=2.0, bias=0.5)
    # K samples per prompt on consecutive rows, a prompt seen once, a repeat further on
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 4 + [PROMPTS[2]] + [PROMPTS[0]] * 2
    responses = ["42", "41 or so", "", "98.", "It is 98", "98", "nine", "hello", "42", "4"]
    assert reward_module._consecutive_groups(prompts, 4) is not None
    shared = scorer.score(prompts, responses, batch_size=4)
    calls = []
    monkeypatch.setattr(reward_module, "shares_prompt_prefix", lambda m: calls.append(1) or False)
    plain = scorer.score(prompts, responses, batch_size=4)
    assert calls
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    assert reward_module._consecutive_groups(PROMPTS, 4) is None


def test_growing_kv_layer_holds_what_concatenation_would():
    layer = compiled.growing_kv_layer()(capacity=3)
    keys, values = torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4)
    out_k, out_v = layer.update(keys, values)
    assert torch.equal(out_k, keys) and layer.get_seq_length() == 2
    layer.batch_select_indices(torch.tensor([1, 1, 0]))  # rows repeated for their samples
    expected_k, expected_v = keys[[1, 1, 0]], values[[1, 1, 0]]
    for _ in range(3):  # past the capacity: the buffer grows
        step_k, step_v = torch.randn(3, 1, 1, 4), torch.randn(3, 1, 1, 4)
        out_k, out_v = layer.update(step_k, step_v)
        expected_k = torch.cat([expected_k, step_k], dim=-2)
        expected_v = torch.cat([expected_v, step_v], dim=-2)
        assert torch.equal(out_k, expected_k) and torch.equal(out_v, expected_v)
    assert layer.get_seq_length() == 5
