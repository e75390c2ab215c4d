"""A GGUF source trains, checkpoints and exports as a plain model.

The GGUF file is written here with the ``gguf`` package (llama.cpp's layout, Q8_0 linear
layers) from a SmolLM2-like tiny Llama built in code: tests/smol_like.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.conftest import TINY_SIZES, sample_texts
from tests.smol_like import IM_END, make_smol_like, write_llama_gguf

pytest.importorskip("gguf")

GGUF = "smol.Q8_0.gguf"


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory) -> Path:
    base = make_smol_like(tmp_path_factory.mktemp("smol") / "base", sample_texts(), **TINY_SIZES)
    folder = tmp_path_factory.mktemp("gguf")
    write_llama_gguf(base, folder / GGUF)
    return folder


def test_gguf_loads_as_a_plain_model_that_saves(gguf_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.models.load import load_model, load_tokenizer, save_model

    tokenizer = load_tokenizer(gguf_folder, gguf_file=GGUF)
    model = load_model(gguf_folder, gguf_file=GGUF, tokenizer=tokenizer)
    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.get_input_embeddings().weight.shape[0] == 400  # the file's vocabulary
    saved = save_model(model, tokenizer, tmp_path / "plain")
    plain = AutoModelForCausalLM.from_pretrained(saved)
    for name, tensor in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], tensor), name
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())


def test_gguf_round_trips_through_sft_and_export(gguf_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.cli import app
    from rlhf.models.load import load_model

    out = tmp_path / "run"
    config = {
        "out": str(out),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(gguf_folder), "gguf_file": GGUF},
        "data": {"train": "builtin:arithmetic?n=64", "eval_fraction": 0, "max_length": 48},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "save_every": 2},
    }
    (tmp_path / "sft.yaml").write_text(json.dumps(config))  # JSON is YAML
    result = CliRunner().invoke(app, ["sft", "--config", str(tmp_path / "sft.yaml")])
    assert result.exit_code == 0, result.output

    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000004"]  # none .partial
    exported = out / "model"
    for folder in (checkpoints[-1] / "model", exported):
        plain = AutoModelForCausalLM.from_pretrained(folder)  # no gguf_file, no quantizer
        assert plain.config.vocab_size == 400
        assert getattr(plain.config, "quantization_config", None) is None
    # the export holds the trained weights (those of the last checkpoint), float32 safetensors
    trained = load_file(exported / "model.safetensors")
    final = load_file(checkpoints[-1] / "model" / "model.safetensors")
    assert trained.keys() == final.keys()
    assert all(torch.equal(trained[k], final[k]) for k in trained)
    assert all(t.dtype == torch.float32 for t in trained.values())
    start = load_model(gguf_folder, gguf_file=GGUF).state_dict()
    assert not all(torch.equal(trained[k], start[k]) for k in trained)  # it did train
    # and with its tokenizer: pad is the vocabulary's <|endoftext|>, EOS stays <|im_end|>
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|endoftext|>", IM_END)
    assert len(tokenizer) == 400


def test_a_reward_model_starts_from_a_gguf_file(gguf_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.reward import init_reward_model

    tokenizer = load_tokenizer(gguf_folder, gguf_file=GGUF)
    model = init_reward_model(gguf_folder, tokenizer, gguf_file=GGUF)
    assert getattr(model, "hf_quantizer", None) is None
    saved = save_model(model, tokenizer, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(saved)
    assert plain.config.num_labels == 1 and plain.config.vocab_size == 400
    assert plain.config.pad_token_id == tokenizer.pad_token_id == 0


def test_no_token_beyond_the_files_vocabulary(tiny_model_dir, tmp_path):
    # transformers builds a byte-level GGUF tokenizer that lacks <|endoftext|> (Llama 3's
    # files, or this tiny model's) with that token added after the file's vocabulary
    from transformers import AutoTokenizer

    from rlhf.models.load import load_model, load_tokenizer, save_model

    size = len(AutoTokenizer.from_pretrained(tiny_model_dir))
    write_llama_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    assert len(AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")) == size + 1
    tokenizer = load_tokenizer(tmp_path / "tiny.gguf")
    assert len(tokenizer) == size and "<|endoftext|>" not in tokenizer.get_vocab()
    model = load_model(tmp_path / "tiny.gguf", tokenizer=tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == size
    saved = save_model(model, tokenizer, tmp_path / "plain")
    assert len(AutoTokenizer.from_pretrained(saved)) == size
