"""Sampling K candidates per prompt from a policy, scored and ranked when a reward is given:
``rlhf sample``'s candidates files, the pipeline's feedback stage, the web app's sampler, and
best-of-N as a policy (keep the best k of N).

Here rather than in :mod:`rlhf.rollout` because ranking needs the rewards, which sit above the
rollout layer; every recipe and command that samples candidates imports it from here.

Shapes: P prompts, K (or N) samples per prompt, B = P·K rows of a prompt-major rollout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.rewards.base import RewardFunction, score_rollout
from rlhf.rollout.candidates import CandidateRecord, candidates_from_rollout
from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingParams


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
    scores = score_rollout(reward, prompts, batch, prompt_metadata).scores  # [B]
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
