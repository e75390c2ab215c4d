"""Best-of-N: sample N responses, keep the one (or the k) a reward likes best.

Best-of-N is the simplest way to optimise a reward without training, and the yardstick the
trained methods are measured against (Nakano et al. 2021, "WebGPT"; Gao et al. 2022,
"Scaling Laws for Reward Model Overoptimization"). Its distance from the policy has a closed
form: for N samples with distinct rewards,

    KL(π_bestofN ‖ π) = log N − (N − 1) / N                      (Stiennon et al. 2020)

(an upper bound in general, tight when ties are rare; Beirami et al. 2024), so a curve of
reward against N is a reward-against-KL curve at no training cost.

``rlhf best-of-n`` samples N_max responses per prompt **once** and estimates, for every
N = 1, 2, 4, ..., N_max, the expected reward (and gold reward, where the task has one) of the
best of N from those samples: the average over *all* N-subsets of the N_max samples, in closed
form from order statistics (:func:`expected_best_of_n`). That is unbiased, like taking the
first N samples, and has lower variance (it averages every subset rather than one).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import RewardFunction, call_reward, rollout_metadata
from rlhf.rollout.candidates import CandidateRecord, candidates_from_rollout
from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingParams

logger = logging.getLogger("rlhf")


def analytic_kl(n: int) -> float:
    """KL(best-of-n ‖ policy) = log n − (n − 1) / n, in nats (Stiennon et al. 2020)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_sizes(max_n: int) -> list[int]:
    """1, 2, 4, ... up to ``max_n`` (``max_n`` included even when not a power of two)."""
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    sizes = [2**i for i in range(max_n.bit_length()) if 2**i <= max_n]
    return sizes if sizes[-1] == max_n else [*sizes, max_n]


def rewards_per_prompt(batch: RolloutBatch, rewards: torch.Tensor) -> torch.Tensor:
    """Flat rewards [B] of a prompt-major rollout -> [P, K]."""
    num_prompts = int(batch.prompt_index.max()) + 1
    return rewards.reshape(num_prompts, len(batch) // num_prompts)  # [P, K]


def top_k_per_prompt(
    rewards: torch.Tensor, k: int = 1, min_reward: float | None = None
) -> list[list[int]]:
    """Indices of the ``k`` best samples of each prompt, best first.

    rewards [P, N] -> P lists of at most ``k`` column indices; ties keep the earlier sample;
    with ``min_reward`` samples scoring below it are dropped (a prompt may keep none).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = torch.sort(rewards, dim=-1, descending=True, stable=True).indices[:, :k]  # [P, k]
    kept = []
    for row, columns in zip(rewards.tolist(), order.tolist(), strict=True):
        kept.append([c for c in columns if min_reward is None or row[c] >= min_reward])
    return kept


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
class BestOfNPoint:
    """One N of the curve; means over prompts with their standard errors."""

    n: int
    kl: float  # analytic KL(best-of-n ‖ policy), nats
    reward: float  # expected reward of the best of n
    reward_se: float
    gold: float | None = None  # expected gold reward of the sample the reward picks
    gold_se: float | None = None


@dataclass
class BestOfNReport:
    points: list[BestOfNPoint]
    samples: list[CandidateRecord]  # every sample, with "rewards" (and "gold") per response
    num_prompts: int
    max_n: int
    finished_rate: float  # share of samples that ended with EOS
    meta: dict[str, object] = field(default_factory=dict)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    mean = float(values.mean())
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return mean, se


def best_of_n_curve(
    rewards: torch.Tensor, gold: torch.Tensor | None = None, sizes: Sequence[int] | None = None
) -> list[BestOfNPoint]:
    """Expected (gold) reward of best-of-N for each N in ``sizes`` from rewards [P, M]."""
    points = []
    for n in sizes or best_of_n_sizes(rewards.shape[1]):
        reward, reward_se = _mean_and_se(expected_best_of_n(rewards, n))
        point = BestOfNPoint(n, analytic_kl(n), reward, reward_se)
        if gold is not None:
            point.gold, point.gold_se = _mean_and_se(expected_best_of_n(rewards, n, gold))
        points.append(point)
    return points


def score_rollout(
    prompts: Sequence[Text],
    batch: RolloutBatch,
    reward: RewardFunction,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
) -> torch.Tensor:
    """Rewards [B] of a rollout's responses. The reward sees each row's metadata: whether it
    ended with EOS and its token count (for the penalties), plus ``prompt_metadata[i]`` of its
    prompt (e.g. the ground-truth ``answer``)."""
    row_prompts = [prompts[i] for i in batch.prompt_index.tolist()]
    metadata = rollout_metadata(batch, prompt_metadata)
    return call_reward(reward, row_prompts, batch.response_texts, metadata)


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
    flat_rewards = score_rollout(prompts, batch, reward, prompt_metadata)  # [B]
    flat_gold = None
    if gold is not None:
        flat_gold = score_rollout(prompts, batch, gold, prompt_metadata)  # [B]
    rewards = rewards_per_prompt(batch, flat_rewards)  # [P, N_max]
    gold_rewards = None if flat_gold is None else rewards_per_prompt(batch, flat_gold)
    samples = []
    for index, candidate in enumerate(candidates_from_rollout(prompts, batch)):
        extra = {"rewards": [round(v, 6) for v in rewards[index].tolist()]}
        if gold_rewards is not None:
            extra["gold"] = [round(v, 6) for v in gold_rewards[index].tolist()]
        samples.append(replace(candidate, extra=extra))  # asdict would turn messages to dicts
    return BestOfNReport(
        points=best_of_n_curve(rewards, gold_rewards),
        samples=samples,
        num_prompts=len(prompts),
        max_n=params.num_samples,
        finished_rate=float(batch.ended_with_eos.float().mean()),
    )


def sample_candidates(
    engine: GenerationEngine,
    prompts: Sequence[Text],
    params: SamplingParams,
    reward: RewardFunction | None = None,
    keep_top: int | None = None,
    min_reward: float | None = None,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
) -> list[CandidateRecord]:
    """``params.num_samples`` candidates per prompt; scored when a reward is given.

    With a reward every row carries ``extra["rewards"]``; with ``keep_top`` too, only the k
    highest-reward responses of each prompt are kept, best first (best-of-N as a policy), and
    with ``min_reward`` only those scoring at least that. ``prompt_metadata[i]`` goes to the
    reward with prompt i's responses (e.g. its ground-truth ``answer``).
    """
    if reward is None and (keep_top is not None or min_reward is not None):
        raise ValueError("keeping the best responses needs a reward")
    batch = engine.generate(prompts, params)
    candidates = candidates_from_rollout(prompts, batch)
    if reward is None:
        return candidates
    scores = score_rollout(prompts, batch, reward, prompt_metadata)
    rewards = rewards_per_prompt(batch, scores)  # [P, N]
    if keep_top is None and min_reward is None:
        kept = [list(range(params.num_samples))] * len(candidates)
    else:
        kept = top_k_per_prompt(rewards, keep_top or params.num_samples, min_reward)
    return [
        CandidateRecord(
            candidate.prompt,
            tuple(candidate.responses[c] for c in columns),
            tuple(candidate.finished[c] for c in columns),
            tuple(candidate.logps[c] for c in columns),
            {"rewards": [round(row[c], 6) for c in columns]},
        )
        for candidate, columns, row in zip(candidates, kept, rewards.tolist(), strict=True)
    ]


def sample_to_file(
    engine: GenerationEngine,
    prompts: Sequence[Text],
    params: SamplingParams,
    output: str | Path,
    *,
    reward: RewardFunction | None = None,
    keep_top: int | None = None,
    prompt_metadata: Sequence[Mapping[str, Any]] | None = None,
    prompts_per_call: int = 256,
    progress: bool = True,
) -> dict[str, float]:
    """``rlhf sample``: candidates for every prompt, written to ``output`` as they come.

    Prompts go to the engine ``prompts_per_call`` at a time (bounding memory); group g
    samples with seed ``seed + g * 1_000_003`` so groups draw distinct random streams.
    Returns counts: prompts, responses, the share that ended with EOS (and mean reward).
    """
    from tqdm.auto import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    totals = {"prompts": 0.0, "responses": 0.0, "finished": 0.0, "reward_sum": 0.0}
    with (
        output.open("w", encoding="utf-8", errors="backslashreplace") as file,
        tqdm(total=len(prompts), unit="prompt", disable=not progress) as bar,
    ):
        for group, start in enumerate(range(0, len(prompts), prompts_per_call)):
            chunk = prompts[start : start + prompts_per_call]
            chunk_params = replace(params, seed=params.seed + group * 1_000_003)
            chunk_metadata = None
            if prompt_metadata is not None:
                chunk_metadata = prompt_metadata[start : start + prompts_per_call]
            for candidate in sample_candidates(
                engine, chunk, chunk_params, reward, keep_top, prompt_metadata=chunk_metadata
            ):
                file.write(json.dumps(candidate.to_dict(), ensure_ascii=False) + "\n")
                totals["prompts"] += 1
                totals["responses"] += len(candidate.responses)
                totals["finished"] += sum(candidate.finished)
                totals["reward_sum"] += sum(candidate.extra.get("rewards", []))
            bar.update(len(chunk))
    summary = {
        "prompts": totals["prompts"],
        "responses": totals["responses"],
        "finished_rate": totals["finished"] / max(totals["responses"], 1),
    }
    if reward is not None:
        summary["mean_reward"] = totals["reward_sum"] / max(totals["responses"], 1)
    return summary


def write_report(report: BestOfNReport, out: str | Path) -> dict[str, Path]:
    """``best_of_n.jsonl`` and ``.csv`` (one row per N), ``samples.jsonl`` (every sample with
    its rewards) and, when matplotlib is installed, ``best_of_n.png``."""
    from rlhf.rollout.candidates import write_candidates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(point) for point in report.points]
    paths = {"jsonl": out / "best_of_n.jsonl", "csv": out / "best_of_n.csv"}
    with paths["jsonl"].open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    with paths["csv"].open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["samples"] = write_candidates(out / "samples.jsonl", report.samples)
    plot = _plot(report, out / "best_of_n.png")
    if plot is not None:
        paths["png"] = plot
    return paths


def _plot(report: BestOfNReport, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no best_of_n.png (pip install matplotlib)")
        return None
    kl = [point.kl for point in report.points]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.errorbar(
        kl, [p.reward for p in report.points], [p.reward_se for p in report.points],
        marker="o", label="reward",
    )  # fmt: skip
    if report.points[0].gold is not None:
        axes.errorbar(
            kl, [p.gold for p in report.points], [p.gold_se for p in report.points],
            marker="s", label="gold reward",
        )  # fmt: skip
    for point in report.points:
        axes.annotate(f"N={point.n}", (point.kl, point.reward), fontsize=7)
    axes.set_xlabel("KL(best-of-N ‖ policy) = log N − (N−1)/N  [nats]")
    axes.set_ylabel("expected reward of the best")
    axes.set_title(f"best-of-N, {report.num_prompts} prompts")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report_table(report: BestOfNReport) -> object:
    """A rich table of the curve, for the console."""
    from rich.table import Table

    has_gold = report.points[0].gold is not None
    table = Table(title=f"best-of-N over {report.num_prompts} prompts")
    for name in ("N", "KL (nats)", "reward", *(["gold"] if has_gold else [])):
        table.add_column(name, justify="right")
    for point in report.points:
        cells = [str(point.n), f"{point.kl:.3f}", f"{point.reward:.4f} ± {point.reward_se:.4f}"]
        if has_gold:
            cells.append(f"{point.gold:.4f} ± {point.gold_se:.4f}")
        table.add_row(*cells)
    return table
