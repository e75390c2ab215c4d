"""Tiny models built from scratch: a byte-level BPE tokenizer and a small Llama.

These are what the tests, the ``tiny`` recipe presets and the benchmarks train: a tokenizer
learnt in seconds from local text and a Llama-architecture model of a chosen size, saved as an
ordinary Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template) that plain ``transformers`` and vLLM read.

The defaults are the benchmarks' tiny Llama: hidden 256, 4 layers, 4 heads, MLP 688 and a
2,000-token vocabulary, about 4.2M parameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
# Trained first, so their ids are fixed: pad 0, bos 1, eos 2.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on ``texts``.

    The vocabulary holds the three special tokens ``<|pad|>`` (id 0), ``<|bos|>`` (1) and
    ``<|eos|>`` (2), all distinct, then the 256 byte symbols, then learnt merges, up to
    ``vocab_size`` in all (fewer when the text has too few frequent pairs). Being byte-level it
    encodes any string without an unknown token.

    The tokenizer adds **no** special tokens by itself: ``tokenizer(text)`` returns the text's
    tokens only. Our tokenisation writes BOS once, explicitly, so it is never doubled.
    Its ``chat_template`` is :data:`rlhf.data.chat.DEFAULT_CHAT_TEMPLATE`; the role markers in
    it (``<|user|>`` ...) are ordinary text, not special tokens. Padding is on the right.
    """
    from transformers import PreTrainedTokenizerFast

    from rlhf.data.chat import DEFAULT_CHAT_TEMPLATE

    smallest = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size: {vocab_size} is too small; a byte-level BPE vocabulary needs at least "
            f"{smallest} entries (3 special tokens + 256 bytes)"
        )
    tokenizer = train_byte_level_bpe(texts, vocab_size, SPECIAL_TOKENS, min_frequency)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = DEFAULT_CHAT_TEMPLATE
    return wrapped


def train_byte_level_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str], min_frequency: int
) -> Tokenizer:
    """The ``tokenizers`` backend of a byte-level BPE tokenizer trained on ``texts``: the
    ``special_tokens`` first (ids 0, 1, ...), the 256 byte symbols, then learnt merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps each token's character span exact (a leading space belongs to
    # the token that carries it); tokenisation finds the prompt/response seam through offsets.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def build_tiny_llama(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 688,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> LlamaForCausalLM:
    """A freshly initialised float32 Llama with the given size.

    Full multi-head attention (as many key/value heads as heads) and no dropout. The weights
    depend only on ``seed``; the global random state is left as it was. The special-token ids
    default to those of :func:`train_bpe_tokenizer`.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size: {hidden_size} is not divisible by num_heads={num_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        attention_dropout=0.0,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float()


def make_tiny_model(
    out_dir: str | os.PathLike[str],
    texts: Iterable[str],
    *,
    vocab_size: int = 2000,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 688,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    min_frequency: int = 2,
) -> Path:
    """Train a tokenizer on ``texts``, build a tiny Llama for it and save both to ``out_dir``.

    The model's vocabulary is the tokenizer's actual size (at most ``vocab_size``). Returns the
    folder, which loads with plain ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained``.
    """
    from rlhf.models.load import save_model

    tokenizer = train_bpe_tokenizer(texts, vocab_size, min_frequency=min_frequency)
    tokenizer.model_max_length = max_position_embeddings
    model = build_tiny_llama(
        len(tokenizer),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return save_model(model, tokenizer, out_dir)


def count_parameters(model: torch.nn.Module, non_embedding: bool = True) -> int:
    """Number of parameters; with ``non_embedding`` the input embeddings and output layer are
    left out (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", count N this way).

    Tied weights count once.
    """
    excluded: set[int] = set()
    if non_embedding:
        for getter in ("get_input_embeddings", "get_output_embeddings"):
            module = getattr(model, getter, lambda: None)()
            if module is not None:
                excluded.update(id(parameter) for parameter in module.parameters())
    # model.parameters() already yields a shared (tied) parameter once.
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
