"""The tiny-model factory: tokenizer training, model building, the saved folder."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlhf.models.tiny import (
    build_tiny_llama,
    count_parameters,
    make_tiny_model,
    train_bpe_tokenizer,
)

WORDS = (
    *("the", "a", "little", "big", "dog", "cat", "bird", "sun", "tree", "house", "girl", "boy"),
    *("ran", "jumped", "saw", "liked", "ate", "played", "happy", "sad", "red", "blue", "green"),
    *("under", "over", "with", "and", "then", "because", "very", "quickly", "slowly"),
)


def corpus(lines: int = 150, seed: int = 0) -> list[str]:
    """A few KB of simple sentences."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(lines)
    ]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(corpus(), vocab_size=300)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model",
        corpus(),
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def test_tokenizer_special_tokens_are_distinct(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<|pad|>",
        "<|bos|>",
        "<|eos|>",
    )
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 300
    assert tokenizer.padding_side == "right"


def test_tokenizer_adds_no_special_tokens_and_round_trips(tokenizer):
    text = "the dog ran. Ünïcode 😀 and\ttabs"
    ids = tokenizer(text)["input_ids"]
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == text  # byte-level: nothing unknown, nothing lost
    assert len(tokenizer("the dog ran")["input_ids"]) < len("the dog ran")  # merges were learnt
    assert tokenizer("ran<|eos|>")["input_ids"][-1] == tokenizer.eos_token_id


def test_tokenizer_chat_template(tokenizer):
    from rlhf.data.chat import DEFAULT_CHAT_TEMPLATE

    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tokenize=False,
    )
    assert "hi" in text and text.rstrip().endswith("hello<|eos|>")


def test_tokenizer_rejects_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(corpus(), vocab_size=100)


def test_default_size_is_the_benchmark_tiny_llama():
    with torch.device("meta"):  # shapes only: no time spent initialising weights
        model = build_tiny_llama(2000)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 4, 4)
    assert (config.intermediate_size, config.vocab_size) == (688, 2000)
    assert model.dtype == torch.float32
    total = count_parameters(model, non_embedding=False)
    assert 4_100_000 < total < 4_300_000
    assert total - count_parameters(model) == 2 * 2000 * 256  # embeddings + untied output layer


def test_count_parameters_counts_tied_weights_once():
    model = build_tiny_llama(300, hidden_size=32, num_layers=1, tie_word_embeddings=True)
    assert count_parameters(model, non_embedding=False) - count_parameters(model) == 300 * 32


def test_build_is_seeded_and_leaves_global_rng_alone():
    size = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_tiny_llama(300, seed=5, **size)
    assert torch.equal(torch.rand(1), expected_next)
    second = build_tiny_llama(300, seed=5, **size)
    other = build_tiny_llama(300, seed=6, **size)
    weights = first.model.embed_tokens.weight
    assert torch.equal(weights, second.model.embed_tokens.weight)
    assert not torch.equal(weights, other.model.embed_tokens.weight)


def test_build_rejects_heads_that_do_not_divide_hidden():
    with pytest.raises(ValueError, match="num_heads"):
        build_tiny_llama(300, hidden_size=30, num_heads=4)


def test_saved_folder_is_a_plain_hugging_face_model(tiny_folder):
    names = {path.name for path in tiny_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    tokenizer_config = json.loads((tiny_folder / "tokenizer_config.json").read_text())
    from rlhf.data.chat import DEFAULT_CHAT_TEMPLATE

    assert tokenizer_config["chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 2)


def test_saved_folder_reloads_with_plain_auto_classes_and_generates(tiny_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_folder)
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 2
    assert tokenizer.chat_template is not None
    assert model.config.vocab_size == len(tokenizer)
    assert (
        tokenizer("the dog")["input_ids"]
        == tokenizer("the dog", add_special_tokens=False)["input_ids"]
    )
    prompt = torch.tensor([[tokenizer.bos_token_id, *tokenizer("the dog")["input_ids"]]])
    output = model.generate(
        prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert output.shape[0] == 1 and output.shape[1] > prompt.shape[1]
    assert isinstance(tokenizer.decode(output[0]), str)
