"""Sampling with Hugging Face ``generate``: batched, left-padded, KV-cached, seeded.

:class:`HFGenerationEngine` composes the token helpers of :mod:`rlhf.rollout.tokens` (prompt
ids, stop ids, response text) and the decoding path of :mod:`rlhf.rollout.compiled` (a prefill
shared by a prompt's samples; the opt-in compiled loop). Correctness details (see the design
notes; those of prompt tokenisation and of the shared prefill and compiled loop are with their
code):

* Prompts are **left-padded**, so every row's next token sits in the same column;
  ``generate`` derives position ids from the attention mask, so padding does not shift
  positions.
* Decoding stops at EOS (:func:`~rlhf.rollout.tokens.stop_token_ids`) and each response is
  cut right after its **first** EOS. A response that reaches ``max_new_tokens`` without EOS is
  kept and flagged (``ended_with_eos`` False) so recipes can penalise it.
* The model's own ``generation_config.json`` is set aside while sampling: HF fills every
  option we leave unset from it (repetition penalties, minimum lengths, a default top-k of
  50, ...), each of which would change the distribution the returned log-probs describe.
* **Log-probs are recomputed** with one teacher-forced forward pass over prompt + response
  (:func:`rlhf.models.teacher_forcing.response_logprobs`), at the sampling temperature:
  ``log softmax(logits / T)`` at the taken token. We do not read ``generate``'s
  ``output_scores``: those are the logits *after* top-k / top-p filtering (not the
  temperature-scaled policy that PPO's ratio and KL need), and holding them costs
  ``R × B × V`` floats (20 GB for R=512, B=64, V=150k). The forward pass costs about one
  prefill, and it is the same computation the training step repeats, so the first importance
  ratio of an update is 1 (KV-cached decoding rounds a little differently from a full forward
  pass). ``SamplingParams.return_logps=False`` skips it for a caller that never reads them
  (``logps`` is then None).
* **Each prompt is read once**: the K samples of a prompt share one prefill of its KV cache
  (:func:`rlhf.rollout.compiled.shared_prompt_cache`), and the teacher-forced passes given
  ``groups`` pack a group's responses after one copy of its prompt
  (:class:`rlhf.models.teacher_forcing.SharedPromptForced`). Both give the numbers of the
  one-row-per-sample layout up to float rounding.
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

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhf.data.collate import collate_prompts_left
from rlhf.data.records import Text
from rlhf.models.finite import check_finite_logits, check_finite_weights
from rlhf.models.forward import position_limit, unwrap
from rlhf.models.teacher_forcing import live_columns, response_logprobs
from rlhf.rollout import compiled  # called as compiled.NAME: a test can swap one piece
from rlhf.rollout.tokens import (
    cut_at_first_stop,
    encode_prompts,
    prompt_room,
    response_texts,
    stop_token_ids,
)
from rlhf.rollout.types import RolloutBatch, SamplingParams

logger = logging.getLogger("rlhf.rollout")


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

    # the compiled decoding loop samples from the model's own logits: an engine that changes
    # them (logits_processors) decodes with generate
    compilable = True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits_processors(
        self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams
    ) -> Any:
        """What ``generate`` applies to each step's logits for the prompt chunk ``ids`` /
        ``mask`` [b, p]: the finite check (an engine sampling from other logits adds its
        own)."""
        return finite_logits_processor()

    def prompt_room(self, max_new_tokens: int) -> int | None:
        """How many prompt tokens fit beside ``max_new_tokens`` in the model's positions (None
        when its config does not say)."""
        return prompt_room(position_limit(self.model), max_new_tokens)

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """``params.num_samples`` responses to every prompt; see the module docstring."""
        if not prompts:
            raise ValueError("no prompts to sample from")
        check_finite_weights(self.model, "sampling")
        encoded, truncated = encode_prompts(
            self.tokenizer, prompts, self.prompt_room(params.max_new_tokens), params.max_new_tokens
        )
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
                    if params.compile and self.compilable:
                        sequences = compiled.compiled_generate(
                            self.model, ids, mask, prompt_index[rows], params, self.stop_ids, pad_id
                        )  # [b, p + r], or None for a model it cannot decode
                    if sequences is None:
                        cache = compiled.shared_prompt_cache(
                            self.model, ids, mask, prompt_index[rows], params.max_new_tokens
                        )
                        sequences = self.model.generate(
                            input_ids=ids,
                            attention_mask=mask,
                            generation_config=config,
                            logits_processor=self.logits_processors(ids, mask, params),
                            **cache,
                        )  # [b, p + r]
                chunks.append(sequences[:, ids.shape[1] :].cpu())  # [b, r]
            response_ids, response_mask, ended = cut_at_first_stop(chunks, self.stop_ids, pad_id)
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
        texts = response_texts(
            self.tokenizer, encoded, prompt_index, response_ids, response_mask, ended
        )
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
