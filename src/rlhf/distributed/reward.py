"""Reward workers: Ray actors that score rollouts, so a reward model (or a local judge) lives in
a process of its own rather than beside the policy in every training rank.

:class:`RewardWorker` builds the reward the run's ``reward`` section names (the same
:func:`rlhf.rewards.spec.build_reward` a single process calls) and scores rows with it;
:class:`RemoteReward` is the trainer's side, a :class:`~rlhf.rewards.base.Reward` over those
actors. A rollout's rows are split into contiguous chunks, one per worker, scored at the same
time; the scores, the composite's components and any per-token rewards come back as the
local reward would return them. With several training ranks, rank 0 asks and the others
receive its answer, so the workers score each rollout once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.distributed.workers import split_rows, where, worker_call
from rlhf.models.parallel import broadcast_object, is_main_process
from rlhf.rewards.base import Metadata, Reward, RewardOutput, score_reward

logger = logging.getLogger("rlhf.distributed")


class RewardWorker:
    """One reward worker (a Ray actor: ``ray.remote(RewardWorker).options(...).remote(
    threads=..., index=...)``): the run's reward, built in this process."""

    def __init__(self, threads: int, index: int) -> None:
        torch.set_num_threads(threads)  # its reserved cores only
        self.index = index
        self.reward: Any = None

    def info(self) -> dict[str, Any]:
        """Where this worker runs (the launcher logs it)."""
        return where()

    def setup(self, spec: dict[str, Any], cwd: str) -> str:
        """Build the reward ``spec`` (a ``reward`` section, as JSON) names, relative paths in
        it read from ``cwd`` (the trainer's folder, where it exists on this node); returns its
        repr."""
        from rlhf.rewards.spec import RewardSpec, build_reward

        if os.path.isdir(cwd):
            os.chdir(cwd)

        self.reward = build_reward(RewardSpec.model_validate(spec))
        return repr(self.reward)

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata
    ) -> RewardOutput:
        if self.reward is None:
            raise RuntimeError(f"reward worker {self.index}: setup() was never called")
        return score_reward(self.reward, prompts, responses, metadata)

    def close(self) -> None:
        self.reward = None


def _places_on_tokens(spec: dict[str, Any]) -> bool:
    """Whether the reward ``spec`` (a RewardSpec's dict) reads token ends: a dense PRM, alone
    or in a composite."""
    parts = (spec.get("composite") or {}).values()
    return bool(spec.get("prm_dense")) or any(_places_on_tokens(part) for part in parts)


class RemoteReward(Reward):
    """The reward computed on reward workers (see the module docstring)."""

    def __init__(self, spec: dict[str, Any], workers: Sequence[Any]) -> None:
        if not workers:
            raise ValueError("RemoteReward needs at least one reward worker")
        self.workers = list(workers)
        # a dense PRM places its reward on tokens: the rollout's token ends must reach it
        self.reads_token_ends = _places_on_tokens(spec)
        if is_main_process():  # the reward is built (a model loaded) once per worker
            built = [worker.setup.remote(spec, os.getcwd()) for worker in self.workers]
            for index, ref in enumerate(built):
                name = worker_call("reward worker", index, ref)
                logger.info("reward worker %d: %s", index, name)

    def __repr__(self) -> str:
        return f"RemoteReward({len(self.workers)} workers)"

    def score(
        self, prompts: Sequence[Text], responses: Sequence[str], metadata: Metadata = None
    ) -> RewardOutput:
        output = None
        if is_main_process():
            chunks = split_rows(len(responses), len(self.workers))
            calls = [
                worker.score.remote(
                    list(prompts[start:end]),
                    list(responses[start:end]),
                    None if metadata is None else list(metadata[start:end]),
                )
                for worker, (start, end) in zip(self.workers, chunks, strict=False)
            ]
            parts = [worker_call("reward worker", i, ref) for i, ref in enumerate(calls)]
            output = joined(parts)
        return broadcast_object(output)


def joined(parts: Sequence[RewardOutput]) -> RewardOutput:
    """The outputs of consecutive chunks of rows as one (per-token rewards right-padded with
    zeros to the widest chunk's width)."""
    scores = torch.cat([part.scores for part in parts])
    names = parts[0].components.keys()
    components = {name: torch.cat([part.components[name] for part in parts]) for name in names}
    token_rewards = None
    if parts[0].token_rewards is not None:
        width = max(part.token_rewards.shape[1] for part in parts)  # type: ignore[union-attr]
        token_rewards = torch.cat(
            [
                torch.nn.functional.pad(
                    part.token_rewards, (0, width - part.token_rewards.shape[1])
                )
                for part in parts
                if part.token_rewards is not None
            ]
        )
    return RewardOutput(scores, components, token_rewards)


def remote_reward(spec: dict[str, Any], workers: Sequence[Any]) -> RemoteReward:
    """The run's reward on ``workers`` (what ``prepare_online`` uses with
    ``distributed.reward_workers``)."""
    return RemoteReward(spec, workers)
