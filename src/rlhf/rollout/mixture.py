"""Sampling from the geometric mixture of a policy and a reference, token by token: Nash-MD's
opponent (Munos et al. 2024, eq. 7; :func:`rlhf.losses.nash.geometric_mixture_logprobs`).

:class:`GeometricMixtureEngine` is the HF engine with one more logits processor: at each
decoding step it runs the reference on the new token (keeping its own KV cache, with the
prompt's left padding masked and positions counted from each row's first real token, as
``generate`` does for the policy) and replaces the policy's logits by the mixture's
log-probabilities divided by the temperature. ``generate`` then samples at temperature 1, so
the mixture is tempered once, after mixing. Top-p/top-k would filter the mixture the engine
does not see whole; they are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf.losses.nash import geometric_mixture_logprobs
from rlhf.models.forward import cache_argument
from rlhf.rollout.hf import HFGenerationEngine, finite_logits_processor
from rlhf.rollout.types import RolloutBatch, SamplingParams


class _MixtureStep:
    """A ``generate`` logits processor over one prompt chunk (see the module docstring)."""

    def __init__(
        self, reference: torch.nn.Module, mask: torch.Tensor, beta: float, temperature: float
    ) -> None:
        from transformers import DynamicCache

        self.reference, self.beta, self.temperature = reference, beta, temperature
        self.mask = mask  # [b, p + t]: grows by one column per step
        self.cache = DynamicCache()  # the reference's keys and values, filled by the prefill
        self.prefilled = False

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.prefilled:  # the prompt: one prefill of the reference
            new, mask = input_ids, self.mask
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:  # the token sampled last step
            new = input_ids[:, -1:]
            mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
            positions = mask.sum(-1, keepdim=True) - 1
        output = self.reference(
            input_ids=new,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_argument(self.reference): self.cache},
        )
        self.mask, self.prefilled = mask, True
        mixed = geometric_mixture_logprobs(scores, output.logits[:, -1], self.beta)
        return (mixed / self.temperature).to(scores.dtype)


class GeometricMixtureEngine(HFGenerationEngine):
    """Samples from π^β_mix ∝ π^{1−β} π_ref^β, token by token: ``model`` is the policy (as it
    is trained), ``reference`` the frozen π_ref on the same device and vocabulary."""

    compilable = False

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        reference: torch.nn.Module,
        beta: float,
        *,
        batch_size: int = 64,
    ) -> None:
        super().__init__(model, tokenizer, batch_size=batch_size)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"the mixture's beta must be in [0, 1], got {beta}")
        self.reference, self.beta = reference, beta
        self._temperature = 1.0

    def generate(self, prompts: Any, params: SamplingParams) -> RolloutBatch:
        if params.greedy or params.top_p < 1 or params.top_k > 0:
            raise ValueError(
                "the geometric mixture is sampled whole: temperature > 0, no top-p/top-k"
            )
        from dataclasses import replace

        self._temperature = params.temperature
        # the processor tempers the mixture; generate's own temperature is then 1
        return super().generate(
            prompts, replace(params, temperature=1.0, return_logps=False, compile=False)
        )

    def logits_processors(
        self, ids: torch.Tensor, mask: torch.Tensor, params: SamplingParams
    ) -> Any:
        processors = finite_logits_processor()
        self.reference.eval()
        processors.append(_MixtureStep(self.reference, mask, self.beta, self._temperature))
        return processors
