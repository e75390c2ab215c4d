"""The train–inference mismatch without an engine: the corrections' weights against hand
numbers, their place in the experience, the settings' checks, and the weights a sync sends."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rlhf.losses.importance import mismatch_metrics, ratio_band_mask, truncated_importance_weights

# three tokens of one row: π_train / π_engine = 0.5/0.25, 0.2/0.4, 0.9/0.3 = 2, 0.5, 3;
# the third is padding
TRAIN = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
ENGINE = torch.log(torch.tensor([[0.25, 0.4, 0.3]]))
MASK = torch.tensor([[1, 1, 0]])


def test_truncated_importance_weights_by_hand():
    weights = truncated_importance_weights(TRAIN, ENGINE, MASK, cap=1.5)
    assert torch.allclose(weights, torch.tensor([[1.5, 0.5, 0.0]]))  # 2 capped at 1.5
    weights = truncated_importance_weights(TRAIN, ENGINE, torch.ones(1, 3), cap=2.5)
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 2.5]]))


def test_band_mask_by_hand():
    assert torch.equal(ratio_band_mask(TRAIN, ENGINE, MASK, 0.6, 2.5), torch.tensor([[1.0, 0, 0]]))
    assert torch.equal(
        ratio_band_mask(TRAIN, ENGINE, MASK, 0.45, 2.05), torch.tensor([[1.0, 1, 0]])
    )
    with pytest.raises(ValueError, match="must hold 1"):
        ratio_band_mask(TRAIN, ENGINE, MASK, 1.2, 2.0)


def test_mismatch_metrics_by_hand():
    metrics = mismatch_metrics(TRAIN, ENGINE, MASK)
    log2 = math.log(2)
    assert metrics["logp_abs_mean"] == pytest.approx(log2)
    assert metrics["logp_abs_max"] == pytest.approx(log2)
    # k3 = r − 1 − log r: (2 − 1 − log 2 + 0.5 − 1 + log 2) / 2 = 0.25
    assert metrics["kl"] == pytest.approx(0.25)
    assert metrics["kl_k1"] == pytest.approx(0.0, abs=1e-7)  # −log 2 and +log 2
    same = mismatch_metrics(TRAIN, TRAIN, MASK)
    assert same == {"logp_abs_mean": 0.0, "logp_abs_max": 0.0, "kl": 0.0, "kl_k1": 0.0}
    with pytest.raises(ValueError, match=r"one \[B, R\] shape"):
        mismatch_metrics(TRAIN, ENGINE[:, :2], MASK)


def rollout(engine_logps):
    from rlhf.rollout.types import RolloutBatch

    return RolloutBatch(
        prompt_ids=torch.tensor([[5, 6]]),
        prompt_mask=torch.ones(1, 2, dtype=torch.long),
        response_ids=torch.tensor([[7, 8, 0]]),
        response_mask=MASK,
        logps=TRAIN,
        ended_with_eos=torch.tensor([True]),
        prompt_index=torch.tensor([0]),
        response_texts=["x"],
        engine_logps=engine_logps,
    )


def experience(batch, correction):
    from rlhf.online.experience import build_experience
    from rlhf.online.settings import MismatchSettings

    return build_experience(
        batch,
        torch.tensor([2.0]),  # one sequence advantage, spread over its tokens
        scores=torch.tensor([1.0]),
        ref_logps=None,
        kl_coef=0.0,
        max_new_tokens=3,
        logp_temperature=1.0,
        mismatch=MismatchSettings(correction=correction, is_cap=1.5, band=(0.6, 2.5)),
    )


def test_corrections_scale_each_tokens_advantage():
    batch = rollout(ENGINE)
    assert torch.allclose(experience(batch, "none").advantages, torch.tensor([[2.0, 2.0, 0.0]]))
    tis = experience(batch, "truncated_is")
    assert torch.allclose(tis.advantages, torch.tensor([[3.0, 1.0, 0.0]]))  # × [1.5, 0.5]
    assert tis.metrics["rollout_correction_weight_mean"] == pytest.approx(1.0)
    masked = experience(batch, "mask")
    assert torch.allclose(masked.advantages, torch.tensor([[2.0, 0.0, 0.0]]))
    assert masked.metrics["rollout_correction_zeroed"] == pytest.approx(0.5)
    assert masked.mask.tolist() == [[1.0, 0.0, 0.0]]  # the masked token leaves the loss
    assert tis.mask.tolist() == [[1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="needs the engine's sampling log-probs"):
        experience(rollout(None), "truncated_is")


def test_rollout_metrics_log_the_mismatch_and_the_engines_timings():
    from rlhf.online.phases import ReferenceTerm, rollout_metrics
    from rlhf.rewards.base import RewardOutput

    batch = rollout(ENGINE)
    batch.engine_stats = {"sync_seconds": 0.5}
    metrics = rollout_metrics(
        batch, RewardOutput(scores=torch.tensor([1.0])), ReferenceTerm(None, None, 0.0, False), 1
    )
    assert metrics["rollout_mismatch_kl"] == pytest.approx(0.25)
    assert metrics["rollout_engine_sync_seconds"] == 0.5
    plain = rollout_metrics(
        rollout(None),
        RewardOutput(scores=torch.tensor([1.0])),
        ReferenceTerm(None, None, 0.0, False),
        1,
    )
    assert not any(key.startswith("rollout_mismatch") for key in plain)


def test_a_correction_without_an_engine_copy_is_refused_at_load():
    from rlhf.config import ConfigError, load_config
    from rlhf.recipes.grpo import GRPOConfig
    from rlhf.recipes.registry import recipe

    preset = recipe("grpo").preset_file("tiny")
    with pytest.raises(ConfigError, match="hf engine samples from the trainer's own weights"):
        load_config(GRPOConfig, preset, ["mismatch.correction=truncated_is"])
    with pytest.raises(ConfigError, match="must hold 1"):
        load_config(GRPOConfig, preset, ["sampling.engine=vllm", "mismatch.band=[1.5, 2]"])
    with pytest.raises(ConfigError, match="top_p/top_k"):
        load_config(
            GRPOConfig,
            preset,
            ["sampling.engine=vllm", "mismatch.correction=mask", "sampling.top_k=5"],
        )
    from rlhf.recipes.gspo import GSPOConfig

    with pytest.raises(ConfigError, match="GSPO weighs whole sequences"):
        load_config(
            GSPOConfig,
            recipe("gspo").preset_file("tiny"),
            ["sampling.engine=vllm", "mismatch.correction=truncated_is"],
        )
    config = load_config(GRPOConfig, preset, ["sampling.engine=vllm", "mismatch.correction=mask"])
    assert config.sampling.vllm.placement == "process"


def test_checkpoint_weights_merge_lora_without_touching_the_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from rlhf.models.load import load_model
    from rlhf.models.weights import checkpoint_weights

    base = load_model(tiny_model_dir)
    plain = dict(checkpoint_weights(base))
    assert set(plain) == {name for name, _ in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    merged = dict(checkpoint_weights(model))
    assert set(merged) == set(plain)  # checkpoint names, no adapter factors
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[name], plain[name])
    # the merged weight gives the adapted layer's output
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.in_features)
    assert torch.allclose(layer(x), x @ merged[name].T, atol=1e-5)
    assert torch.equal(
        merged["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"]
    )


def test_weight_buckets_are_bounded_and_checksummed():
    from rlhf.rollout.vllm import weight_buckets
    from rlhf.rollout.vllm_runner import checksum

    weights = [(f"w{i}", torch.ones(256) * i) for i in range(10)]  # 1 KiB each in float32
    sent: dict = {}
    buckets = list(weight_buckets(weights, dtype=torch.bfloat16, max_bytes=1024, sent=sent))
    assert [len(bucket) for bucket in buckets] == [2, 2, 2, 2, 2]  # 512 B each in bf16
    assert all(t.dtype == torch.bfloat16 for bucket in buckets for _, t in bucket)
    assert sent["w3"] == checksum(torch.full((256,), 3.0, dtype=torch.bfloat16))
    assert sent["w3"] != sent["w4"]
    alone = list(weight_buckets([("big", torch.ones(1024))], dtype=torch.float32, max_bytes=16))
    assert len(alone) == 1  # a tensor larger than a bucket travels alone


def test_checksums_are_exact_and_catch_one_changed_element():
    from rlhf.rollout.vllm_runner import checksum

    weights = torch.randn(1001, 7)  # 7007 words, summed in whatever order
    assert checksum(weights) == checksum(weights.clone())
    altered = weights.clone()
    altered[500, 3] += 1e-6
    assert checksum(altered) != checksum(weights)
    assert checksum(weights.bfloat16()[:, :3]) == checksum(weights.bfloat16()[:, :3].clone())
    assert checksum(torch.tensor([1, 2, 3], dtype=torch.uint8))[0] == 1 + 2 + 3


def test_shared_buckets_round_trip_and_reuse_their_memory():
    from rlhf.rollout.shared_buckets import SharedBucketReader, SharedBucketWriter

    writer, reader = SharedBucketWriter(), SharedBucketReader()
    first = [
        ("a", torch.randn(3, 5)),
        ("b", torch.arange(7, dtype=torch.bfloat16)),
        ("c", torch.tensor(2.5)),
    ]
    received = reader.read(writer.write(first))
    path = writer.path
    second = [("d", torch.randn(4))]  # smaller: the same memory again
    received_second = reader.read(writer.write(second))
    assert writer.path == path
    for (name, sent), (got_name, got) in zip(
        first + second, received + received_second, strict=True
    ):
        assert name == got_name and got.dtype == sent.dtype and torch.equal(got, sent)
    larger = [("e", torch.randn(1000))]
    assert torch.equal(reader.read(writer.write(larger))[0][1], larger[0][1])
    assert writer.path != path and not os.path.exists(path)  # grown: the old file removed
    writer.close()


def test_missing_engine_environment_and_no_vllm_are_one_line_errors(tmp_path, tiny_model_dir):
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.rollout.factory import build_engine
    from rlhf.rollout.vllm_config import VLLMConfig
    from rlhf.rollout.vllm_runner import EngineStartError

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, tokenizer=tokenizer)
    missing = VLLMConfig(python=str(tmp_path / "nowhere" / "python"))
    with pytest.raises(EngineStartError, match="does not exist; install it with `make vllm`"):
        build_engine(model, tokenizer, kind="vllm", vllm=missing)
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(EngineStartError, match="vLLM is not installed"):
            build_engine(model, tokenizer, kind="vllm", vllm=VLLMConfig(placement="trainer"))


def test_a_missing_engine_environment_stops_a_run_before_its_init_sft(tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app

    result = CliRunner().invoke(
        app,
        [
            "grpo",
            "--preset",
            "tiny",
            f"out={tmp_path / 'run'}",
            "sampling.engine=vllm",
            f"sampling.vllm.python={tmp_path / 'nowhere' / 'python'}",
        ],
    )
    assert result.exit_code != 0
    assert "does not exist; install it with `make vllm`" in result.output
    assert not (tmp_path / "run" / "init-sft").exists()  # nothing trained
