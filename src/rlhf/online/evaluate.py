"""Held-out evaluation of a policy during online RL (``eval_*`` rows of metrics.jsonl)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.models.reference import ReferenceModel
from rlhf.rewards.base import RewardFunction, score_rollout
from rlhf.rewards.spec import RewardSpec
from rlhf.rollout.measure import reference_kl
from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingConfig, SamplingParams

Metrics = dict[str, float]


class OnlineEvalConfig(StrictModel):
    prompts: int = Field(64, ge=0, description="Held-out prompts evaluated (0: no evaluation).")
    samples_per_prompt: int = Field(
        1, ge=0, description="Sampled responses per prompt for reward and KL (0: greedy only)."
    )
    greedy: bool = Field(
        True, description="Also decode greedily and report its reward (accuracy for 0/1 rules)."
    )
    gold_reward: RewardSpec | None = Field(
        None, description="A second reward reported beside the training one (e.g. a gold RM)."
    )
    before: bool = Field(
        True, description="Evaluate the starting policy too (eval_initial.json, step 0)."
    )


def evaluate_policy(
    engine: GenerationEngine,
    *,
    prompts: Sequence[Text],
    prompt_metadata: Sequence[Mapping[str, Any]] | None,
    reward: RewardFunction,
    gold: RewardFunction | None,
    reference: ReferenceModel | None,
    sampling: SamplingConfig,
    settings: OnlineEvalConfig,
    seed: int,
) -> Metrics:
    """Held-out metrics of the engine's policy: greedy reward (accuracy for a 0/1 rule),
    sampled reward, the sampled KL(π‖π_ref) (k1 summed over the response, averaged),
    response length and EOS rate. The same seed every time, so evaluations compare like with
    like."""
    metrics: Metrics = {}

    def scored(params: SamplingParams, name: str) -> RolloutBatch:
        batch = engine.generate(prompts, params)
        output = score_rollout(reward, prompts, batch, prompt_metadata)
        metrics.update(output.metrics(prefix=f"{name}reward"))
        if gold is not None:
            gold_scores = score_rollout(gold, prompts, batch, prompt_metadata).scores
            metrics[f"{name}gold_reward"] = float(gold_scores.mean())
        metrics.update(batch.response_stats(prefix=name))
        return batch

    if settings.greedy:
        scored(SamplingParams(sampling.max_new_tokens, temperature=0.0, seed=seed), "greedy_")
    if settings.samples_per_prompt > 0:
        params = sampling.params(num_samples=settings.samples_per_prompt, seed=seed)
        batch = scored(params, "")
        if reference is not None:
            kl = reference_kl(reference, batch, params.logp_temperature, sampling.batch_size)
            metrics["kl"] = float(kl.double().mean())
    return metrics
