"""Forward passes that compute the output layer only where it is needed.

A causal LM spends ``H·V`` multiply-adds per position on its output layer and the loss then
reads one entry of each ``[V]`` row. SFT trains on completion tokens only, so running the
output layer over the prompt positions is pure waste: we run the decoder, select the hidden
states at the positions that carry a loss, and apply the output layer to those alone.

This is exact for architectures whose logits are ``lm_head(final hidden state)``; models that
scale or soft-cap logits (Gemma 2/3, Cohere, ...) take the ordinary full forward instead.
"""

from __future__ import annotations

from typing import Any

import torch

# Families whose causal-LM head is exactly `lm_head(decoder(...).last_hidden_state)`.
_PLAIN_HEAD_FAMILIES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "olmo",
        "olmo2",
        "smollm3",
        "granite",
        "gpt2",
        "gpt_neox",
        "starcoder2",
        "stablelm",
        "opt",
    }
)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def has_plain_head(model: torch.nn.Module) -> bool:
    base = unwrap(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in _PLAIN_HEAD_FAMILIES:
        return False
    # granite multiplies logits by a scale; treat any such setting as "not plain"
    scale = getattr(config, "logits_scaling", 1.0)
    return scale in (None, 1.0) and getattr(config, "final_logit_softcapping", None) is None


def decoder_hidden_states(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """Last hidden states [B, T, H] of the model's decoder stack."""
    base = unwrap(model)
    decoder = getattr(base, base.base_model_prefix)
    return decoder(**inputs, use_cache=False).last_hidden_state


def logits_at(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    select: torch.Tensor,
) -> torch.Tensor:
    """Logits [N, V] at the N positions where ``select`` [B, T] is True (row-major order)."""
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
    }
    if has_plain_head(model):
        hidden = decoder_hidden_states(model, **inputs)
        head = unwrap(model).get_output_embeddings()
        return head(hidden[select])
    return model(**inputs, use_cache=False).logits[select]
