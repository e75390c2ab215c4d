"""Memory and disk levers (issue 15, item 8): activation checkpointing, a bf16 reference, the
AdamW implementations, and checkpoints without optimiser state. Each lever changes what it
should and leaves training working; nothing here measures time or memory
(benchmarks/bench_memory.py does)."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch

from rlhf.engine.trainer import latest_checkpoint
from rlhf.models.memory import enable_activation_checkpointing, frozen_copy
from tests.test_cli_online import SHRINK
from tests.test_dpo import config as dpo_config
from tests.test_engine import StopAt, fresh_model, make_trainer


def lm_batch(vocab: int, rows: int = 3, tokens: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, tokens), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # a padded row
    return ids, mask


def loss_and_grads(model, ids, mask):
    """An LM loss on ``model`` in training mode and its gradients by parameter name."""
    model.train()
    model.zero_grad(set_to_none=True)
    labels = ids.masked_fill(mask == 0, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


class CallCounter:
    """Counts calls of a module (a forward hook): a checkpointed block's attention runs twice
    per step, in the forward pass and again in the backward pass."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def first_attention(model):
    return next(m for name, m in model.named_modules() if name.endswith("layers.0.self_attn"))


def assert_same_loss_and_gradients(plain, checkpointed, forward):
    attention = CallCounter(first_attention(checkpointed))
    loss_a, grads_a = forward(plain)
    loss_b, grads_b = forward(checkpointed)
    assert attention.calls == 2  # recomputed in the backward pass: checkpointing is on
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0 or "bias" in name, name
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ activation checkpointing


def test_checkpointing_gives_the_loss_and_gradients_of_the_plain_model(tiny_model_dir):
    plain, checkpointed = fresh_model(tiny_model_dir), fresh_model(tiny_model_dir)
    assert enable_activation_checkpointing(checkpointed) == 1
    ids, mask = lm_batch(plain.config.vocab_size)
    assert_same_loss_and_gradients(plain, checkpointed, lambda m: loss_and_grads(m, ids, mask))


def test_sft_loss_under_checkpointing_is_the_plain_one(tiny_model_dir, tiny_tokenizer, examples):
    """The SFT loss checkpoints its output layer too (chunks recomputed in the backward
    pass): the same NLL and gradients."""
    from rlhf.recipes.lm import lm_loss, make_loader

    loader = make_loader(
        examples, batch_size=8, pad_token_id=tiny_tokenizer.pad_token_id, packing=False,
        max_length=128, seed=0,
    )  # fmt: skip
    batch = loader.next_batch()

    def forward(model):
        model.train()
        model.zero_grad(set_to_none=True)
        loss, metrics = lm_loss(model, batch)
        loss.backward()
        assert metrics["nll_sum"] == pytest.approx(loss.item())
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = fresh_model(tiny_model_dir), fresh_model(tiny_model_dir)
    enable_activation_checkpointing(checkpointed)
    assert_same_loss_and_gradients(plain, checkpointed, forward)


def test_checkpointing_reaches_lora_adapters(tiny_model_dir):
    from rlhf.models.load import LoraSpec, load_model

    plain = load_model(str(tiny_model_dir), lora=LoraSpec(r=4, alpha=8))
    with torch.no_grad():  # B starts at 0: give the adapters an output so A gets a gradient
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    checkpointed = copy.deepcopy(plain)
    enable_activation_checkpointing(checkpointed)
    ids, mask = lm_batch(plain.config.vocab_size)

    def forward(model):
        loss, grads = loss_and_grads(model, ids, mask)
        assert all("lora_" in name for name in grads)  # the base stays frozen
        return loss, grads

    assert_same_loss_and_gradients(plain, checkpointed, forward)


def test_checkpointing_covers_a_reward_model_and_a_policy_with_its_critic(
    tiny_model_dir, tiny_tokenizer
):
    from rlhf.models.reward import init_reward_model, reward_logits
    from rlhf.models.value import load_value_model
    from rlhf.recipes.ppo import ActorCritic

    ids, mask = lm_batch(len(tiny_tokenizer))

    def reward_forward(model):
        model.train()
        model.zero_grad(set_to_none=True)
        loss = reward_logits(model, ids, mask).square().sum()
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = init_reward_model(str(tiny_model_dir), tiny_tokenizer)
    checkpointed = init_reward_model(str(tiny_model_dir), tiny_tokenizer)
    enable_activation_checkpointing(checkpointed)
    assert_same_loss_and_gradients(plain, checkpointed, reward_forward)

    # one module holding two models (PPO's policy and critic): both are switched
    pair = ActorCritic(
        fresh_model(tiny_model_dir), load_value_model(str(tiny_model_dir), tiny_tokenizer)
    )
    assert enable_activation_checkpointing(pair) == 2
    critic = CallCounter(first_attention(pair.value))
    reward_forward(pair.value)
    assert critic.calls == 2


def test_a_run_with_checkpointing_follows_the_run_without(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    runs = {}
    for on in (False, True):
        trainer = make_trainer(
            fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / str(on),
            max_steps=3, gradient_checkpointing=on,
        )  # fmt: skip
        runs[on] = [row["loss"] for row in trainer.train().history]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_dpo_with_checkpointing_and_a_live_bf16_reference_trains(tiny_model_dir, tmp_path):
    overrides = {"train.max_steps": 2, "reference.precompute": False}
    plain = run_dpo_with(tmp_path / "plain", tiny_model_dir, overrides)
    levers = run_dpo_with(
        tmp_path / "levers",
        tiny_model_dir,
        overrides | {"train.gradient_checkpointing": True, "reference.dtype": "bfloat16"},
    )
    assert levers.metrics[0]["loss"] == pytest.approx(math.log(2), abs=2e-2)  # bf16 rounding
    assert [row["loss"] for row in levers.metrics] == pytest.approx(
        [row["loss"] for row in plain.metrics], abs=2e-2
    )


def run_dpo_with(out, model_dir, overrides):
    from rlhf.recipes.dpo import run_dpo

    return run_dpo(dpo_config(out, model_dir, **overrides))


# ------------------------------------------------------------------ a bf16 reference


def test_a_bf16_reference_copy_gives_log_probs_close_to_the_fp32_ones(tiny_model_dir):
    from rlhf.models.forward import label_logprobs

    model = fresh_model(tiny_model_dir)
    reference = frozen_copy(model, torch.bfloat16)
    params = dict(reference.named_parameters())
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in params.values())
    # rotary frequencies stay float32, as from_pretrained(dtype=bfloat16) keeps them
    assert all(b.dtype == torch.float32 for n, b in reference.named_buffers() if "inv_freq" in n)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the policy is untouched
    ids, mask = lm_batch(model.config.vocab_size, rows=4, tokens=24, seed=3)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], 1)
    labels = labels.masked_fill(mask == 0, -100)
    with torch.no_grad():
        full = label_logprobs(model, ids, mask, None, labels)
        half = label_logprobs(reference, ids, mask, None, labels)
    assert half.dtype == torch.float32  # accumulated in float32 whatever the weights
    assert (half - full).abs().max() < 0.05
    assert (half.sum(-1) - full.sum(-1)).abs().max() < 0.05 * (labels != -100).sum(-1).max()
    assert not torch.equal(half, full)


def test_reference_dtype_loads_a_separate_reference_in_bf16(tiny_model_dir, tmp_path):
    from rlhf.recipes.common import kept_reference

    for dtype, expected in ((None, torch.float32), ("bfloat16", torch.bfloat16)):
        cfg = dpo_config(
            tmp_path,
            tiny_model_dir,
            **{"reference.path": str(tiny_model_dir), "reference.dtype": dtype},
        )
        reference = kept_reference(cfg.reference, cfg.model, fresh_model(tiny_model_dir), None)
        assert {p.dtype for p in reference.module.parameters()} == {expected}


def test_precomputed_bf16_and_fp32_references_are_cached_apart(tiny_model_dir, tmp_path):
    shared = {
        "train.max_steps": 1,
        "reference.path": str(tiny_model_dir),
        "reference.cache_dir": str(tmp_path / "cache"),
    }
    full = run_dpo_with(tmp_path / "a", tiny_model_dir, shared)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    half = run_dpo_with(tmp_path / "b", tiny_model_dir, shared | {"reference.dtype": "bfloat16"})
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # not the fp32 values
    assert full.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert half.metrics[0]["loss"] == pytest.approx(math.log(2), abs=2e-2)


# ------------------------------------------------------------------ the optimiser


def one_update(tiny_tokenizer, examples, out, optimizer, model=None):
    """The change of every weight over two steps of ``optimizer`` (lr 1e-3)."""
    model = model if model is not None else bigger_model(tiny_tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(
        model, examples, tiny_tokenizer, out, max_steps=2, warmup_steps=0, lr=1e-3,
        optimizer=optimizer, save_every=0,
    )  # fmt: skip
    trainer.train()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}, trainer


def bigger_model(tokenizer):
    """A one-block Llama whose attention and MLP weights hold >= 4,096 values: the size from
    which the 8-bit optimiser quantises a tensor's moments."""
    from rlhf.models.tiny import build_tiny_llama

    return build_tiny_llama(
        len(tokenizer), hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip


def test_fused_and_foreach_adamw_make_the_same_update(tiny_tokenizer, examples, tmp_path):
    fused, trainer = one_update(tiny_tokenizer, examples, tmp_path / "f", "adamw_fused")
    assert all(group["fused"] for group in trainer.optimizer.param_groups)
    foreach, trainer = one_update(tiny_tokenizer, examples, tmp_path / "e", "adamw_foreach")
    assert not any(group["fused"] for group in trainer.optimizer.param_groups)
    for name, delta in fused.items():
        assert delta.abs().max() > 0, name
        torch.testing.assert_close(foreach[name], delta, rtol=1e-4, atol=1e-7, msg=name)


def test_8bit_adamw_follows_adamw_and_resumes(tiny_tokenizer, examples, tmp_path):
    pytest.importorskip("torchao")
    # the update is compiled per tensor shape on first use; eager gives the same numbers
    with torch.compiler.set_stance("force_eager"):
        low, trainer = one_update(tiny_tokenizer, examples, tmp_path / "8", "adamw_8bit")
        full, _ = one_update(tiny_tokenizer, examples, tmp_path / "f", "adamw_fused")
        params = dict(trainer.model.named_parameters())
        quantised = set()
        for name, delta in full.items():
            kinds = {type(v).__name__ for v in trainer.optimizer.state[params[name]].values()}
            if "OptimState8bit" in kinds:
                quantised.add(name)
                # the moments' 8-bit rounding: each update within 1% (of its norm) of AdamW's
                assert (low[name] - delta).norm() < 0.01 * delta.norm(), name
            else:
                torch.testing.assert_close(low[name], delta, rtol=1e-4, atol=1e-7, msg=name)
        assert "model.layers.0.mlp.up_proj.weight" in quantised
        # the embeddings and output layer keep float32 moments (rare tokens' updates explode)
        assert not quantised & {"model.embed_tokens.weight", "lm_head.weight"}

        def trainer_8bit(out):
            return make_trainer(
                bigger_model(tiny_tokenizer), examples, tiny_tokenizer, out, max_steps=4,
                optimizer="adamw_8bit", save_every=2,
            )  # fmt: skip

        expected = [row["loss"] for row in trainer_8bit(tmp_path / "s").train().history]
        stopped = trainer_8bit(tmp_path / "r")
        stopped.callbacks.append(StopAt(3))
        with pytest.raises(KeyboardInterrupt):
            stopped.train()
        resumed = trainer_8bit(tmp_path / "r")
        history = resumed.train(resume_from=latest_checkpoint(tmp_path / "r")).history
    # the 8-bit moments survive the checkpoint: the resumed run is the uninterrupted one
    assert [row["loss"] for row in history] == pytest.approx(expected[2:], rel=1e-6)


def test_8bit_adamw_without_torchao_fails_at_config_time(tiny_model_dir, tmp_path, monkeypatch):
    import rlhf.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "has_8bit_adamw", lambda: False)
    with pytest.raises(ValueError, match=r"(?s)train\.optimizer.*rlhf\[optim8bit\]"):
        dpo_config(tmp_path, tiny_model_dir, **{"train.optimizer": "adamw_8bit"})


# ------------------------------------------------------------------ checkpoints on disk


def files(folder):
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()
    }


def exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, out, **overrides):
    from rlhf.recipes.lm import exporter

    model = fresh_model(tiny_model_dir)
    trainer = make_trainer(model, examples, tiny_tokenizer, out, **overrides)
    trainer.export = exporter(model, tiny_tokenizer)
    return trainer


def test_exported_weights_are_not_saved_twice_and_resume_exactly(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    straight = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path / "a")
    expected = [row["loss"] for row in straight.train().history]
    checkpoint = latest_checkpoint(tmp_path / "a")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    names = {n for n, p in straight.model.named_parameters() if p.requires_grad}
    assert set(state["exported_weights"]) == names  # a full fine-tune: every weight
    from safetensors.torch import load_file

    assert load_file(checkpoint / "trainable.safetensors") == {}
    sizes = files(checkpoint)
    weights = sizes["model/model.safetensors"]
    assert sizes["optimizer.pt"] > 1.9 * weights  # two moments per weight

    stopped = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path / "b")
    stopped.callbacks.append(StopAt(5))
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    resumed = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path / "b")
    history = resumed.train(resume_from=latest_checkpoint(tmp_path / "b")).history
    assert [row["loss"] for row in history] == pytest.approx(expected[3:], rel=1e-6, abs=1e-7)


def test_a_torn_exported_model_falls_back_to_the_previous_checkpoint(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, caplog
):
    stopped = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path, save_every=2)
    stopped.callbacks.append(StopAt(5))
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    newest = latest_checkpoint(tmp_path)
    (newest / "model" / "model.safetensors").write_bytes(b"\0" * 40)
    resumed = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path, save_every=2)
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        resumed.train(resume_from=newest)
    assert f"{newest}/model" in caplog.text
    assert "resumed from the previous complete checkpoint" in caplog.text


def test_except_final_drops_the_optimiser_from_the_last_checkpoint_only(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    run = exporting_trainer(
        tiny_model_dir, tiny_tokenizer, examples, tmp_path / "run", save_optimizer="except_final"
    )
    run.train()
    final = latest_checkpoint(tmp_path / "run")
    earlier = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[0]
    assert final.name == "step-0000006" and earlier.name == "step-0000003"
    assert not (final / "optimizer.pt").exists() and (earlier / "optimizer.pt").is_file()
    assert sum(files(final).values()) < sum(files(earlier).values()) / 2

    always = exporting_trainer(tiny_model_dir, tiny_tokenizer, examples, tmp_path / "always")
    always.train()
    assert (latest_checkpoint(tmp_path / "always") / "optimizer.pt").is_file()


def test_resuming_without_optimiser_state_warns_and_restarts_the_moments(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, caplog
):
    straight = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "a")
    expected = straight.train().history

    def never(out):
        return make_trainer(
            fresh_model(tiny_model_dir), examples, tiny_tokenizer, out, save_optimizer="never"
        )

    stopped = never(tmp_path / "b")
    stopped.callbacks.append(StopAt(5))
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert not (checkpoint / "optimizer.pt").exists()
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        history = never(tmp_path / "b").train(resume_from=checkpoint).history
    assert "without the optimiser state" in caplog.text and "not exactly" in caplog.text
    # the weights, schedule and data position are restored: the first resumed step's loss and
    # learning rate are the uninterrupted run's; the update then differs (fresh moments)
    assert len(history) == 3
    assert history[0]["loss"] == pytest.approx(expected[3]["loss"], rel=1e-6)
    assert [row["lr"] for row in history] == pytest.approx([row["lr"] for row in expected[3:]])
    assert history[1]["loss"] != pytest.approx(expected[4]["loss"], rel=1e-7)
    assert all(math.isfinite(row["loss"]) for row in history)


# ------------------------------------------------------------------ through the CLI


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("rm", ["train.max_steps=3"]),
        # policy + critic trained with checkpointing, a bf16 frozen reference
        ("ppo", [*SHRINK, "reference.dtype=bfloat16"]),
    ],
)
def test_recipes_run_with_every_lever_through_the_cli(recipe, extra, tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app

    out = tmp_path / recipe
    levers = [
        "train.gradient_checkpointing=true",
        "train.optimizer=adamw_foreach",
        "train.save_optimizer=except_final",
    ]
    result = CliRunner().invoke(
        app,
        [recipe, "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false",
         *extra, *levers],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    final = latest_checkpoint(out)
    assert final is not None and not (final / "optimizer.pt").exists()
    assert (out / "model" / "config.json").is_file()
