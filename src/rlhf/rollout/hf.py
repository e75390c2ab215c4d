"""Sampling with Hugging Face ``generate``: batched, left-padded, KV-cached, seeded.

Correctness details (see the design notes):

* Prompts are tokenised exactly as training tokenises the prompt part of an example (BOS by
  the tokenizer's convention, the chat template with its generation prompt for message
  lists) and **left-padded**, so every row's next token sits in the same column; ``generate``
  derives position ids from the attention mask, so padding does not shift positions.
* Decoding stops at EOS (the tokenizer's and any the model's generation config lists) and
  each response is cut right after its **first** EOS. PAD is never an EOS id, so padding can
  never be mistaken for a stop. A response that reaches ``max_new_tokens`` without EOS is
  kept and flagged (``ended_with_eos`` False) so recipes can penalise it.
* The model's own ``generation_config.json`` is set aside while sampling: HF fills every
  option we leave unset from it (repetition penalties, minimum lengths, a default top-k of
  50, ...), each of which would change the distribution the returned log-probs describe.
* **Log-probs are recomputed** with one teacher-forced forward pass over prompt + response
  (:func:`rlhf.models.teacher_forcing.response_logprobs`), at the sampling temperature: ``log softmax(logits / T)`` at
  the taken token. We do not read ``generate``'s ``output_scores``: those are the logits
  *after* top-k / top-p filtering (not the temperature-scaled policy that PPO's ratio and KL
  need), and holding them costs ``R × B × V`` floats (20 GB for R=512, B=64, V=150k). The
  forward pass costs about one prefill, and it is the same computation the training step
  repeats, so the first importance ratio of an update is 1 (KV-cached decoding rounds a little
  differently from a full forward pass). ``SamplingParams.return_logps=False`` skips it for a
  caller that never reads them (``logps`` is then None).
* **Each prompt is read once**: rows repeating a prompt (K samples) share one prefill of its
  KV cache (:func:`shared_prompt_cache`), and the teacher-forced passes given ``groups`` pack
  a group's responses after one copy of its prompt (:class:`rlhf.models.teacher_forcing.SharedPromptForced`). Both give
  the numbers of the one-row-per-sample layout up to float rounding.
* ``SamplingParams.compile`` (opt-in) replaces ``generate``'s loop with
  :func:`compiled_generate`: the same prefill (shared per prompt), warpers and stopping
  around a ``torch.compile``'d one-token step over a static KV cache, so every note here holds
  for it too. Greedy tokens are ``generate``'s up to float rounding; samples come from the
  same distribution through a faster draw (:func:`exponential_race`), so not the same tokens.
* **A diverged policy is never sampled**: ``generate`` refuses weights that hold NaN or
  infinity, and stops at the first decoding step whose logits do (finite weights that have
  grown huge overflow), with :class:`~rlhf.models.finite.NonFiniteError` instead of drawing
  tokens from them; the training engine reports it with the step and the last checkpoint.
* Sampling is seeded: ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's
  random state is left as it was and the same call returns the same samples. Chunking over
  ``batch_size`` sequences is part of the random stream: change the batch size and the
  samples change (their distribution does not).

Shapes: B rows, P prompt tokens, R response tokens, T = P + R.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhf.data.collate import collate_prompts_left
from rlhf.data.records import Text
from rlhf.data.tokenize import tokenize_prompt
from rlhf.models.finite import check_finite_logits, check_finite_weights
from rlhf.models.forward import (
    cache_argument,
    has_plain_head,
    position_limit,
    unwrap,
)
from rlhf.models.teacher_forcing import live_columns, response_logprobs
from rlhf.rollout.types import RolloutBatch, SamplingParams

logger = logging.getLogger("rlhf.rollout")


def prompt_token_ids(tokenizer: Any, prompt: Text, max_tokens: int | None = None) -> list[int]:
    """The token ids a response is generated after (:func:`rlhf.data.tokenize.tokenize_prompt`:
    training's tokenisation; with ``max_tokens``, a longer prompt keeps its last tokens)."""
    return tokenize_prompt(tokenizer, prompt, max_tokens)[0]


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids that end a response: the tokenizer's and those of the model's generation config
    (chat models often list their end-of-turn token there)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    config = getattr(unwrap(model), "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else list(extra or []):
        if token not in ids:
            ids.append(int(token))
    return ids


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
    prompts on consecutive rows, as :meth:`HFGenerationEngine.generate` lays them out). The
    cache holds all prompt columns but the last, so ``generate`` still runs its own first step
    on the last column, and its sampling, stopping and random stream are unchanged: the tokens
    are those of a plain ``generate`` call up to the float rounding of a smaller prefill batch.
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

    ids / mask [b, p] left-padded rows, prompt_index [b] as for :func:`shared_prompt_cache`,
    called inside :func:`_sampling_mode`. The prompt's columns but the last are prefilled
    eagerly, each distinct prompt once (:func:`shared_prompt_cache`), then copied into a
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


@contextmanager
def _sampling_mode(model: torch.nn.Module, seed: int, device: torch.device) -> Iterator[None]:
    """Eval mode, no gradients, our generation config alone, a seeded private RNG stream."""
    base = unwrap(model)
    saved_config, was_training = base.generation_config, model.training
    from transformers import GenerationConfig

    base.generation_config = GenerationConfig()
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            yield
    finally:
        base.generation_config = saved_config
        model.train(was_training)


def finite_logits_processor() -> Any:
    """A ``LogitsProcessorList`` for ``generate`` that raises
    :class:`~rlhf.models.finite.NonFiniteError` at the first step whose scores hold NaN or +inf
    (``generate`` would fail in ``torch.multinomial`` naming neither, or, greedy, pick tokens
    from NaNs without a word)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class FiniteScores(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            check_finite_logits(scores, "sampling")
            return scores

    return LogitsProcessorList([FiniteScores()])


def generation_config(params: SamplingParams, stop_ids: Sequence[int], pad_id: int) -> Any:
    """The complete ``transformers.GenerationConfig`` for ``params`` (every filter explicit)."""
    from transformers import GenerationConfig

    sampling = {}
    if not params.greedy:
        # top_k must be given even when off: transformers' default is 50
        sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not params.greedy,
        num_beams=1,
        num_return_sequences=1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
        use_cache=True,
        **sampling,
    )


def decode_continuation(tokenizer: Any, prompt_ids: list[int], response_ids: list[int]) -> str:
    """The response's text as it continues the prompt (special tokens skipped).

    Decoding the response tokens alone loses what depends on their left context: a
    SentencePiece tokenizer drops the leading space of the first word ("▁loved" decodes to
    "loved", so prompt + response would read "Sheloved"). Decoding prompt and response together
    and removing the decoded prompt keeps it; where that is not prefix-stable, the response is
    decoded alone.
    """
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head) :]
    return tokenizer.decode(response_ids, skip_special_tokens=True)


class HFGenerationEngine:
    """A :class:`~rlhf.rollout.types.GenerationEngine` over a transformers causal LM.

    ``batch_size`` is how many sequences (prompts × samples) one ``generate`` call decodes;
    the K samples of a prompt are its K repeated rows (``repeat_interleave``), so chunking
    never splits the work unevenly.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.stop_ids = stop_token_ids(model, tokenizer)
        if not self.stop_ids:
            raise ValueError("the tokenizer has no EOS token: responses could never end")
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id in self.stop_ids:
            raise ValueError(
                "the tokenizer must pad with a token other than EOS (load it with "
                "rlhf.models.load_tokenizer, which adds one)"
            )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str | None = "sdpa",
        batch_size: int = 64,
    ) -> HFGenerationEngine:
        """Load a model folder (or hub name) and its tokenizer for sampling."""
        from rlhf.models.load import load_model, load_tokenizer

        tokenizer = load_tokenizer(path)
        model = load_model(
            path,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            tokenizer=tokenizer,
        )
        return cls(model, tokenizer, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_room(self, max_new_tokens: int) -> int | None:
        """How many prompt tokens fit beside ``max_new_tokens`` in the model's positions (None
        when its config does not say)."""
        positions = position_limit(self.model)
        if positions is None:
            return None
        if positions <= max_new_tokens:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                f"{positions} positions"
            )
        return positions - max_new_tokens

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """``params.num_samples`` responses to every prompt; see the module docstring."""
        if not prompts:
            raise ValueError("no prompts to sample from")
        check_finite_weights(self.model, "sampling")
        room = self.prompt_room(params.max_new_tokens)
        encoded, cuts = zip(
            *(tokenize_prompt(self.tokenizer, p, room) for p in prompts), strict=True
        )
        truncated = sum(map(bool, cuts))
        # warned once per tokenizer, that is per run (a recipe builds several engines on one:
        # training, each evaluation); then counted in RolloutBatch.truncated_prompts
        if truncated and not getattr(self.tokenizer, "_rlhf_warned_prompt_cut", False):
            self.tokenizer._rlhf_warned_prompt_cut = True
            logger.warning(
                "%d of %d prompts are longer than the %d tokens the model's positions leave "
                "beside max_new_tokens=%d: their start was cut (up to %d tokens); from now on "
                "counted (an online run's rollout_truncated_prompts) without this warning",
                truncated, len(prompts), room, params.max_new_tokens,
                max(cut.tokens for cut in cuts),
            )  # fmt: skip
        empty = [index for index, ids in enumerate(encoded) if not ids]
        if empty:
            raise ValueError(f"prompt {empty[0]} is empty after tokenisation")
        # [B] rows, prompt-major: the K samples of prompt i are rows i*K .. i*K+K-1
        prompt_index = torch.arange(len(prompts)).repeat_interleave(params.num_samples)
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = collate_prompts_left(
            [encoded[i] for i in prompt_index.tolist()], pad_id
        )  # [B, P]
        config = generation_config(params, self.stop_ids, pad_id)
        device = self.device
        chunks = []
        logps = None
        with _sampling_mode(self.model, params.seed, device):
            for start in range(0, len(prompt_index), self.batch_size):
                rows = slice(start, start + self.batch_size)
                keep = live_columns(prompt_mask[rows])
                ids, mask = prompt_ids[rows, keep].to(device), prompt_mask[rows, keep].to(device)
                sequences = None
                # sampled in the model's own precision even under the Trainer's mixed
                # precision: a decode step has few rows, so the casts autocast adds (of every
                # weight at every step, inside a compiled step) cost more than its bf16
                # products save, and the samples come from the policy's own weights
                with torch.autocast(device.type, enabled=False):
                    if params.compile:
                        sequences = compiled_generate(
                            self.model, ids, mask, prompt_index[rows], params, self.stop_ids, pad_id
                        )  # [b, p + r], or None for a model it cannot decode
                    if sequences is None:
                        cache = shared_prompt_cache(
                            self.model, ids, mask, prompt_index[rows], params.max_new_tokens
                        )
                        sequences = self.model.generate(
                            input_ids=ids,
                            attention_mask=mask,
                            generation_config=config,
                            logits_processor=finite_logits_processor(),
                            **cache,
                        )  # [b, p + r]
                chunks.append(sequences[:, ids.shape[1] :].cpu())  # [b, r]
            response_ids, response_mask, ended = self._cut_at_first_eos(chunks)
            if params.return_logps:
                logps = response_logprobs(
                    self.model,
                    prompt_ids,
                    prompt_mask,
                    response_ids,
                    response_mask,
                    temperature=params.logp_temperature,
                    batch_size=self.batch_size,
                    groups=prompt_index,
                ).cpu()
        texts = [
            decode_continuation(self.tokenizer, encoded[prompt], ids[: int(length) - int(stop)])
            for prompt, ids, length, stop in zip(
                prompt_index.tolist(),
                response_ids.tolist(),
                response_mask.sum(-1),
                ended,
                strict=True,
            )
        ]
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logps=logps,
            ended_with_eos=ended,
            prompt_index=prompt_index,
            response_texts=texts,
            truncated_prompts=truncated,
        )

    def _cut_at_first_eos(
        self, chunks: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Generated chunks [b_i, r_i] -> response ids and mask [B, R] and ended [B].

        Everything after a row's first EOS becomes padding. A row without EOS ran to the
        end of its chunk: ``generate`` only stops a row early at EOS.
        """
        pad_id = self.tokenizer.pad_token_id
        stops = torch.tensor(self.stop_ids)
        lengths, ended = [], []
        for chunk in chunks:
            is_stop = torch.isin(chunk, stops)  # [b, r]
            has_stop = is_stop.any(-1)  # [b]
            first = is_stop.int().argmax(-1)  # [b] first stop (0 when none)
            lengths.append(torch.where(has_stop, first + 1, chunk.shape[1]))
            ended.append(has_stop)
        length = torch.cat(lengths)  # [B]
        width = max(int(length.max()), 1)
        response_ids = torch.full((len(length), width), pad_id, dtype=torch.long)
        row = 0
        for chunk in chunks:
            columns = min(chunk.shape[1], width)
            response_ids[row : row + len(chunk), :columns] = chunk[:, :columns]
            row += len(chunk)
        response_mask = (torch.arange(width) < length[:, None]).long()  # [B, R]
        response_ids = response_ids.masked_fill(response_mask == 0, pad_id)
        return response_ids, response_mask, torch.cat(ended)
