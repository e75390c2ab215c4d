"""Best-of-N estimated from one set of samples: the expected (gold) reward of the best of N for
every N = 1, 2, 4, ..., N_max, against its analytic KL (:func:`rlhf.eval.stats.best_of_n_kl`).

N_max responses per prompt are sampled **once**; the best of N is averaged over *all*
N-subsets of them, in closed form from order statistics (:func:`expected_best_of_n`). That is
unbiased, like taking the first N samples, and has lower variance (it averages every subset
rather than one). ``rlhf best-of-n`` (:mod:`rlhf.recipes.best_of_n`) and the pipeline's report
both read :func:`evaluate_best_of_n`.

Shapes: P prompts, M (= N_max) samples per prompt, B = P·M rows of a prompt-major rollout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.eval.sampling import rewards_per_prompt
from rlhf.eval.stats import best_of_n_kl, mean_and_se
from rlhf.rewards.base import RewardFunction, score_rollout
from rlhf.rollout.candidates import CandidateRecord, candidates_from_rollout
from rlhf.rollout.types import GenerationEngine, SamplingParams


def best_of_n_sizes(max_n: int) -> list[int]:
    """1, 2, 4, ... up to ``max_n`` (``max_n`` included even when not a power of two)."""
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    sizes = [2**i for i in range(max_n.bit_length()) if 2**i <= max_n]
    return sizes if sizes[-1] == max_n else [*sizes, max_n]


def expected_best_of_n(
    rewards: torch.Tensor, n: int, values: torch.Tensor | None = None
) -> torch.Tensor:
    """Expected value of the best-of-``n`` sample per prompt, over every n-subset.

    rewards [P, M] (M ≥ n samples per prompt), values [P, M] (what to average; default the
    rewards themselves, or e.g. the gold reward of the same samples) -> [P] float64.

    Sorting a prompt's rewards ascending, the i-th smallest (1-based) is the best of a
    uniformly random n-subset with probability C(i−1, n−1) / C(M, n): the standard unbiased
    estimator of best-of-n (Nakano et al. 2021; Gao et al. 2022). Samples with equal
    rewards are equally likely to be chosen, so within a tie their values are replaced by the
    tie's mean: the estimate is then exactly the average, over all C(M, n) subsets, of the
    value of the subset's reward-maximising sample (ties broken uniformly at random).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, samples], got {tuple(rewards.shape)}")
    samples = rewards.shape[1]
    if not 1 <= n <= samples:
        raise ValueError(f"n={n} needs between 1 and {samples} samples per prompt")
    values = rewards if values is None else values
    rewards, values = rewards.double(), values.double()
    position = torch.arange(1, samples + 1, dtype=torch.float64)  # i = 1..M
    log_weight = (
        torch.lgamma(position)
        - torch.lgamma(position - n + 1)
        - math.lgamma(n)
        - (math.lgamma(samples + 1) - math.lgamma(n + 1) - math.lgamma(samples - n + 1))
    )  # log C(i-1, n-1) - log C(M, n), for i >= n
    weight = torch.where(position >= n, log_weight.exp(), torch.zeros_like(position))  # [M]
    out = torch.empty(rewards.shape[0], dtype=torch.float64)
    for row in range(rewards.shape[0]):
        sorted_rewards, order = torch.sort(rewards[row], stable=True)
        sorted_values = values[row, order]
        _, group, counts = torch.unique_consecutive(
            sorted_rewards, return_inverse=True, return_counts=True
        )
        group_mean = (
            torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, sorted_values)
            / counts.double()
        )
        out[row] = (weight * group_mean[group]).sum()
    return out


@dataclass
class BestOfNEstimate:
    """One N of the curve; means over prompts with their standard errors (the pipeline's report
    keeps the means only, as :class:`rlhf.eval.results.BestOfNPoint`)."""

    n: int
    kl: float  # analytic KL(best-of-n ‖ policy), nats
    reward: float  # expected reward of the best of n
    reward_se: float
    gold: float | None = None  # expected gold reward of the sample the reward picks
    gold_se: float | None = None


@dataclass
class BestOfNReport:
    points: list[BestOfNEstimate]
    samples: list[CandidateRecord]  # every sample, with "rewards" (and "gold") per response
    num_prompts: int
    max_n: int
    finished_rate: float  # share of samples that ended with EOS
    meta: dict[str, object] = field(default_factory=dict)


def best_of_n_estimates(
    rewards: torch.Tensor, gold: torch.Tensor | None = None, sizes: Sequence[int] | None = None
) -> list[BestOfNEstimate]:
    """Expected (gold) reward of best-of-N for each N in ``sizes`` (default 1, 2, 4, ..., M)
    from rewards [P, M] and the gold rewards [P, M] of the same samples."""
    points = []
    for n in sizes or best_of_n_sizes(rewards.shape[1]):
        reward, reward_se = mean_and_se(expected_best_of_n(rewards, n).tolist())
        point = BestOfNEstimate(n, best_of_n_kl(n), reward, reward_se)
        if gold is not None:
            point.gold, point.gold_se = mean_and_se(expected_best_of_n(rewards, n, gold).tolist())
        points.append(point)
    return points


def evaluate_best_of_n(
    engine: GenerationEngine,
    prompts: Sequence[Text],
    params: SamplingParams,
    reward: RewardFunction,
    gold: RewardFunction | None = None,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
) -> BestOfNReport:
    """Sample ``params.num_samples`` (N_max) per prompt once and build the best-of-N curve;
    both rewards see ``prompt_metadata`` (e.g. a verifiable gold needs each ``answer``)."""
    batch = engine.generate(prompts, params)
    flat_rewards = score_rollout(reward, prompts, batch, prompt_metadata).scores  # [B]
    flat_gold = None
    if gold is not None:
        flat_gold = score_rollout(gold, prompts, batch, prompt_metadata).scores  # [B]
    rewards = rewards_per_prompt(batch, flat_rewards)  # [P, N_max]
    gold_rewards = None if flat_gold is None else rewards_per_prompt(batch, flat_gold)
    samples = []
    for index, candidate in enumerate(candidates_from_rollout(prompts, batch)):
        extra = {"rewards": [round(v, 6) for v in rewards[index].tolist()]}
        if gold_rewards is not None:
            extra["gold"] = [round(v, 6) for v in gold_rewards[index].tolist()]
        samples.append(replace(candidate, extra=extra))  # asdict would turn messages to dicts
    return BestOfNReport(
        points=best_of_n_estimates(rewards, gold_rewards),
        samples=samples,
        num_prompts=len(prompts),
        max_n=params.num_samples,
        finished_rate=batch.response_stats()["eos_rate"],
    )
