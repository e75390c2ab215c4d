"""Forward passes that compute the output layer only where it is needed.

A causal LM spends ``H·V`` multiply-adds per position on its output layer and the loss then
reads one entry of each ``[V]`` row. SFT trains on completion tokens only, so running the
output layer over the prompt positions is pure waste: we run the decoder, select the hidden
states at the positions that carry a loss, and apply the output layer to those alone.

This is exact for architectures whose logits are ``lm_head(final hidden state)``; models that
scale or soft-cap logits (Gemma 2/3, Cohere, ...) take the ordinary full forward instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, its training mode restored after (no dropout in a
    scoring pass, whatever the caller was doing)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@functools.cache
def _cache_argument(model_class: type) -> str:
    forward = getattr(model_class, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        parameters = {}
    return "cache" if "cache" in parameters else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword under which ``model``'s forward, and ``generate``, take a KV cache:
    ``cache`` where the forward has it (transformers 5.2x renamed ``past_key_values``, which
    then warns that it is deprecated), else ``past_key_values``."""
    return _cache_argument(type(unwrap(model)))


def position_limit(model: torch.nn.Module) -> int | None:
    """The longest sequence the model takes (its position table), when its config says."""
    positions = getattr(unwrap(model).config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) else None


def has_plain_head(model: torch.nn.Module) -> bool:
    base = unwrap(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in _PLAIN_HEAD_FAMILIES:
        return False
    # granite multiplies logits by a scale; treat any such setting as "not plain"
    scale = getattr(config, "logits_scaling", 1.0)
    return scale in (None, 1.0) and getattr(config, "final_logit_softcapping", None) is None


def shares_prompt_prefix(model: torch.nn.Module) -> bool:
    """Whether the model can read several sequences in one row after their shared prompt
    (:func:`rlhf.data.pairs.shared_prefix_rows`): a causal decoder whose attention kernel takes
    a custom 4-D mask (sdpa, eager), read either as a reward model at each sequence's last
    token (transformers' ``GenericForSequenceClassification``: a ``score`` head on the decoder
    named by ``base_model_prefix``) or as a causal LM whose logits are ``lm_head(hidden)``
    (:func:`has_plain_head`, so log-probs come from the decoder's hidden states)."""
    base = unwrap(model)
    implementation = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return False
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:  # transformers < 4.56
        return False
    return isinstance(base, GenericForSequenceClassification) or (
        has_plain_head(base) and base.get_output_embeddings() is not None
    )


def additive_attention_mask(
    model: torch.nn.Module, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """A custom 4-D bool mask [B, 1, T, T] (True = may attend, as
    :func:`rlhf.data.pairs.shared_prefix_rows` builds it) as an additive float mask of the
    model's dtype: 0 where a query may attend, the dtype's lowest value where not. Any other
    mask (2-D, None, already float) is returned as it is.

    transformers hands a 4-D mask to the attention kernel untouched, and its ``eager`` kernel
    *adds* the mask to the scores: a bool mask there adds 1 where it should block, and the
    packed layout silently attends across sequences. The float form means the same to every
    kernel (sdpa's CPU kernel is also faster with it than with a bool mask).
    """
    if attention_mask is None or attention_mask.ndim != 4 or attention_mask.dtype != torch.bool:
        return attention_mask
    embeddings = unwrap(model).get_input_embeddings()
    dtype = embeddings.weight.dtype if embeddings is not None else torch.float32
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=attention_mask.device)
    return torch.zeros((), dtype=dtype, device=attention_mask.device).where(attention_mask, blocked)


def decoder_hidden_states(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """Last hidden states [B, T, H] of the model's decoder stack (a 4-D bool
    ``attention_mask`` is made additive: :func:`additive_attention_mask`)."""
    base = unwrap(model)
    decoder = getattr(base, base.base_model_prefix)
    if "attention_mask" in inputs:
        inputs["attention_mask"] = additive_attention_mask(model, inputs["attention_mask"])
    return decoder(**inputs, use_cache=False).last_hidden_state


def label_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Log-probs [B, T] (float32) of ``labels`` [B, T] (already shifted: the token predicted
    at each position; -100 = none, giving 0 there).

    Plain-head architectures never hold the full ``[B, T, V]`` logits: the output layer runs
    on the labelled positions only (:func:`rlhf.models.logprobs.token_logprobs_from_hidden`);
    others take the ordinary forward and :func:`~rlhf.models.logprobs.selective_log_softmax`.
    ``attention_mask`` may be 2-D or a 4-D ``[B, 1, T, T]`` mask.
    """
    from rlhf.models.logprobs import selective_log_softmax, token_logprobs_from_hidden

    inputs = {
        "input_ids": input_ids,
        "attention_mask": additive_attention_mask(model, attention_mask),
        "position_ids": position_ids,
    }
    if has_plain_head(model):
        hidden = decoder_hidden_states(model, **inputs)  # [B, T, H]
        head = unwrap(model).get_output_embeddings()
        return token_logprobs_from_hidden(hidden, head, labels).float()
    logits = model(**inputs, use_cache=False).logits  # [B, T, V]
    valid = labels != -100
    token_logps = selective_log_softmax(logits, labels.masked_fill(~valid, 0))
    return torch.where(valid, token_logps, torch.zeros_like(token_logps)).float()


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
