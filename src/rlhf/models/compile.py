"""Regional compilation: ``torch.compile`` each transformer block, not the whole model.

The blocks of a decoder are identical, so the compiler traces one and reuses the code for the
rest (compile time does not grow with depth), while everything around them — embedding,
selecting the positions that carry a loss, the output layer — stays eager and free to have
data-dependent shapes. On CPU this fuses the element-wise work of RMSNorm, rotary embeddings
and SwiGLU, which otherwise costs as much time as the matrix products in a small model.

Decoding is compiled differently (:func:`compiled_decode_step`): the whole one-token forward,
over a static KV cache, so that its shapes do not change from one generated token to the next.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from rlhf.models.forward import cache_argument as forward_cache_argument
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


BLOCK_RECOMPILE_LIMIT = 64  # graphs dynamo may keep for one block's code (see compile_blocks)


def compile_blocks(model: torch.nn.Module) -> bool:
    """Compile each block in place (parameter names unchanged) of every transformers model in
    ``model``: the model itself, or each one a wrapper holds (PPO's actor and critic); False
    if none were found."""
    # One block's code serves every pass over every model, and dynamo keeps a graph per
    # combination it meets: grad on or off, trainable or frozen weights (policy vs. reference),
    # per-row or shared positions (padded vs. packed batches), a padding mask or none (a batch
    # of equal lengths). An online recipe meets about a dozen; past the limit (8 by default)
    # dynamo silently runs the block eagerly, so the limit is raised to leave room for all.
    # Lengths are dynamic from the first graph on: with dynamo's default (a graph specialised
    # to the first length, a dynamic one when the length changes) batches of varying length
    # compiled two or three graphs more per combination, seconds each, some of them well into
    # training (bench_prm: a 3.8 s step at step 6).
    torch._dynamo.config.recompile_limit = max(
        torch._dynamo.config.recompile_limit, BLOCK_RECOMPILE_LIMIT
    )
    compiled: set[int] = set()
    for module in model.modules():
        if getattr(getattr(module, "config", None), "num_hidden_layers", None) is None:
            continue
        blocks = decoder_blocks(module)
        if blocks is None or id(blocks) in compiled:
            continue  # a causal LM's inner decoder holds the blocks already compiled
        compiled.add(id(blocks))
        for block in blocks:
            block.compile(dynamic=True)
        base = unwrap(module)
        final_norm = getattr(getattr(base, base.base_model_prefix, None), "norm", None)
        if isinstance(final_norm, torch.nn.Module):
            final_norm.compile(dynamic=True)
    if not compiled:
        logger.warning("compile: no transformer blocks found; training uncompiled")
    return bool(compiled)


def _decode_step(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: object,
    cache_argument: str | None = None,
) -> torch.Tensor:
    """One token per row through ``model`` with a static KV cache -> [b, V] next-token logits.

    input_ids / position_ids [b, 1], attention_mask [b, C] over the cache's C columns;
    ``cache_argument``: the forward's keyword for the cache (default:
    :func:`rlhf.models.forward.cache_argument`; :func:`compiled_decode_step` resolves it
    outside the compiled graph).
    """
    if cache_argument is None:
        cache_argument = forward_cache_argument(model)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_argument: cache},
    )
    return out.logits[:, -1]


@functools.cache
def compiled_decode_step() -> Callable[..., torch.Tensor]:
    """:func:`_decode_step` under ``torch.compile`` (made once per process).

    Every input has a fixed shape for a given batch and cache size (the static cache's
    tensors, the mask over all its columns; the step's position lives in the cache as a
    tensor), so the graph compiles once per (batch, cache size) and never per generated token:
    ``dynamic=False`` makes each such shape a specialised graph, up to dynamo's recompile limit
    (8 by default; beyond it dynamo runs the step eagerly). Whole-graph inductor code fuses the
    many small element-wise ops of a one-token forward (RMSNorm, rotary embedding, SwiGLU, the
    cache write and mask), which dominate a small model's decode step when run eagerly.
    """
    compiled = torch.compile(_decode_step, dynamic=False)

    def step(
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: object,
    ) -> torch.Tensor:
        # the cache's keyword is found by inspecting the model's forward: done here, eagerly
        # (a constant string to the graph), not traced by dynamo
        keyword = forward_cache_argument(model)
        return compiled(model, input_ids, position_ids, attention_mask, cache, keyword)

    return step
