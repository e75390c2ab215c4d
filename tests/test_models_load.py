"""Loading, LoRA, dropout and saving models: tiny models built here, and stories260K."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from rlhf.models.load import (
    LoraSpec,
    ModelLoadError,
    disable_dropout,
    load_model,
    load_tokenizer,
    save_model,
    tokenizer_adds_bos,
)
from rlhf.models.tiny import build_tiny_llama, make_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"


def corpus(lines: int = 120, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words = ("once", "upon", "a", "time", "dog", "cat", "ran", "home", "happy", "the", "sun")
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + "." for _ in range(lines)
    ]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_model(
        tmp_path_factory.mktemp("load") / "tiny",
        corpus(),
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def sample_ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (2, 7), generator=torch.Generator().manual_seed(seed))


def logits_of(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_load_tiny_model_and_tokenizer(tiny_folder):
    tokenizer = load_tokenizer(tiny_folder)
    model = load_model(tiny_folder, tokenizer=tokenizer)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert not tokenizer_adds_bos(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # nothing added
    assert model.dtype == torch.float32 and not model.training
    assert model.config._attn_implementation == "sdpa"


def test_load_model_dtype_and_attention(tiny_folder):
    model = load_model(tiny_folder, dtype="bfloat16", attn_implementation="eager")
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="dtype: unknown dtype 'float8'"):
        load_model(tiny_folder, dtype="float8")


def test_custom_4d_masks_reach_the_kernel_additive_in_the_models_dtype(tiny_folder):
    from rlhf.models.forward import additive_attention_mask

    model = load_model(tiny_folder, dtype="bfloat16", attn_implementation="eager")
    allowed = torch.tensor([[True, False], [True, True]])[None, None]  # [1, 1, 2, 2]
    additive = additive_attention_mask(model, allowed)
    assert additive.dtype == torch.bfloat16
    assert additive[0, 0].tolist() == [[0.0, torch.finfo(torch.bfloat16).min], [0.0, 0.0]]
    padding = torch.ones(1, 2, dtype=torch.long)  # 2-D masks are transformers' to expand
    assert additive_attention_mask(model, padding) is padding
    assert additive_attention_mask(model, None) is None
    assert additive_attention_mask(model, additive) is additive  # already additive


def test_load_tokenizer_replaces_eos_padding(tiny_folder, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.pad_token_id is not None
    assert reloaded.pad_token_id != reloaded.eos_token_id
    assert reloaded.padding_side == "right"


@pytest.mark.parametrize("missing", ["/no/such/model-folder", "./no-such-model", "~/nope/x.gguf"])
def test_missing_model_is_a_friendly_error(missing):
    with pytest.raises(ModelLoadError, match="no such file or folder") as caught:
        load_model(missing)
    assert Path(missing).name in str(caught.value)
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_tokenizer(missing)


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"no config\.json") as caught:
        load_model(tmp_path)
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(ModelLoadError, match="no tokenizer in this folder"):
        load_tokenizer(tmp_path)
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(tmp_path / "notes.txt")


def test_broken_checkpoint_names_path_and_cause(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="could not load the model") as caught:
        load_model(broken)
    assert str(broken) in str(caught.value)
    assert caught.value.__cause__ is not None  # the original error stays attached


def test_gguf_without_the_gguf_package(tiny_folder, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "gguf" else real_find_spec(name, *args),
    )
    gguf = tmp_path / "model-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    for call in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match=r"pip install 'rlhf\[gguf\]'") as caught:
            call(gguf)  # the .gguf path itself
        assert "model-Q4_K_M.gguf" in str(caught.value)
        with pytest.raises(ModelLoadError, match=r"pip install 'rlhf\[gguf\]'"):
            call(tmp_path, gguf_file=gguf.name)  # folder + file name, as transformers takes it
    with pytest.raises(ModelLoadError, match=r"no GGUF file 'other\.gguf'"):
        load_model(tmp_path, gguf_file="other.gguf")


def test_disable_dropout_zeroes_modules_configs_and_attention():
    model = build_tiny_llama(300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model.config.attention_dropout = 0.5
    attention = model.model.layers[0].self_attn
    attention.attention_dropout = 0.5
    model.extra = torch.nn.Dropout(0.3)
    model.train()
    disable_dropout(model)
    assert model.config.attention_dropout == 0.0
    assert attention.attention_dropout == 0.0
    assert model.extra.p == 0.0
    input_ids = sample_ids(300)
    torch.testing.assert_close(logits_of(model, input_ids), logits_of(model, input_ids))


def test_load_model_disables_dropout_by_default(tiny_folder, tmp_path):
    folder = tmp_path / "dropout"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["attention_dropout"] = 0.4
    (folder / "config.json").write_text(json.dumps(config))

    model = load_model(folder, attn_implementation="eager")
    assert model.config.attention_dropout == 0.0
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in model.model.layers)
    kept = load_model(folder, disable_dropout=False)
    assert kept.model.layers[0].self_attn.attention_dropout == 0.4


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_trains_adapters_only_and_merged_save_matches(tiny_folder, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_folder)
    model = load_model(tiny_folder, tokenizer=tokenizer, lora=LoraSpec(r=4, alpha=8))
    assert isinstance(model, PeftModel)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(name.endswith("q_proj.base_layer.weight") for name in frozen)
    assert not any("lm_head.lora" in name for name in trainable)  # all-linear spares the output

    # lora_B starts at zero; give the adapters a non-zero update so merging has an effect.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    input_ids = sample_ids(len(tokenizer))
    wrapped_logits = logits_of(model, input_ids)
    with model.disable_adapter():
        assert not torch.allclose(logits_of(model, input_ids), wrapped_logits)

    merged = save_model(model, tokenizer, tmp_path / "merged", merge_lora=True)
    assert (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert not isinstance(plain, PeftModel)
    torch.testing.assert_close(logits_of(plain, input_ids), wrapped_logits, atol=1e-5, rtol=1e-5)
    # merging worked on a copy: the model being trained still has its adapters
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(logits_of(model, input_ids), wrapped_logits)
    assert any("lora_A" in name for name, _ in model.named_parameters())

    adapters = save_model(model, tokenizer, tmp_path / "adapters")
    assert (adapters / "adapter_config.json").is_file()
    assert (adapters / "adapter_model.safetensors").is_file()
    assert "AutoPeftModelForCausalLM" in (adapters / "README.md").read_text()
    assert (adapters / "tokenizer.json").is_file()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_lora_with_named_targets(tiny_folder):
    model = load_model(tiny_folder, lora=LoraSpec(r=2, target_modules=["q_proj", "v_proj"]))
    trainable = {
        name.split(".lora_")[0].rsplit(".", 1)[-1]
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"q_proj", "v_proj"}


@pytest.mark.skipif(
    not (STORIES / "config.json").is_file(),
    reason=f"the pretrained stories260K model is not at {STORIES} (shared folder absent)",
)
def test_stories260k_load_save_reload_round_trip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = load_tokenizer(STORIES)
    # stories260K has no pad token: it pads with <unk>, a special token that is neither EOS
    # nor BOS, so its vocabulary stays the base's 512 tokens
    assert tokenizer.pad_token == "<unk>"
    assert len(tokenizer) == 512 and tokenizer.pad_token_id == 0
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    # its LlamaTokenizer writes <s> by itself, whatever add_bos_token says
    assert tokenizer_adds_bos(tokenizer)
    encoded = tokenizer("Once upon a time")["input_ids"]
    assert encoded[0] == tokenizer.bos_token_id and encoded.count(tokenizer.bos_token_id) == 1

    model = load_model(STORIES, tokenizer=tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == 512
    assert model.config.pad_token_id == 0 and model.generation_config.pad_token_id == 0
    input_ids = torch.tensor([encoded])
    before = logits_of(model, input_ids)

    saved = save_model(model, tokenizer, tmp_path / "stories")
    assert (saved / "model.safetensors").is_file()
    plain_tokenizer = AutoTokenizer.from_pretrained(saved)
    plain_model = AutoModelForCausalLM.from_pretrained(saved)
    assert plain_tokenizer("Once upon a time")["input_ids"] == encoded
    assert plain_tokenizer.pad_token_id == 0
    assert AutoModelForCausalLM.from_pretrained(STORIES).config.vocab_size == 512
    assert plain_model.config.vocab_size == 512
    torch.testing.assert_close(logits_of(plain_model, input_ids), before)
    generated = plain_model.generate(
        input_ids, max_new_tokens=8, do_sample=False, pad_token_id=plain_tokenizer.pad_token_id
    )
    assert generated.shape[1] > input_ids.shape[1]
    assert plain_tokenizer.decode(generated[0], skip_special_tokens=True).startswith(
        "Once upon a time"
    )
    # and our loader reads our own output back as it is
    assert len(load_tokenizer(saved)) == 512
