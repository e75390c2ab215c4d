"""Measurements of a rollout against a reference policy, written once.

:func:`reference_logps` is log π_ref of a rollout's sampled tokens (the reference phase of
every online recipe, and the evaluations' KL); :func:`sampled_kl` samples from a policy and
estimates KL(π‖π_ref) from those samples (the k1 estimator summed over each response, unbiased
for the sequence-level KL; Schulman 2020, "Approximating KL divergence").

Shapes: N rows (prompts × samples), R response tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlhf.data.records import Text
from rlhf.losses.kl import sequence_kl
from rlhf.models.reference import ReferenceModel
from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingParams


def reference_logps(
    reference: ReferenceModel, batch: RolloutBatch, temperature: float, batch_size: int
) -> torch.Tensor:
    """[N, R] float32 log π_ref of the batch's sampled tokens at ``temperature`` (0 on
    padding), each prompt read once for its K samples; on the CPU."""
    return reference.response_logps(
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.response_mask,
        temperature=temperature,
        batch_size=batch_size,
        groups=batch.prompt_index,
    )


def reference_kl(
    reference: ReferenceModel, batch: RolloutBatch, temperature: float, batch_size: int
) -> torch.Tensor:
    """[N] float32 the k1 estimate of each sampled response's KL(π‖π_ref) (the batch's
    ``logps`` are the sampling policy's, taken at ``temperature``)."""
    if batch.logps is None:
        raise ValueError(
            "the KL to the reference needs the policy's log-probs: sample with return_logps"
        )
    ref = reference_logps(reference, batch, temperature, batch_size)
    return sequence_kl(batch.logps, ref, batch.response_mask)


def sampled_kl(
    engine: GenerationEngine,
    reference: ReferenceModel,
    prompts: Sequence[Text],
    params: SamplingParams,
    batch_size: int,
) -> tuple[RolloutBatch, dict[str, float]]:
    """Sample ``params`` from the engine's policy and measure KL(π‖π_ref) on those samples:
    ``kl`` (mean over samples of Σ_t log π − log π_ref), ``kl_stderr`` (its standard error)
    and ``response_tokens``. Returns the batch too, for callers that score it."""
    batch = engine.generate(prompts, params)
    per_sample = reference_kl(reference, batch, params.logp_temperature, batch_size).double()
    count = per_sample.numel()
    stderr = float(per_sample.std() / math.sqrt(count)) if count > 1 else 0.0
    return batch, {
        "kl": float(per_sample.mean()),
        "kl_stderr": stderr,
        **batch.response_stats(),
    }
