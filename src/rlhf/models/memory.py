"""Memory levers on a loaded model: activation checkpointing, a frozen copy in another dtype.

Activation checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost")
keeps only each transformer block's input in the forward pass and recomputes the block in the
backward pass: the activations held for a step shrink from ``layers × (≈ 20 H + 2·heads·T)``
values per token to about ``layers × H``, for roughly one more forward pass of compute.
"""

from __future__ import annotations

import copy
import logging

import torch

logger = logging.getLogger("rlhf.models")


def enable_activation_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint every transformer block of each Hugging Face model inside ``model`` (the
    model itself, the base model of a LoRA (peft) wrapper, a policy and a critic held in one
    module); returns how many models were switched.

    Non-reentrant checkpointing (``use_reentrant=False``): gradients reach LoRA adapters and
    any other trainable weight inside a block even when the block's input does not require
    gradients (the reentrant variant needs ``enable_input_require_grads`` for that), and
    keyword arguments pass through. Blocks checkpoint only in training mode with gradients on:
    generation, evaluation and reference passes run as before, with their KV cache.
    A :class:`ValueError` names a model whose architecture does not support it.
    """
    from transformers import PreTrainedModel

    switched: set[int] = set()  # ids of the modules inside a model already switched
    count = 0
    for module in model.modules():  # outermost first
        if id(module) in switched or not isinstance(module, PreTrainedModel):
            continue
        if not module.supports_gradient_checkpointing:
            raise ValueError(
                f"train.gradient_checkpointing: {type(module).__name__} does not support "
                "activation checkpointing; set it false"
            )
        options = {"use_reentrant": False}
        enable = getattr(module, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x's name; the old one warns
            enable(activation_checkpointing_kwargs=options)
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        switched.update(id(inner) for inner in module.modules())
        count += 1
    if count == 0:
        raise ValueError(
            "train.gradient_checkpointing: the model holds no Hugging Face model to checkpoint"
        )
    logger.info("activation checkpointing on (%d model(s))", count)
    return count


def activations_checkpointed(model: torch.nn.Module) -> bool:
    """Whether :func:`enable_activation_checkpointing` switched ``model`` (or a model in it)."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def frozen_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A deep copy of ``model`` for inference only (e.g. the reference π_ref), its floating
    point parameters cast to ``dtype`` when given, as ``from_pretrained(dtype=...)`` would load
    them: buffers such as the rotary frequencies stay float32 (cast, they would shift every
    position's angle). Tied weights stay tied; the copy never requires gradients."""
    duplicate = copy.deepcopy(model)
    if dtype is not None:
        for parameter in duplicate.parameters():  # a tied parameter is yielded once
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype)
    duplicate.eval()
    for parameter in duplicate.parameters():
        parameter.requires_grad_(False)
    return duplicate
