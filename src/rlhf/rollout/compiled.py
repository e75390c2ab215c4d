"""The decoding path beside ``generate``'s: a shared prompt prefill and a compiled decode loop.

Correctness details (see the design notes and :mod:`rlhf.rollout.hf`):

* **Each prompt is read once**: rows repeating a prompt (K samples) share one prefill of its
  KV cache (:func:`shared_prompt_cache`, which :class:`~rlhf.rollout.hf.HFGenerationEngine`
  hands ``generate``), written in place into a cache with room for the whole generation
  (:func:`growing_kv_layer`). The tokens are those of a plain ``generate`` call up to the float
  rounding of a smaller prefill batch, and ``generate``'s random stream is unchanged.
* ``SamplingParams.compile`` (opt-in) replaces ``generate``'s loop with
  :func:`compiled_generate`: the same prefill (shared per prompt), warpers and stopping
  around a ``torch.compile``'d one-token step over a static KV cache, so every note of
  :mod:`rlhf.rollout.hf` holds for it too. Greedy tokens are ``generate``'s up to float
  rounding; samples come from the same distribution through a faster draw
  (:func:`exponential_race`), so not the same tokens.
* The prefill always runs eagerly (:func:`prefill`), even under ``train.compile``, so it
  cannot use up the recompile limit the training passes need.
* A diverged policy is never sampled: :func:`compiled_generate` stops at the first decoding
  step whose logits hold NaN or infinity, as the engine's ``generate`` path does.

Shapes: b rows of a chunk, p prompt tokens, r response tokens, g distinct prompts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from rlhf.models.finite import check_finite_logits
from rlhf.models.forward import cache_argument, has_plain_head, unwrap
from rlhf.rollout.types import SamplingParams


def shared_prompt_cache(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_index: torch.Tensor,
    max_new_tokens: int,
) -> dict[str, Any]:
    """``generate``'s KV cache keyword argument for a chunk of rows (``{"cache": cache}``, or
    ``past_key_values`` in older transformers: :func:`~rlhf.models.forward.cache_argument`):
    a KV cache that grows in place (:func:`growing_kv_layer`) and, when rows repeat a prompt
    (a rollout's K samples), holds each distinct prompt's keys and values computed once and
    repeated for its rows. ``{}`` (``generate`` builds its own cache) for models other than
    plain decoders.

    ids / mask [b, p] left-padded rows, prompt_index [b] which prompt each row is (equal
    prompts on consecutive rows, as :meth:`~rlhf.rollout.hf.HFGenerationEngine.generate` lays
    them out). The cache holds all prompt columns but the last, so ``generate`` still runs its
    own first step on the last column, and its sampling, stopping and random stream are
    unchanged: the tokens are those of a plain ``generate`` call up to the float rounding of a
    smaller prefill batch.
    """
    if not has_plain_head(model):
        return {}
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    base = unwrap(model)
    cache = DynamicCache(config=base.config)
    if {type(layer) for layer in cache.layers} != {DynamicLayer}:
        return {}  # sliding-window or other special layers: generate's own cache
    layer = growing_kv_layer()
    cache.layers = [layer(ids.shape[1] + max_new_tokens) for _ in cache.layers]
    _, counts = torch.unique_consecutive(prompt_index, return_counts=True)
    if ids.shape[1] < 2 or len(counts) == len(prompt_index):
        return {cache_argument(model): cache}
    firsts = torch.cumsum(counts, 0) - counts  # [g] the first row of each prompt
    distinct, distinct_mask = ids[firsts, :-1], mask[firsts, :-1]  # [g, p - 1]
    prefill(base, distinct, distinct_mask, cache)
    rows = torch.arange(len(counts)).repeat_interleave(counts).to(ids.device)  # [b]
    cache.batch_select_indices(rows)
    return {cache_argument(model): cache}


def prefill(base: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> None:
    """Run the left-padded rows ids / mask [g, n] through ``base``'s decoder (no head), writing
    their keys and values into ``cache`` (a cache of :func:`growing_kv_layer` layers).

    Always eager, even when ``train.compile`` has compiled the blocks: each layer's cache
    keeps its filled length as a Python int, which dynamo guards on, so a compiled block would
    recompile for every layer of every prefill and use up the recompile limit that the
    training passes need (past it, dynamo silently runs them eagerly).
    """
    with torch.compiler.set_stance("force_eager"):
        getattr(base, base.base_model_prefix)(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.long().cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **{cache_argument(base): cache},
        )


@functools.cache
def growing_kv_layer() -> type:
    """The class ``GrowingKVLayer`` (made on first use: it subclasses a transformers class,
    and this module imports transformers lazily)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingKVLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in a buffer with room for the whole
        generation: each step writes its new states in place and the layer exposes a view of
        the filled part, where ``DynamicLayer`` concatenates (copies the whole cache) every
        step. The buffer doubles if a call outgrows it."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity, self.length = capacity, 0
            self.key_buffer: torch.Tensor | None = None
            self.value_buffer: torch.Tensor | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            new, end = key_states.shape[-2], self.length + key_states.shape[-2]
            if self.key_buffer is None or self.value_buffer is None:
                self._grow(key_states, value_states, max(self.capacity, end))
            elif end > self.key_buffer.shape[-2]:
                self._grow(key_states, value_states, 2 * end)
            assert self.key_buffer is not None and self.value_buffer is not None
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length += new
            self._expose()
            return self.keys, self.values

        def _grow(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
            shape = (*keys.shape[:2], capacity)
            key_buffer = keys.new_empty((*shape, keys.shape[-1]))  # [b, heads, capacity, d]
            value_buffer = values.new_empty((*shape, values.shape[-1]))
            if self.length:
                key_buffer[:, :, : self.length] = self.keys
                value_buffer[:, :, : self.length] = self.values
            self.key_buffer, self.value_buffer = key_buffer, value_buffer

        def _expose(self) -> None:
            assert self.key_buffer is not None and self.value_buffer is not None
            self.keys = self.key_buffer[:, :, : self.length]  # [b, heads, length, d] views
            self.values = self.value_buffer[:, :, : self.length]

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.key_buffer is not None and self.value_buffer is not None:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self._expose()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.key_buffer is not None and self.value_buffer is not None:
                self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
                self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
                self._expose()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("GrowingKVLayer is for sampling only: it cannot crop")

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)

    return GrowingKVLayer


STATIC_CACHE_STEP = 64  # static caches hold a multiple of this many columns


def compiled_generate(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_index: torch.Tensor,
    params: SamplingParams,
    stop_ids: Sequence[int],
    pad_id: int,
) -> torch.Tensor | None:
    """``generate``'s sampling loop with a compiled one-token step over a static KV cache:
    [b, p + r] prompt and sampled tokens (r ≤ ``max_new_tokens``), or None when ``model`` is
    not a plain decoder whose cache can be static (the caller then uses ``generate``).

    ids / mask [b, p] left-padded rows, prompt_index [b] as for :func:`shared_prompt_cache`;
    called inside the engine's sampling mode (eval, no gradients, a seeded RNG stream). The
    prompt's columns but the last are prefilled eagerly, each distinct prompt once (:func:`shared_prompt_cache`), then copied into a
    ``StaticCache`` of ``p + max_new_tokens`` columns rounded up to :data:`STATIC_CACHE_STEP`
    (prompts of nearby lengths share a compiled graph). Every following token, the last prompt
    column's included, goes through :func:`rlhf.models.compile.compiled_decode_step`, whose
    inputs keep their shapes from step to step: the mask covers all cache columns from the start
    (generated columns set, later ones hidden by the causal mask) and each row's position is
    its real-token count, as ``generate`` derives it.

    Sampling repeats ``generate``'s (transformers 5 ``_sample``) outside the compiled step:
    float32 logits, the same warpers in the same order (temperature, top-k, top-p), softmax,
    finished rows padded, stopping at EOS or ``max_new_tokens``. Greedy decoding takes the
    argmax, so its tokens are ``generate``'s up to the float rounding of the compiled kernels
    (a near-tie can flip; see tests/test_rollout_compiled.py). Sampling draws every row's token
    with :func:`exponential_race` where ``generate`` calls ``torch.multinomial``: the same
    distribution in less than half the time, other tokens for a given seed.
    """
    if not has_plain_head(model):
        return None
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from rlhf.models.compile import _decode_step, compiled_decode_step

    base = unwrap(model)
    b, p = ids.shape
    steps = params.max_new_tokens
    columns = -(-(p + steps) // STATIC_CACHE_STEP) * STATIC_CACHE_STEP
    cache = StaticCache(config=base.config, max_cache_len=columns)
    if {type(layer) for layer in cache.layers} != {StaticLayer}:
        return None  # sliding-window or other special layers: generate's own cache
    if p >= 2:
        prefix = shared_prompt_cache(model, ids, mask, prompt_index, steps).get(
            cache_argument(model)
        )
        if prefix is None:
            return None
        if prefix.get_seq_length() == 0:  # no prompt repeats: prefill every row
            prefill(base, ids[:, :-1], mask[:, :-1], prefix)
        for static, filled in zip(cache.layers, prefix.layers, strict=True):
            static.lazy_initialization(filled.keys, filled.values)  # [b, heads, columns, d]
            static.keys[:, :, : p - 1].copy_(filled.keys)
            static.values[:, :, : p - 1].copy_(filled.values)
            static.cumulative_length.fill_(p - 1)
    full_mask = torch.ones((b, columns), dtype=mask.dtype, device=mask.device)  # [b, C]
    full_mask[:, :p] = mask
    position = mask.long().sum(-1, keepdim=True) - 1  # [b, 1] the last prompt token's
    warpers = LogitsProcessorList()
    if not params.greedy:
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p))
    stops = torch.tensor(list(stop_ids), device=ids.device)
    sequences = torch.full((b, p + steps), pad_id, dtype=ids.dtype, device=ids.device)
    sequences[:, :p] = ids  # [b, p + steps], filled column by column
    token = ids[:, -1:].contiguous()  # [b, 1] (strides are guarded)
    unfinished = torch.ones(b, dtype=torch.bool, device=ids.device)
    checked = 0  # compiled steps run with dynamo's guards evaluated
    with ExitStack() as stance:
        for t in range(steps):
            # a one-token prompt leaves the cache unallocated: its first step runs eagerly (the
            # compiled graph is for an allocated cache; tracing the allocation is another graph)
            compiled = t > 0 or p >= 2
            step = compiled_decode_step() if compiled else _decode_step
            if checked == 2:
                # every step's inputs are the same tensors or new ones of the same shapes, so
                # once two compiled steps have passed dynamo's guards (the first after the
                # prefill and a steady-state one) the rest skip evaluating them (~0.1 ms a step)
                stance.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
            checked += compiled
            logits = step(model, token, position + t, full_mask, cache).float()  # [b, V]
            check_finite_logits(logits, "sampling")
            scores = warpers(sequences[:, : p + t], logits) if warpers else logits
            if params.greedy:
                chosen = torch.argmax(scores, dim=-1)
            else:
                chosen = exponential_race(torch.softmax(scores, dim=-1))
            chosen = torch.where(unfinished, chosen, pad_id)  # [b]
            sequences[:, p + t] = chosen
            unfinished &= ~torch.isin(chosen, stops)
            if not unfinished.any():
                return sequences[:, : p + t + 1]
            token = chosen[:, None]
    return sequences


def exponential_race(probs: torch.Tensor) -> torch.Tensor:
    """[b] one token per row of ``probs`` [b, V] (rows of a distribution), token i with
    probability p_i: argmax_i p_i / E_i with E_i ~ Exp(1) independent (the exponential race,
    the Gumbel-max trick in other clothes: min_i E_i / p_i is attained at i with probability
    p_i / Σ p).

    ``torch.multinomial`` draws one sample the same way but takes its E_i from torch's
    element-by-element exponential sampler, ~25 ns a draw on CPU: for a small model that is a
    sixth of a decode step. Here E = −log U from the vectorised uniform sampler (less than
    half the time). U is float64, so the smallest E is 2⁻⁵³ and a token keeps its chance down
    to probabilities far below float32's resolution of the others; U = 0 is clamped to the
    smallest positive double (E ≈ 708, finite), so a token of probability 0 never wins.
    """
    uniform = torch.rand(probs.shape, dtype=torch.float64, device=probs.device)
    exponential = uniform.clamp_(min=torch.finfo(torch.float64).tiny).log_().neg_()
    return (probs / exponential.to(probs.dtype)).argmax(dim=-1)
