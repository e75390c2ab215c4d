"""Rollouts: sampling responses from a policy behind one interface.

``GenerationEngine.generate(prompts, SamplingParams) -> RolloutBatch`` is all a recipe sees;
:class:`HFGenerationEngine` implements it with transformers' ``generate`` (KV cache, left
padding, seeded), and a vLLM engine can slot in beside it. ``candidates`` reads prompts and
writes / reads the unlabelled *candidates* files of ``rlhf sample``.

Names are imported on first use, so the types do not pull in transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf.rollout.candidates import (
        CandidateRecord,
        candidates_from_rollout,
        load_prompts,
        prompt_of,
        read_candidates,
        write_candidates,
    )
    from rlhf.rollout.hf import HFGenerationEngine
    from rlhf.rollout.tokens import prompt_token_ids
    from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingConfig, SamplingParams

_EXPORTS = {
    "CandidateRecord": "candidates",
    "candidates_from_rollout": "candidates",
    "load_prompts": "candidates",
    "prompt_of": "candidates",
    "read_candidates": "candidates",
    "write_candidates": "candidates",
    "HFGenerationEngine": "hf",
    "prompt_token_ids": "tokens",
    "GenerationEngine": "types",
    "RolloutBatch": "types",
    "SamplingConfig": "types",
    "SamplingParams": "types",
}
__all__ = [
    "CandidateRecord",
    "GenerationEngine",
    "HFGenerationEngine",
    "RolloutBatch",
    "SamplingConfig",
    "SamplingParams",
    "candidates_from_rollout",
    "load_prompts",
    "prompt_of",
    "prompt_token_ids",
    "read_candidates",
    "write_candidates",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf.rollout' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlhf.rollout.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
