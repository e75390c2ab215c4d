"""Regional compilation: ``torch.compile`` each transformer block, not the whole model.

The blocks of a decoder are identical, so the compiler traces one and reuses the code for the
rest (compile time does not grow with depth), while everything around them — embedding,
selecting the positions that carry a loss, the output layer — stays eager and free to have
data-dependent shapes. On CPU this fuses the element-wise work of RMSNorm, rotary embeddings
and SwiGLU, which otherwise costs as much time as the matrix products in a small model.
"""

from __future__ import annotations

import logging

import torch

from rlhf.models.forward import unwrap

logger = logging.getLogger("rlhf")


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The list of transformer blocks (the longest ``ModuleList`` matching the layer count)."""
    base = unwrap(model)
    layers = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    candidates = [
        module
        for module in base.modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers
    ]
    return candidates[0] if candidates else None


def compile_blocks(model: torch.nn.Module) -> bool:
    """Compile each block in place (parameter names unchanged); False if none were found."""
    blocks = decoder_blocks(model)
    if blocks is None:
        logger.warning("compile: no transformer blocks found; training uncompiled")
        return False
    for block in blocks:
        block.compile(dynamic=None)
    base = unwrap(model)
    final_norm = getattr(getattr(base, base.base_model_prefix, None), "norm", None)
    if isinstance(final_norm, torch.nn.Module):
        final_norm.compile(dynamic=None)
    return True
