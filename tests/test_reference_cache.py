"""The reference log-prob cache: fingerprints, hits that skip the reference, a separate
reference model, and resume with the reference recomputed from the initial weights."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.preference import PairText, tokenize_pairs
from rlhf.models.load import LoraSpec, load_model, save_model
from rlhf.models.reference import (
    folder_digest,
    parameters_digest,
    read_cache,
    reference_fingerprint,
)
from rlhf.recipes.dpo import DPOConfig, run_dpo


def config(tmp_path, model_dir, out="run", **overrides):
    base = {
        "out": str(tmp_path / out),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "reference": {"cache_dir": str(tmp_path / "cache")},
        "data": {
            "train": "builtin:arithmetic-preferences?n=48",
            "eval_fraction": 0.25,
            "max_length": 128,
        },
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "schedule": "constant"},
        "eval": {"kl_prompts": 0},
    }
    dotted = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return load_config(DPOConfig, None, dotted, base=base)


def forbid(monkeypatch, name):
    import rlhf.recipes.offline_common as offline

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{name} ran on a cache hit")

    monkeypatch.setattr(offline, name, forbidden)


def count_loads(monkeypatch, path, loads: list[int] | None = None) -> None:
    """Count loads of the model at ``path`` in ``loads`` (None: a load fails the test)."""
    import rlhf.models.load

    load = rlhf.models.load.load_model

    def counted(name_or_path, *args, **kwargs):
        if str(name_or_path) == str(path):
            assert loads is not None, f"{path} was loaded on a cache hit"
            loads.append(1)
        return load(name_or_path, *args, **kwargs)

    monkeypatch.setattr(rlhf.models.load, "load_model", counted)


def test_second_run_reads_the_cache_and_runs_no_reference(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    first = run_dpo(config(tmp_path, tiny_model_dir, out="a"))
    [cached] = (tmp_path / "cache").glob("*.safetensors")
    assert read_cache(cached, 48) is not None
    forbid(monkeypatch, "compute_reference_logps")
    with caplog.at_level(logging.INFO, logger="rlhf"):
        second = run_dpo(config(tmp_path, tiny_model_dir, out="b"))
    assert "cache hit" in caplog.text
    assert [row["loss"] for row in second.metrics] == [row["loss"] for row in first.metrics]
    # another max_length is other data: a new entry, not a stale hit
    monkeypatch.undo()
    run_dpo(config(tmp_path, tiny_model_dir, out="c", **{"data.max_length": 20}))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_a_torn_cache_file_is_recomputed(tiny_model_dir, tmp_path, caplog):
    run_dpo(config(tmp_path, tiny_model_dir, out="a"))
    [cached] = (tmp_path / "cache").glob("*.safetensors")
    cached.write_bytes(b"not a safetensors file")
    with caplog.at_level(logging.INFO, logger="rlhf"):
        result = run_dpo(config(tmp_path, tiny_model_dir, out="b"))
    assert "unreadable reference cache" in caplog.text
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_fingerprint_follows_weights_data_and_length(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = load_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    pairs = [PairText("What is 1 + 2?\n", "1 + 2 = 3", "1 + 2 = 4")]
    examples = tokenize_pairs(tiny_tokenizer, pairs, 64)
    weights = parameters_digest(model)
    key = reference_fingerprint(weights, tiny_tokenizer, examples, 64, "cpu/float32")["key"]
    assert key == reference_fingerprint(weights, tiny_tokenizer, examples, 64, "cpu/float32")["key"]
    other_data = tokenize_pairs(tiny_tokenizer, [PairText("What is 1 + 2?\n", "3", "4")], 64)
    for changed in (
        reference_fingerprint(weights, tiny_tokenizer, other_data, 64, "cpu/float32"),
        reference_fingerprint(weights, tiny_tokenizer, examples, 32, "cpu/float32"),
        reference_fingerprint(weights, tiny_tokenizer, examples, 64, "cuda/torch.bfloat16"),
    ):
        assert changed["key"] != key
    # LoRA adapters are not the reference: the base model's digest is unchanged by them
    lora = load_model(tiny_model_dir, tokenizer=tiny_tokenizer, lora=LoraSpec(r=4))
    assert parameters_digest(lora) == weights
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert parameters_digest(model) != weights
    # a folder hashes by its files, without loading the model
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert folder_digest(copy) == folder_digest(tiny_model_dir)
    save_model(model, tiny_tokenizer, copy)
    assert folder_digest(copy) != folder_digest(tiny_model_dir)


def test_separate_reference_model_is_loaded_once_then_cached(
    tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch
):
    # a reference that differs from the policy: a perturbed copy of the tiny model
    other = load_model(tiny_model_dir, tokenizer=tiny_tokenizer)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference_dir = save_model(other, tiny_tokenizer, tmp_path / "reference")
    overrides = {"reference.path": str(reference_dir)}
    loads: list[int] = []
    count_loads(monkeypatch, reference_dir, loads)
    first = run_dpo(
        config(tmp_path, tiny_model_dir, out="a", **overrides, **{"eval.kl_prompts": 2})
    )
    assert first.metrics[0]["loss"] != pytest.approx(math.log(2), abs=1e-3)
    assert math.isfinite(first.metrics[-1]["eval_kl"]) and first.metrics[-1]["eval_kl"] > 0
    assert len(loads) == 1  # kept for the KL evaluation and reused for the reference pass
    monkeypatch.undo()
    count_loads(monkeypatch, reference_dir)  # a hit neither loads nor runs it
    forbid(monkeypatch, "compute_reference_logps")
    second = run_dpo(config(tmp_path, tiny_model_dir, out="b", **overrides))
    assert second.metrics[0]["loss"] == pytest.approx(first.metrics[0]["loss"], abs=1e-6)
    # the policy's own folder as reference.path is the default reference: ln 2 at step 0
    monkeypatch.undo()
    same = run_dpo(
        config(tmp_path, tiny_model_dir, out="c", **{"reference.path": str(tiny_model_dir)})
    )
    assert same.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_resume_recomputes_the_reference_from_the_initial_weights(tiny_model_dir, tmp_path):
    straight = run_dpo(config(tmp_path, tiny_model_dir, out="a", **{"train.max_steps": 4}))
    expected = [row["loss"] for row in straight.metrics]
    run_dpo(config(tmp_path, tiny_model_dir, out="b", **{"train.save_every": 2}))
    shutil.rmtree(tmp_path / "cache")  # the resumed run must rebuild π_ref, not from step 2
    resumed = run_dpo(config(tmp_path, tiny_model_dir, out="b", **{"train.max_steps": 4}), True)
    assert [row["loss"] for row in resumed.metrics] == pytest.approx(expected[2:], abs=1e-6)
