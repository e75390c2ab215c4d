"""DPO recipe: batch layouts, completion-only log-probs, step-0 loss, accumulation, every loss
through the recipe, SimPO without a reference, LoRA with the adapter-disabled reference, chat
data and KTO."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_config
from rlhf.data.preference import (
    PairText,
    collate_pairs,
    collate_pairs_shared_prompt,
    tokenize_pairs,
)
from rlhf.data.records import Message
from rlhf.losses.preference import PREFERENCE_LOSSES
from rlhf.models.forward import shares_prompt_prefix
from rlhf.models.load import load_model
from rlhf.models.reference import pair_logps
from rlhf.recipes.dpo import DPOConfig, run_dpo
from rlhf.recipes.kto import KTOConfig, run_kto


def user(text):
    return (Message("user", text),)


def assistant(text):
    return (Message("assistant", text),)


PAIRS = [
    PairText("What is 47 + 38?\n", "47 + 38 = 85", "47 + 38 = 84"),  # completions share a start
    PairText("Hi", " there, friend.", " no."),
    PairText("A much longer prompt about the sea, the harbor and the boats.", " Yes.", " Never!"),
    PairText(user("What is 2 + 2?"), assistant("4"), assistant("5, surely")),  # chat template
]


def by_hand(model, tokenizer, pair):
    """log π(completion | prompt) of each completion, one full forward per sequence, summed
    over the completion's tokens read off the text (independent of the batching code)."""
    from rlhf.data.tokenize import tokenize_prompt_response

    out = []
    for completion in (pair.first, pair.second):
        ids, start = tokenize_prompt_response(tokenizer, pair.prompt, completion)
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # [T, V]
        logps = logits.log_softmax(-1)
        out.append(sum(float(logps[t - 1, ids[t]]) for t in range(start, len(ids))))
    return out


def test_both_layouts_give_the_completion_log_probs_and_gradients(tiny_model_dir, tiny_tokenizer):
    model = load_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    assert shares_prompt_prefix(model)
    examples = tokenize_pairs(tiny_tokenizer, PAIRS, 128)
    assert [e.index for e in examples] == [0, 1, 2, 3]
    pad = tiny_tokenizer.pad_token_id
    plain, shared = collate_pairs(examples, pad), collate_pairs_shared_prompt(examples, pad)
    assert plain.input_ids.shape[0] == 8 and shared.input_ids.shape[0] == 4
    assert shared.attention_mask.ndim == 4 and shared.num_tokens < plain.num_tokens
    assert torch.equal(plain.completion_tokens, shared.completion_tokens)

    expected = plain_logps = pair_logps(model, plain)  # [P, 2]
    plain_logps.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared_logps = pair_logps(model, shared)
    shared_logps.sum().backward()
    torch.testing.assert_close(shared_logps, expected, atol=1e-5, rtol=1e-5)
    for grad, parameter in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        hand = torch.tensor(
            [by_hand(model, tiny_tokenizer, pair) for pair in PAIRS], dtype=torch.float64
        )
    torch.testing.assert_close(expected.detach().double(), hand, atol=1e-4, rtol=1e-5)


def test_completion_tokens_exclude_the_prompt_and_count_the_eos(tiny_tokenizer):
    [example] = tokenize_pairs(tiny_tokenizer, PAIRS[:1], 128)
    chosen, start = example.sequences[0], example.starts[0]
    assert tiny_tokenizer.decode(chosen[start:], skip_special_tokens=True) == "47 + 38 = 85"
    assert chosen[-1] == tiny_tokenizer.eos_token_id
    assert example.sequences[0][:start] == example.sequences[1][:start]  # one prompt
    # a pair identical after truncation is dropped, not trained on as ln 2
    same = PairText("x" * 50, " a long shared answer", " a long shared answer!")
    assert tokenize_pairs(tiny_tokenizer, [same], 4) == []


# ------------------------------------------------------------------------------ the recipe


def config(tmp_path, model_dir, **overrides):
    data = {"train": "builtin:arithmetic-preferences?n=64", "eval_fraction": 0.25}
    base = {
        "out": str(tmp_path / "run"),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "reference": {"cache_dir": str(tmp_path / "cache")},
        "data": data | {"max_length": 48},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0},
        "eval": {"kl_prompts": 0},
    }
    dotted = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return load_config(DPOConfig, None, dotted, base=base)


def test_loss_at_step_zero_is_ln_2(tiny_model_dir, tmp_path):
    result = run_dpo(config(tmp_path, tiny_model_dir, **{"train.max_steps": 1}))
    first = result.metrics[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["pairs"] == 4 and first["margin_sum"] == pytest.approx(0.0, abs=1e-4)
    assert "eval_accuracy" in result.metrics[-1] and "eval_loss" in result.metrics[-1]
    assert (result.model_dir / "model.safetensors").is_file()


def test_accumulation_4_x_2_gives_the_update_of_batch_8(tiny_model_dir, tmp_path):
    common = {"train.max_steps": 1, "data.group_by_length": False, "data.eval_fraction": 0.0}
    whole = run_dpo(config(tmp_path / "a", tiny_model_dir, **common, **{"train.batch_size": 8}))
    split = run_dpo(
        config(
            tmp_path / "b",
            tiny_model_dir,
            **common,
            **{"train.batch_size": 2, "train.grad_accum": 4},
        )
    )
    assert whole.metrics[0]["pairs"] == split.metrics[0]["pairs"] == 8
    a = load_file(whole.model_dir / "model.safetensors")
    b = load_file(split.model_dir / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[name], initial[name]) for name in a)  # it did move
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
def test_every_loss_runs_a_step_through_the_recipe(name, tiny_model_dir, tmp_path):
    result = run_dpo(config(tmp_path, tiny_model_dir, **{"loss.name": name, "train.max_steps": 1}))
    row = result.metrics[-1]
    assert math.isfinite(row["loss"]) and row["pairs"] == 4
    assert math.isfinite(row["eval_loss"]) and 0 <= row["eval_accuracy"] <= 1


def test_simpo_never_loads_or_runs_a_reference(tiny_model_dir, tmp_path, monkeypatch):
    import rlhf.recipes.offline_common as offline
    from rlhf.models.reference import ReferenceModel

    def forbidden(*args, **kwargs):
        raise AssertionError("a reference-free loss touched the reference")

    for helper in ("precompute_reference", "kept_reference", "_load_reference"):
        monkeypatch.setattr(offline, helper, forbidden)
    monkeypatch.setattr(ReferenceModel, "__init__", forbidden)
    result = run_dpo(
        config(
            tmp_path,
            tiny_model_dir,
            **{"loss.name": "simpo", "eval.kl_prompts": 4, "reference.precompute": False},
        )
    )
    assert result.final_step == 2 and "eval_kl" not in result.metrics[-1]
    assert not (tmp_path / "cache").exists()


def test_lora_uses_the_disabled_adapter_as_reference(tiny_model_dir, tmp_path, monkeypatch):
    from rlhf.models.reference import ReferenceModel

    def no_second_model(*args, **kwargs):
        raise AssertionError("LoRA needs no second model")

    monkeypatch.setattr(ReferenceModel, "frozen", no_second_model)
    cfg = config(
        tmp_path,
        tiny_model_dir,
        **{
            "model.lora": {"r": 4, "alpha": 8},
            "train.max_steps": 3,
            "train.lr": 1e-2,
            "eval.kl_prompts": 3,
            "eval.max_new_tokens": 6,
        },
    )
    result = run_dpo(cfg)
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    final = result.metrics[-1]
    assert math.isfinite(final["eval_kl"]) and final["eval_kl"] != 0.0
    assert final["eval_response_tokens"] > 0
    # the export is a plain causal LM with the adapters merged
    assert (result.model_dir / "model.safetensors").is_file()
    assert not (result.model_dir / "adapter_config.json").exists()

    # per-step reference (precompute off) through the disabled adapter: step 0 is ln 2 too
    live = run_dpo(
        config(
            tmp_path / "live",
            tiny_model_dir,
            **{"model.lora": {"r": 4}, "train.max_steps": 1, "reference.precompute": False},
        )
    )
    assert live.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_kl_with_the_default_reference_is_zero_before_training_moves(tiny_model_dir, tmp_path):
    # lr tiny: the policy barely moves, so its sampled KL to the frozen copy is ~0
    cfg = config(
        tmp_path,
        tiny_model_dir,
        **{"train.max_steps": 1, "train.lr": 1e-9, "eval.kl_prompts": 4, "eval.max_new_tokens": 8},
    )
    final = run_dpo(cfg).metrics[-1]
    assert abs(final["eval_kl"]) < 1e-3 and final["eval_kl_stderr"] < 1e-3


def test_a_gold_reward_scores_the_kl_samples_along_training(tiny_model_dir, tmp_path, monkeypatch):
    def longer_is_better(prompts, responses, metadata=None):
        return torch.tensor([float(len(response)) for response in responses])

    cfg = config(
        tmp_path,
        tiny_model_dir,
        **{
            "train.max_steps": 2,
            "train.eval_every": 1,
            "eval.kl_prompts": 4,
            "eval.max_new_tokens": 8,
            "eval.gold_reward": {"rule": "arithmetic"},
        },
    )
    calls = []

    def build(spec):
        calls.append(spec)
        return longer_is_better

    monkeypatch.setattr("rlhf.recipes.offline_common.build_reward", build)
    rows = [row for row in run_dpo(cfg).metrics if "eval_kl" in row]
    assert calls and calls[0].rule == "arithmetic"
    assert len(rows) >= 2  # every evaluation: gold and KL of the same samples
    for row in rows:
        # the mean length of the sampled responses, which the KL samples also report
        assert row["eval_gold_reward"] > 0 and row["eval_gold_reward_stderr"] >= 0


def test_conversational_pairs_train_with_the_chat_template(tiny_model_dir, tmp_path):
    rows = []
    for a in range(10, 40):
        prompt = [{"role": "user", "content": f"What is {a} + 1?"}]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": f"{a + 1}"}],
                "rejected": [{"role": "assistant", "content": f"{a + 2}"}],
            }
        )
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run_dpo(config(tmp_path, tiny_model_dir, **{"data.train": str(source)}))
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.metrics[-1]["eval_pairs"] > 0


def test_kto_starts_at_half_per_example(tiny_model_dir, tmp_path):
    base = {
        "out": str(tmp_path / "kto"),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(tiny_model_dir)},
        "reference": {"cache_dir": str(tmp_path / "cache")},
        "data": {
            "train": "builtin:arithmetic-binary?n=64",
            "eval_fraction": 0.25,
            "max_length": 128,
        },
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
        "eval": {"kl_prompts": 2, "max_new_tokens": 4},
    }
    result = run_kto(load_config(KTOConfig, None, [], base=base))
    first = result.metrics[0]
    # r = 0 and z_ref = 0 at initialisation: each example costs λ·(1 − σ(0)) = ½
    assert first["loss"] == pytest.approx(0.5, abs=1e-5)
    assert first["examples"] == 4
    final = result.metrics[-1]
    assert math.isfinite(final["eval_loss"]) and math.isfinite(final["eval_kl"])
