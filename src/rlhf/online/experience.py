"""The typed training buffer of online RL and the Trainer's loader over it.

:func:`build_experience` turns a rollout and its advantages into an :class:`Experience`;
:class:`ExperienceBuffer` asks the recipe's ``make_experience(iteration)`` for one whenever
the previous is used up and yields shuffled micro-batches of it for ``ppo_epochs`` passes.

Resume: checkpoints are taken at iteration (rollout) boundaries only. The buffer's state holds
the iteration number, the seed and the state of every stateful part the recipe registers (the
adaptive KL coefficient, REINFORCE's moving baseline, PPO's running reward moments);
everything random in an iteration (prompt order, sampling, minibatch order) is seeded by
(seed, iteration), so a resumed run continues exactly as if it had never stopped.

Shapes: N rows (prompts × samples), P prompt tokens, R response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from rlhf.losses.advantages import expand_to_tokens
from rlhf.losses.importance import ratio_band_mask, truncated_importance_weights
from rlhf.losses.policy import AGGREGATIONS, loss_units
from rlhf.online.settings import MismatchSettings
from rlhf.rollout.types import RolloutBatch

Metrics = dict[str, float]


@dataclass
class Experience:
    """Rows of experience: the whole buffer of a rollout, and each minibatch of it.

    The policy's current log-probs ``logps`` are not stored: the loss recomputes them, with
    gradients, from the ids.
    """

    prompt_ids: torch.Tensor  # [N, P] long: prompt tokens, left-padded
    prompt_mask: torch.Tensor  # [N, P] long: 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, R] long: sampled tokens through the first EOS, then pad
    mask: torch.Tensor  # [N, R] float32: 1 on response tokens that enter the loss (0 on pad
    # and on rows the algorithm dropped)
    old_logps: torch.Tensor | None  # [N, R] float32: log π_old at sampling time (temperature T),
    # frozen; None when the rollout trains one optimiser step only: then π_old is the policy of
    # that step and the loss takes its own log-probs, detached (see phases.needs_old_logps)
    ref_logps: torch.Tensor | None  # [N, R] float32: log π_ref (None: no reference)
    advantages: torch.Tensor  # [N, R] float32: per-token advantages (0 off the mask)
    returns: torch.Tensor | None  # [N, R] float32: value targets (PPO; None otherwise)
    values: torch.Tensor | None  # [N, R] float32: values at rollout time (PPO; None otherwise)
    scores: torch.Tensor  # [N] float32: the reward of each response (no KL)
    group: torch.Tensor  # [N] long: which prompt of the rollout the row answers
    aggregation: str = "token"  # how the loss is reduced (rlhf.losses.policy.aggregate)
    max_length: int = 1  # max_new_tokens: the constant of aggregation "constant"
    temperature: float = 1.0  # the temperature log-probs are taken at
    kl_coef: float = 0.0  # β of the rollout (for a KL loss term)
    metrics: Metrics = field(default_factory=dict)  # rollout metrics (first micro-batch only)
    # rows 2i and 2i+1 are one preference pair (chosen, rejected) and the loss is a mean over
    # pairs (online preference optimisation); a pair left out has both rows masked
    pairs: bool = False

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def loss_units(self) -> int:
        """What the loss is a mean over (:func:`rlhf.losses.policy.loss_units`): with
        :attr:`pairs`, the pairs whose rows are in the loss."""
        if self.pairs:
            return loss_units(self.mask, "sequence") // 2
        return loss_units(self.mask, self.aggregation)

    @property
    def num_tokens(self) -> int:
        return int(self.prompt_mask.sum() + self.mask.sum())

    def select(self, rows: torch.Tensor | Sequence[int]) -> Experience:
        """The rows ``rows`` (a minibatch), without the rollout metrics."""
        index = torch.as_tensor(rows, dtype=torch.long)
        values = {
            f.name: value[index] if isinstance(value, torch.Tensor) else value
            for f in fields(self)
            for value in (getattr(self, f.name),)
        }
        values["metrics"] = {}
        return Experience(**values)

    def to(self, device: torch.device | str) -> Experience:
        values = {
            f.name: value.to(device) if isinstance(value, torch.Tensor) else value
            for f in fields(self)
            for value in (getattr(self, f.name),)
        }
        return Experience(**values)


def build_experience(
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    scores: torch.Tensor,
    ref_logps: torch.Tensor | None,
    kl_coef: float,
    max_new_tokens: int,
    logp_temperature: float,
    aggregation: str = "token",
    keep: torch.Tensor | None = None,
    returns: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    metrics: Metrics | None = None,
    mismatch: MismatchSettings | None = None,
) -> Experience:
    """The experience of one rollout.

    ``advantages`` [N] per sequence (spread over its tokens) or [N, R] per token; ``keep`` [N]
    bool marks the rows that enter the loss (None: all; e.g. GRPO dropping tied groups).
    ``logp_temperature`` is the temperature the log-probs are taken at
    (:attr:`rlhf.rollout.types.SamplingConfig.logp_temperature`). The
    metrics gain the mean and std of the advantages over the tokens in the loss.

    ``mismatch``: for a rollout of an engine that samples from a copy of the weights (its
    ``engine_logps`` beside the trainer's ``logps``), a correction of the train–inference
    mismatch scales each token's advantage by its weight (truncated importance ratio, or 0/1
    for masking; :mod:`rlhf.losses.importance`). Scaling the advantage by w ≥ 0 scales the
    clipped surrogate's term by w, since ``min(r·A·w, clip(r)·A·w) = w·min(r·A, clip(r)·A)``;
    a masked token also leaves the mask, so no loss term or count includes it.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = batch.response_mask.float()
    if keep is not None:
        mask = mask * keep.float()[:, None]
    advantages = advantages.float()
    if advantages.ndim == 1:
        advantages = expand_to_tokens(advantages, mask)
    advantages = advantages * mask
    metrics = dict(metrics or {})
    if mismatch is not None and mismatch.correction != "none":
        weights = correction_weights(batch, mask, mismatch)
        advantages = advantages * weights
        real = mask.bool()
        if real.any():
            metrics["rollout_correction_weight_mean"] = float(weights[real].mean())
            metrics["rollout_correction_zeroed"] = float((weights[real] == 0).float().mean())
        if mismatch.correction == "mask":  # left out of the loss altogether (KL term, counts)
            mask = mask * weights
    real = mask.bool()
    if real.any():
        metrics["rollout_advantage_mean"] = float(advantages[real].mean())
        metrics["rollout_advantage_std"] = float(advantages[real].std(unbiased=False))
    return Experience(
        prompt_ids=batch.prompt_ids,
        prompt_mask=batch.prompt_mask,
        response_ids=batch.response_ids,
        mask=mask,
        old_logps=None if batch.logps is None else batch.logps.float(),
        ref_logps=ref_logps,
        advantages=advantages,
        returns=returns,
        values=values,
        scores=scores,
        group=batch.prompt_index,
        aggregation=aggregation,
        max_length=max_new_tokens,
        temperature=logp_temperature,
        kl_coef=kl_coef,
        metrics=metrics,
    )


def correction_weights(
    batch: RolloutBatch, mask: torch.Tensor, mismatch: MismatchSettings
) -> torch.Tensor:
    """[N, R] per-token weights of ``mismatch.correction`` (truncated IS or a 0/1 mask)."""
    if batch.engine_logps is None or batch.logps is None:
        raise ValueError(
            f"mismatch.correction={mismatch.correction} needs the engine's sampling log-probs "
            "and the trainer's (sampling.engine=vllm returns both); this engine samples from "
            "the trainer's own weights: set mismatch.correction=none"
        )
    if mismatch.correction == "truncated_is":
        return truncated_importance_weights(batch.logps, batch.engine_logps, mask, mismatch.is_cap)
    low, high = mismatch.band
    return ratio_band_mask(batch.logps, batch.engine_logps, mask, low, high)


class Stateful(Protocol):
    """A part of an online run whose state is checkpointed with the buffer."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class ExperienceBuffer:
    """The Trainer's loader for online RL: calls ``make_experience(iteration)`` whenever its
    buffer is used up, then yields shuffled micro-batches for ``ppo_epochs`` passes.

    ``len(buffer)`` is micro-batches per iteration; ``epoch`` counts finished iterations and
    ``position`` the micro-batches taken from the current one. ``state`` names the stateful
    parts checkpointed with it (their keys are the checkpoint's). ``group_size``: rows are
    shuffled, batched and shared over ranks in runs of that many consecutive rows, which stay
    together (a preference pair's two rows: 2).
    """

    def __init__(
        self,
        make_experience: Callable[[int], Experience],
        *,
        episodes: int,
        micro_batch_size: int,
        ppo_epochs: int = 1,
        seed: int = 0,
        state: Mapping[str, Stateful] | None = None,
        group_size: int = 1,
    ) -> None:
        if episodes % micro_batch_size:
            raise ValueError(
                f"{episodes} episodes per rollout do not split into micro-batches of "
                f"{micro_batch_size}"
            )
        if micro_batch_size % group_size:
            raise ValueError(
                f"micro-batches of {micro_batch_size} rows do not hold whole groups of "
                f"{group_size} rows (train.batch_size must be a multiple of {group_size})"
            )
        self.group_size = group_size
        self.make_experience, self.episodes = make_experience, episodes
        self.micro_batch_size, self.ppo_epochs, self.seed = micro_batch_size, ppo_epochs, seed
        self.state = dict(state or {})
        self.iteration = 0
        self.position = len(self)  # used up: the first next_batch collects
        self._rank, self._world = 0, 1
        self.experience: Experience | None = None
        self._order: list[int] = []

    def __len__(self) -> int:
        return self.ppo_epochs * self.episodes // self.micro_batch_size

    @property
    def epoch(self) -> int:
        return max(self.iteration - 1, 0)

    def _next_rollout(self) -> None:
        self.iteration += 1
        self.experience = self.make_experience(self.iteration)
        if len(self.experience) != self.episodes:
            raise ValueError(
                f"make_experience returned {len(self.experience)} rows, expected {self.episodes}"
            )
        # minibatch order: one seeded permutation (of groups of rows) per ppo epoch
        self._order = []
        size = self.group_size
        for epoch in range(self.ppo_epochs):
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.iteration * 1_009 + epoch
            )
            groups = torch.randperm(self.episodes // size, generator=generator).tolist()
            self._order.extend(group * size + offset for group in groups for offset in range(size))
        self.position = 0

    def shard(self, rank: int, world: int) -> None:
        """Train on rank ``rank``'s share (every ``world``-th row) of each micro-batch; every
        rank holds the whole rollout (the same one), so the state is the whole buffer's."""
        if self.micro_batch_size < world * self.group_size:
            raise ValueError(
                f"train.batch_size {self.micro_batch_size} is smaller than the {world} training "
                f"ranks (distributed.train_workers) × {self.group_size}: each rank needs a "
                f"group of {self.group_size} rows"
            )
        self._rank, self._world = rank, world

    def next_batch(self) -> Experience:
        """The next micro-batch, collecting a new rollout when the buffer is used up."""
        if self.experience is None or self.position >= len(self):
            self._next_rollout()
        assert self.experience is not None
        start = self.position * self.micro_batch_size
        rows = self._order[start : start + self.micro_batch_size]
        size = self.group_size  # each rank takes every world-th group of rows
        rows = [
            row for index, row in enumerate(rows) if (index // size) % self._world == self._rank
        ]
        batch = self.experience.select(rows)
        if self.position == 0:
            batch.metrics = self.experience.metrics
        self.position += 1
        return batch

    def end_iteration(self) -> None:
        """Skip the rest of this rollout's micro-batches: the next one collects a new rollout
        (PPO's early stop on the approximate KL; call it between optimiser steps)."""
        self.position = len(self)

    # ---------------------------------------------------------------- resume
    @property
    def can_checkpoint(self) -> bool:
        """Only between rollouts: the buffer of a rollout in progress is not checkpointed."""
        return self.experience is None or self.position >= len(self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "position": self.position,
            "seed": self.seed,
            **{name: part.state_dict() for name, part in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        position, total = state["position"], len(self)
        if state["iteration"] > 0 and position != total:
            raise ValueError(
                f"this checkpoint was taken inside iteration {state['iteration']} (micro-batch "
                f"{position} of {total}); online runs resume only from iteration boundaries"
            )
        missing = sorted(set(self.state) - set(state))
        if missing:
            raise ValueError(f"the checkpoint's loader state lacks {missing}")
        if state["seed"] != self.seed:
            # prompt order and sampling follow the config's seed: a run resumed with another
            # would continue on other prompts and samples than the checkpoint's
            raise ValueError(
                f"the checkpoint was taken with train.seed {state['seed']}, this run has "
                f"{self.seed}: resume an online run with its own seed"
            )
        self.iteration = state["iteration"]
        self.position = total
        self.experience = None
        for name, part in self.state.items():
            part.load_state_dict(state[name])
