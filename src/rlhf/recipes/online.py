"""Online RL on language models: the rollout → experience → update loop every online recipe shares.

GRPO, RLOO, REINFORCE, ReMax (and PPO, with a critic) differ only in how a rollout's rewards
become advantages and in the loss; everything else lives here and runs on the one
:class:`rlhf.engine.trainer.Trainer`, unchanged:

1. **Rollout** (:class:`ExperienceLoader`, when its buffer is used up): the next
   ``prompts_per_iteration`` prompts of a seeded shuffle of the training prompts (cycling) →
   ``samples_per_prompt`` responses each from the *current* policy
   (:class:`~rlhf.rollout.hf.HFGenerationEngine`, seeded by the iteration) → rewards (the
   reward sees each row's metadata: EOS reached, token count, so missing-EOS and length
   penalties work) → old log-probs (the engine's teacher-forced recomputation at the sampling
   temperature) and reference log-probs → advantages (an :class:`AdvantageEstimator`, the
   algorithm's hook) → an :class:`Experience`.
2. **Update**: ``ppo_epochs`` passes over the experience in shuffled minibatches of
   ``rollout.minibatch_size`` episodes; one Trainer step is one minibatch (``train.batch_size``
   rows per micro-batch, ``grad_accum`` = minibatch_size / batch_size of them). The loss
   (:func:`policy_gradient_loss` for the critic-free methods) recomputes ``logps`` with
   gradients and applies the clipped surrogate and the KL term from :mod:`rlhf.losses`.

Interfaces (stable; the PPO recipe builds on them):

* :class:`Rollout`: what one collection produced, before advantages (sampled batch, scores,
  reward components, reference log-probs, per-token KL estimate, the current KL coefficient,
  ReMax's greedy scores). :meth:`Rollout.sequence_rewards` is the score with the sequence KL
  penalty subtracted when the KL goes into the reward.
* :class:`Advantages`: what an estimator returns: ``advantages`` ([N] per sequence or [N, R]
  per token), optional ``returns`` / ``values`` [N, R], optional ``keep`` [N] (rows that enter
  the loss; e.g. GRPO dropping tied groups) and ``metrics``.
* :class:`AdvantageEstimator`: ``estimator(rollout) -> Advantages`` plus
  ``state_dict()/load_state_dict()`` (saved in the checkpoint: REINFORCE's moving baseline) and
  ``needs_greedy`` (ReMax: the loader also decodes each prompt greedily and scores it).
* :class:`Experience`: the typed training buffer and minibatch (the Trainer's batch):
  ``prompt_ids``, ``prompt_mask``, ``response_ids``, ``mask``, ``old_logps``, ``ref_logps``,
  ``advantages``, ``returns``, ``values``, ``scores``, ``group``; ``loss_units`` follows
  ``aggregation`` (:func:`rlhf.losses.policy.loss_units`).
* :class:`ExperienceLoader`: the Trainer's loader (``next_batch``, ``__len__``, ``epoch``,
  ``position``, ``state_dict``/``load_state_dict``); ``end_iteration()`` skips the rest of a
  rollout (PPO's early stop); ``last_rollout`` is the latest :class:`Rollout`.
* :func:`policy_logps` (``log π_θ`` of a minibatch's response tokens, with gradients) and
  :func:`policy_gradient_loss` (the critic-free loss).
* :func:`run_online`: a whole recipe given its config and estimator; optional ``loss_fn``,
  ``wrap_model`` (the module trained, e.g. policy + critic) and ``callbacks``.

Resume: checkpoints are taken at iteration (rollout) boundaries only: ``train.save_every`` is
rounded up to whole iterations. The loader state holds the iteration number, the prompt-order
seed, the estimator's state and the KL coefficient; everything random in an iteration (prompt
order, sampling, minibatch order) is seeded by (seed, iteration), so a resumed run continues
exactly as if it had never stopped.

Rollout metrics (``rollout_*``: reward and its components, KL to the reference, response
length, EOS rate, tied groups, prompts cut at their start to fit beside the response
(``rollout_truncated_prompts``), ...) ride on the first micro-batch of each iteration and are
returned by the loss function, so they reach ``metrics.jsonl`` in that step's row.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Literal, Protocol

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.engine.trainer import StepCallback, TrainConfig, Trainer, resolve_device
from rlhf.losses.advantages import expand_to_tokens
from rlhf.losses.kl import per_token_kl
from rlhf.losses.policy import AGGREGATIONS, kl_penalty_loss, loss_units, ppo_policy_loss
from rlhf.models.reference import ReferenceModel, is_lora
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    ReferenceDtype,
    RunResult,
    build_model_and_tokenizer,
    prepare_out_dir,
    reference_dtype_field,
)
from rlhf.recipes.lm import exporter
from rlhf.recipes.raft import InitSFTConfig, initial_policy, round_prompts
from rlhf.rewards.base import RewardFunction, RewardOutput, rollout_metadata, score_reward
from rlhf.rewards.spec import RewardSpec, build_reward
from rlhf.rollout.types import RolloutBatch, SamplingConfig, SamplingParams

logger = logging.getLogger("rlhf")

Metrics = dict[str, float]

# ------------------------------------------------------------------------------ config


class OnlineDataConfig(StrictModel):
    prompts: str = Field(
        description="Training prompts: any file with a prompt field (or conversations), or "
        "builtin:NAME."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map our field names to the prompt file's columns."
    )
    eval_prompts: str | None = Field(
        None,
        description="Held-out prompts (a file like `prompts`); default: `eval.prompts` of the "
        "training prompts are held out (never trained on).",
    )
    answer_field: str | None = Field(
        None,
        description="A column of the prompt files holding each prompt's ground truth, passed to "
        "the reward as metadata `answer` (e.g. answer for GSM8K and reward.rule=gsm8k).",
    )


class OnlineReferenceConfig(StrictModel):
    path: str | None = Field(
        None,
        description="The reference π_ref (folder or hub name). Default: a frozen copy of the "
        "initial policy (with LoRA: the base model, adapter disabled).",
    )
    dtype: ReferenceDtype | None = reference_dtype_field()


class RolloutSettings(StrictModel):
    iterations: int = Field(10, ge=1, description="Rollouts collected (and trained on).")
    prompts_per_iteration: int = Field(
        64, ge=1, description="Prompts per rollout (cycling through a seeded shuffle)."
    )
    samples_per_prompt: int = Field(4, ge=1, description="K: responses sampled per prompt.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout's experience.")
    minibatch_size: int | None = Field(
        None,
        ge=1,
        description="Episodes per optimiser step (default train.batch_size × train.grad_accum); "
        "when set, grad_accum = minibatch_size / train.batch_size.",
    )


class KLSettings(StrictModel):
    """The KL(π‖π_ref) regulariser: in the reward (k1, PPO style) or as a loss term (k2/k3)."""

    coef: float = Field(0.05, ge=0, description="β (0: no KL term and no reference model).")
    estimator: Literal["k1", "k2", "k3"] = Field(
        "k1",
        description="Per-token estimator (Schulman 2020): k1 in the reward, k2/k3 in the loss.",
    )
    in_reward: bool = Field(
        True, description="Subtract β·KL from the reward (true) or add β·KL to the loss (false)."
    )
    clamp: float | None = Field(None, gt=0, description="Clamp log(π_ref/π) to ±clamp first.")
    max_kl: float | None = Field(None, gt=0, description="Clamp the per-token estimate to ±max_kl.")
    target: float | None = Field(
        None,
        gt=0,
        description="Adaptive β (Ziegler et al. 2019): the target sequence KL (null: fixed β).",
    )
    horizon: int = Field(10000, ge=1, description="Adaptive β: episodes over which β adapts.")

    @model_validator(mode="after")
    def _estimator_fits(self) -> KLSettings:
        if not self.in_reward and self.estimator == "k1" and self.coef > 0:
            raise ValueError(
                "kl.estimator k1 has zero expected gradient as a loss term: with "
                "kl.in_reward=false use k2 or k3"
            )
        return self


class PolicyLossSettings(StrictModel):
    clip_eps: float = Field(0.2, gt=0, description="ε of the clipped surrogate.")
    clip_eps_high: float | None = Field(
        None, gt=0, description="Upper ε (DAPO clip-higher); null: clip_eps."
    )
    aggregation: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="Loss reduction: token (mean over the step's tokens), sequence (mean of "
        "per-response means) or constant (sum / max_new_tokens per response, Dr. GRPO).",
    )


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


class OnlineConfig(RecipeConfig):
    """Settings every online recipe shares; each recipe adds its own section."""

    model: ModelConfig = Field(description="The starting policy (or a tiny one for init_sft).")
    init_sft: InitSFTConfig | None = Field(
        None, description="Fine-tune the starting model on demonstrations first."
    )
    reference: OnlineReferenceConfig = Field(
        default_factory=OnlineReferenceConfig, description="The reference policy π_ref."
    )
    data: OnlineDataConfig = Field(description="Prompts.")
    reward: RewardSpec = Field(
        description="{model: PATH}, {rule: NAME}, a judge or a composite (docs/rewards.md)."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling.")
    rollout: RolloutSettings = Field(default_factory=RolloutSettings, description="Rollouts.")
    kl: KLSettings = Field(default_factory=KLSettings, description="KL to the reference.")
    policy: PolicyLossSettings = Field(
        default_factory=PolicyLossSettings, description="The clipped policy loss."
    )
    # lr 1e-6: the policy update of DeepSeekMath's GRPO (Shao et al. 2024, §4.2)
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-6), description="Optimisation."
    )
    eval: OnlineEvalConfig = Field(
        default_factory=OnlineEvalConfig, description="Held-out evaluation."
    )

    @model_validator(mode="after")
    def _consistent(self) -> OnlineConfig:
        if self.model.tiny is not None and self.init_sft is None:
            raise ValueError("model.tiny starts from random weights: set init_sft to train it")
        if self.train.max_steps is not None:
            raise ValueError(
                "train.max_steps: online recipes count rollout.iterations instead; leave it unset"
            )
        self.steps_per_iteration()  # raises on inconsistent sizes
        return self

    @property
    def episodes_per_iteration(self) -> int:
        return self.rollout.prompts_per_iteration * self.rollout.samples_per_prompt

    @property
    def minibatch_size(self) -> int:
        return self.rollout.minibatch_size or self.train.batch_size * self.train.grad_accum

    @property
    def grad_accum(self) -> int:
        return self.minibatch_size // self.train.batch_size

    def steps_per_iteration(self) -> int:
        """Optimiser steps per rollout: ppo_epochs × episodes / minibatch_size."""
        episodes, minibatch = self.episodes_per_iteration, self.minibatch_size
        if minibatch % self.train.batch_size:
            raise ValueError(
                f"rollout.minibatch_size {minibatch} must be a multiple of train.batch_size "
                f"{self.train.batch_size}"
            )
        if self.rollout.minibatch_size is not None and self.train.grad_accum not in (
            1,
            self.grad_accum,
        ):
            raise ValueError(
                "train.grad_accum: with rollout.minibatch_size set it is minibatch_size / "
                "batch_size; leave it at 1"
            )
        if episodes % minibatch:
            raise ValueError(
                f"rollout.prompts_per_iteration × samples_per_prompt = {episodes} episodes must "
                f"be a multiple of the minibatch size {minibatch}"
            )
        return self.rollout.ppo_epochs * episodes // minibatch

    def derived_train(self) -> TrainConfig:
        """train with max_steps, grad_accum and save_every (whole iterations) filled in."""
        per = self.steps_per_iteration()
        save = self.train.save_every
        return self.train.model_copy(
            update={
                "max_steps": per * self.rollout.iterations,
                "grad_accum": self.grad_accum,
                "save_every": math.ceil(save / per) * per if save else 0,
            }
        )


# ------------------------------------------------------------------------------ the KL coefficient


class AdaptiveKLController:
    """Ziegler et al. (2019, §2.2) adaptive β: after a rollout of ``n`` episodes with mean
    sequence KL ``KL``, ``β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n / horizon)``.
    ``target`` None keeps β fixed."""

    def __init__(self, coef: float, target: float | None, horizon: int) -> None:
        self.coef, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, episodes: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * episodes / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(state["coef"])


# ------------------------------------------------------------------------------ typed data


@dataclass
class Rollout:
    """One collection, before advantages. N = prompts × K rows, prompt-major (the K samples of
    prompt g are rows g·K … g·K + K − 1), R response tokens."""

    batch: RolloutBatch  # N rows: ids, masks, old log-probs [N, R], ended_with_eos, texts
    prompts: list[Text]  # [P] the prompts sampled from
    scores: torch.Tensor  # [N] float32: the reward (penalties included), no KL
    reward: RewardOutput  # scores, per-component rewards, optional per-token rewards
    ref_logps: torch.Tensor | None  # [N, R] float32 log π_ref of the sampled tokens, 0 on pad
    kl: torch.Tensor | None  # [N, R] float32 per-token KL estimate (kl.estimator), 0 on pad
    kl_coef: float  # β for this rollout (the adaptive controller's current value)
    kl_in_reward: bool  # whether β·KL is subtracted from the reward (else it is a loss term)
    group_size: int  # K
    iteration: int  # 1-based
    greedy_scores: torch.Tensor | None = None  # [N] float32: ReMax's greedy reward, per row

    @property
    def mask(self) -> torch.Tensor:
        """[N, R] float32: 1 on real response tokens (EOS included)."""
        return self.batch.response_mask.float()

    def sequence_rewards(self) -> torch.Tensor:
        """[N] the reward the critic-free estimators use: ``score − β · Σ_t kl_t`` when the KL
        goes into the reward (the sequence form of Ziegler et al.'s penalty), else the score."""
        if not self.kl_in_reward or self.kl is None or self.kl_coef == 0:
            return self.scores
        return self.scores - self.kl_coef * self.kl.sum(-1)


@dataclass
class Advantages:
    """What an :class:`AdvantageEstimator` makes of a rollout."""

    advantages: torch.Tensor  # [N] per sequence (broadcast over its tokens) or [N, R] per token
    returns: torch.Tensor | None = None  # [N, R] value targets (PPO)
    values: torch.Tensor | None = None  # [N, R] value predictions at rollout time (PPO)
    keep: torch.Tensor | None = None  # [N] bool: rows that enter the loss (None: all)
    metrics: Metrics = field(default_factory=dict)  # logged as rollout_<name>


class AdvantageEstimator(Protocol):
    """An algorithm's hook: a rollout's rewards → advantages. An estimator that reads the
    rollout's old log-probs (``rollout.batch.logps``) says so with a ``needs_logps = True``
    attribute (PPO), so they are computed even for one optimiser step per rollout."""

    needs_greedy: bool  # ReMax: the loader adds each prompt's greedy-decoding reward

    def __call__(self, rollout: Rollout) -> Advantages: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class StatelessEstimator:
    """Base for estimators with nothing to checkpoint."""

    needs_greedy = False

    def __call__(self, rollout: Rollout) -> Advantages:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass
class Experience:
    """Rows of experience: the whole buffer of a rollout, and each minibatch of it.

    N rows, P prompt tokens, R response tokens. The policy's current log-probs ``logps`` are
    not stored: the loss recomputes them, with gradients, from the ids.
    """

    prompt_ids: torch.Tensor  # [N, P] long: prompt tokens, left-padded
    prompt_mask: torch.Tensor  # [N, P] long: 1 on real prompt tokens
    response_ids: torch.Tensor  # [N, R] long: sampled tokens through the first EOS, then pad
    mask: torch.Tensor  # [N, R] float32: 1 on response tokens that enter the loss (0 on pad
    # and on rows an estimator dropped)
    old_logps: torch.Tensor | None  # [N, R] float32: log π_old at sampling time (temperature T),
    # frozen; None when the rollout trains one optimiser step only: then π_old is the policy of
    # that step and the loss takes its own log-probs, detached (see ExperienceLoader)
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

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def loss_units(self) -> int:
        """Tokens (aggregation "token") or rows with a token in the loss (the others)."""
        if self.aggregation == "token":
            return loss_units(self.mask, "token")
        return int(self.mask.bool().any(-1).sum())

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


# ------------------------------------------------------------------------------ the loader


def reference_logps(
    reference: ReferenceModel, batch: RolloutBatch, temperature: float, batch_size: int
) -> torch.Tensor:
    """[N, R] log π_ref of a rollout's sampled tokens at ``temperature`` (0 on padding)."""
    from rlhf.models.teacher_forcing import response_logprobs

    with reference.active() as module:
        return response_logprobs(
            module,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.response_ids,
            batch.response_mask,
            temperature=temperature,
            batch_size=batch_size,
            groups=batch.prompt_index,
        ).cpu()


def one_step_per_rollout(rollout: RolloutSettings, episodes: int, minibatch_size: int) -> bool:
    """Whether each rollout trains exactly one optimiser step (one epoch, one minibatch)."""
    return rollout.ppo_epochs == 1 and minibatch_size == episodes


def needs_old_logps(
    rollout: RolloutSettings,
    kl: KLSettings,
    estimator: AdvantageEstimator,
    *,
    episodes: int,
    minibatch_size: int,
) -> bool:
    """Whether a rollout must recompute the sampling policy's log-probs (``batch.logps``).

    Not when each rollout trains one optimiser step and nothing else reads them: that step's
    policy *is* the sampling policy, so its own log-probs, detached, are the old ones (the
    ratio is exactly 1, as in TRL's GRPO with ``num_iterations=1``) and the forward pass is
    saved. They are needed for several steps per rollout (the ratio moves away from 1), for
    the KL in the reward and the adaptive KL coefficient (both read the rollout's KL before
    the update), and by estimators that read them (``needs_logps``: PPO's per-token rewards).
    """
    return (
        not one_step_per_rollout(rollout, episodes, minibatch_size)
        or (kl.in_reward and kl.coef > 0)
        or kl.target is not None
        or getattr(estimator, "needs_logps", False)
    )


class ExperienceLoader:
    """The Trainer's loader for online RL: collects a rollout whenever its buffer is used up,
    then yields shuffled micro-batches for ``ppo_epochs`` passes (see the module docstring).

    ``len(loader)`` is micro-batches per iteration; ``epoch`` counts finished iterations and
    ``position`` the micro-batches taken from the current one. ``old_logps`` False samples
    without the old log-probs (:func:`needs_old_logps` says when that is allowed): the
    experience's ``old_logps`` is None and the loss uses its own, detached.
    """

    def __init__(
        self,
        *,
        engine: Any,
        reward: RewardFunction,
        estimator: AdvantageEstimator,
        prompts: Sequence[Text],
        prompt_metadata: Sequence[Mapping[str, Any]] | None,
        reference: ReferenceModel | None,
        sampling: SamplingConfig,
        rollout: RolloutSettings,
        kl: KLSettings,
        micro_batch_size: int,
        aggregation: str = "token",
        seed: int = 0,
        old_logps: bool = True,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        episodes = rollout.prompts_per_iteration * rollout.samples_per_prompt
        if episodes % micro_batch_size:
            raise ValueError(
                f"{episodes} episodes per rollout do not split into micro-batches of "
                f"{micro_batch_size}"
            )
        self.engine, self.reward, self.estimator = engine, reward, estimator
        self.prompts, self.prompt_metadata = list(prompts), prompt_metadata
        self.reference, self.sampling, self.settings, self.kl = reference, sampling, rollout, kl
        self.micro_batch_size, self.aggregation, self.seed = micro_batch_size, aggregation, seed
        if not old_logps and needs_old_logps(
            rollout, kl, estimator, episodes=episodes, minibatch_size=episodes
        ):
            raise ValueError(
                "old_logps=False needs one optimiser step per rollout, no KL in the reward, a "
                "fixed KL coefficient and an estimator that does not read them"
            )
        self.old_logps = old_logps
        self.controller = AdaptiveKLController(kl.coef, kl.target, kl.horizon)
        self.iteration = 0
        self.position = len(self)  # used up: the first next_batch collects
        self.experience: Experience | None = None
        self._order: list[int] = []
        self.last_rollout: Rollout | None = None

    def __len__(self) -> int:
        episodes = self.settings.prompts_per_iteration * self.settings.samples_per_prompt
        return self.settings.ppo_epochs * episodes // self.micro_batch_size

    @property
    def epoch(self) -> int:
        return max(self.iteration - 1, 0)

    # ---------------------------------------------------------------- rollout
    def iteration_prompts(self, iteration: int) -> list[int]:
        """Indices of the prompts of rollout ``iteration`` (1-based): the next slice of a
        seeded shuffle, wrapping around."""
        count = self.settings.prompts_per_iteration
        indices = list(range(len(self.prompts)))
        return round_prompts(indices, count, (iteration - 1) * count, self.seed)  # type: ignore[arg-type]

    def score(
        self, prompts: Sequence[Text], batch: RolloutBatch, indices: Sequence[int]
    ) -> RewardOutput:
        metadata = None
        if self.prompt_metadata is not None:
            metadata = [self.prompt_metadata[i] for i in indices]
        rows = [prompts[i] for i in batch.prompt_index.tolist()]
        return score_reward(
            self.reward, rows, batch.response_texts, rollout_metadata(batch, metadata)
        )

    def collect(self, iteration: int) -> Rollout:
        """Sample, score and compute reference log-probs for rollout ``iteration``."""
        indices = self.iteration_prompts(iteration)
        prompts = [self.prompts[i] for i in indices]
        k = self.settings.samples_per_prompt
        params = self.sampling.params(
            num_samples=k, seed=self.seed + iteration, return_logps=self.old_logps
        )
        batch = self.engine.generate(prompts, params)
        output = self.score(prompts, batch, indices)
        ref_logps = kl = None
        if self.reference is not None:
            ref_logps = reference_logps(
                self.reference, batch, params.logp_temperature, self.sampling.batch_size
            )
        if ref_logps is not None and batch.logps is not None:
            kl = per_token_kl(
                batch.logps,
                ref_logps,
                batch.response_mask,
                estimator=self.kl.estimator,
                clamp=self.kl.clamp,
                max_kl=self.kl.max_kl,
            )
        greedy = None
        if self.estimator.needs_greedy:
            greedy_params = replace(params, temperature=0.0, num_samples=1)
            greedy_batch = self.engine.generate(prompts, greedy_params)
            greedy = self.score(prompts, greedy_batch, indices).scores.repeat_interleave(k)
        return Rollout(
            batch=batch,
            prompts=prompts,
            scores=output.scores,
            reward=output,
            ref_logps=ref_logps,
            kl=kl,
            kl_coef=self.controller.coef,
            kl_in_reward=self.kl.in_reward,
            group_size=k,
            iteration=iteration,
            greedy_scores=greedy,
        )

    def build(self, rollout: Rollout) -> Experience:
        """Advantages and the typed buffer, with the rollout's metrics."""
        result = self.estimator(rollout)
        batch = rollout.batch
        mask = batch.response_mask.float()
        if result.keep is not None:
            mask = mask * result.keep.float()[:, None]
        advantages = result.advantages.float()
        if advantages.ndim == 1:
            advantages = expand_to_tokens(advantages, mask)
        advantages = advantages * mask
        metrics = rollout_metrics(rollout) | {
            f"rollout_{key}": value for key, value in result.metrics.items()
        }
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
            ref_logps=rollout.ref_logps,
            advantages=advantages,
            returns=result.returns,
            values=result.values,
            scores=rollout.scores,
            group=batch.prompt_index,
            aggregation=self.aggregation,
            max_length=self.sampling.max_new_tokens,
            temperature=1.0 if self.sampling.temperature == 0 else self.sampling.temperature,
            kl_coef=rollout.kl_coef,
            metrics=metrics,
        )

    def _next_rollout(self) -> None:
        self.iteration += 1
        rollout = self.collect(self.iteration)
        self.experience = self.build(rollout)
        self.last_rollout = rollout
        if rollout.kl is not None:  # Ziegler's controller tracks the mean sequence KL
            self.controller.update(float(rollout.kl.sum(-1).mean()), len(rollout.batch))
        # minibatch order: one seeded permutation per ppo epoch
        episodes = len(self.experience)
        self._order = []
        for epoch in range(self.settings.ppo_epochs):
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.iteration * 1_009 + epoch
            )
            self._order.extend(torch.randperm(episodes, generator=generator).tolist())
        self.position = 0

    def next_batch(self) -> Experience:
        """The next micro-batch, collecting a new rollout when the buffer is used up."""
        if self.experience is None or self.position >= len(self):
            self._next_rollout()
        assert self.experience is not None
        start = self.position * self.micro_batch_size
        rows = self._order[start : start + self.micro_batch_size]
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
            "estimator": self.estimator.state_dict(),
            "kl_controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        position, total = state["position"], len(self)
        if state["iteration"] > 0 and position != total:
            raise ValueError(
                f"this checkpoint was taken inside iteration {state['iteration']} (micro-batch "
                f"{position} of {total}); online runs resume only from iteration boundaries"
            )
        self.iteration, self.seed = state["iteration"], state["seed"]
        self.position = total
        self.experience = None
        self.estimator.load_state_dict(state["estimator"])
        self.controller.load_state_dict(state["kl_controller"])


def rollout_metrics(rollout: Rollout) -> Metrics:
    """What a rollout says about the policy that sampled it (logged as ``rollout_*``)."""
    batch = rollout.batch
    metrics = rollout.reward.metrics(prefix="rollout_reward")
    metrics |= {
        "rollout_iteration": float(rollout.iteration),
        "rollout_episodes": float(len(batch)),
        "rollout_response_tokens": float(batch.response_lengths.float().mean()),
        "rollout_eos_rate": float(batch.ended_with_eos.float().mean()),
        "rollout_kl_coef": rollout.kl_coef,
        # prompts whose start was cut to leave room for the response in the model's positions
        "rollout_truncated_prompts": float(batch.truncated_prompts),
    }
    if rollout.ref_logps is not None and batch.logps is not None:
        # the k1 sequence KL (unbiased) whatever the estimator, and the configured one
        # (without old log-probs the loss reports both, from the update's forward pass)
        k1 = (batch.logps - rollout.ref_logps) * batch.response_mask
        metrics["rollout_kl"] = float(k1.sum(-1).mean())
    if rollout.kl is not None:
        metrics["rollout_kl_estimate"] = float(rollout.kl.sum(-1).mean())
    if rollout.greedy_scores is not None:
        metrics["rollout_greedy_reward"] = float(rollout.greedy_scores.mean())
    return metrics


# ------------------------------------------------------------------------------ the loss


def policy_logps(model: torch.nn.Module, batch: Experience) -> torch.Tensor:
    """[n, R] log π_θ of the batch's response tokens at its temperature, with gradients."""
    from rlhf.models.teacher_forcing import response_logprobs

    return response_logprobs(
        model,
        batch.prompt_ids,
        batch.prompt_mask,
        batch.response_ids,
        batch.mask,
        temperature=batch.temperature,
        batch_size=len(batch),
        groups=batch.group,
    )


def policy_gradient_loss(
    model: torch.nn.Module,
    batch: Experience,
    *,
    policy: PolicyLossSettings,
    kl: KLSettings,
    grad_accum: int = 1,
    logps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """The critic-free methods' loss: PPO's clipped surrogate on the advantages
    (:func:`rlhf.losses.policy.ppo_policy_loss`), plus ``β · KL`` (k2/k3,
    :func:`rlhf.losses.policy.kl_penalty_loss`) when the KL is a loss term (GRPO, eq. 3).

    Returns the summed loss over ``batch.loss_units`` (the Trainer divides by the step's
    units) and metrics as means over the micro-batch divided by ``grad_accum``, so the
    Trainer's sum over a step's micro-batches is their mean.

    Experience without old log-probs (one optimiser step per rollout) takes ``logps``
    detached as π_old: the ratio is exactly 1 and the gradient that of the recomputed ones.
    The rollout's KL to the reference (``rollout_kl``, ``rollout_kl_estimate``) then comes
    from these log-probs, over the rows in the loss.
    """
    if logps is None:  # PPO passes its own (computed with the entropy in one forward)
        logps = policy_logps(model, batch)  # [n, R]
    old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
    options = dict(aggregation=batch.aggregation, max_length=batch.max_length)
    loss, sums = ppo_policy_loss(
        logps,
        old_logps,
        batch.advantages,
        batch.mask,
        clip_eps=policy.clip_eps,
        clip_eps_high=policy.clip_eps_high,
        **options,
    )
    tokens = max(sums["tokens"], 1.0)
    metrics = {
        "policy_loss": sums["policy_loss_sum"] / max(batch.loss_units, 1),
        "clip_frac": sums["clipped_tokens"] / tokens,
        "ratio": sums["ratio_sum"] / tokens,
        "approx_kl": sums["approx_kl_sum"] / tokens,
    }
    if not kl.in_reward and batch.kl_coef > 0 and batch.ref_logps is not None:
        kl_loss, kl_sums = kl_penalty_loss(
            logps,
            batch.ref_logps,
            batch.mask,
            estimator=kl.estimator,
            clamp=kl.clamp,
            max_kl=kl.max_kl,
            **options,
        )
        loss = loss + batch.kl_coef * kl_loss
        metrics["kl_loss"] = kl_sums["kl_sum"] / tokens
    if batch.old_logps is None and batch.ref_logps is not None:
        metrics |= on_policy_kl_metrics(logps.detach(), batch, kl)
    metrics = {key: value / grad_accum for key, value in metrics.items()}
    return loss, metrics | batch.metrics


def on_policy_kl_metrics(logps: torch.Tensor, batch: Experience, kl: KLSettings) -> Metrics:
    """``rollout_kl`` (k1) and ``rollout_kl_estimate`` (``kl.estimator``): the mean sequence
    KL to the reference of the rows in the loss, from log-probs [n, R] of the policy that
    sampled them (what :func:`rollout_metrics` reads from ``batch.logps`` otherwise)."""
    assert batch.ref_logps is not None
    rows = max(int(batch.mask.bool().any(-1).sum()), 1)
    k1 = ((logps - batch.ref_logps) * batch.mask).sum()
    estimate = per_token_kl(
        logps,
        batch.ref_logps,
        batch.mask,
        estimator=kl.estimator,
        clamp=kl.clamp,
        max_kl=kl.max_kl,
    ).sum()
    return {"rollout_kl": float(k1) / rows, "rollout_kl_estimate": float(estimate) / rows}


# ------------------------------------------------------------------------------ evaluation


def evaluate_policy(
    model: torch.nn.Module,
    *,
    tokenizer: Any,
    prompts: Sequence[Text],
    prompt_metadata: Sequence[Mapping[str, Any]] | None,
    reward: RewardFunction,
    gold: RewardFunction | None,
    reference: ReferenceModel | None,
    sampling: SamplingConfig,
    settings: OnlineEvalConfig,
    seed: int,
) -> Metrics:
    """Held-out metrics: greedy reward (accuracy for a 0/1 rule), sampled reward, the sampled
    KL(π‖π_ref) (k1 summed over the response, averaged), response length and EOS rate.
    The same seed every time, so evaluations compare like with like."""
    from rlhf.rollout.hf import HFGenerationEngine

    engine = HFGenerationEngine(model, tokenizer, batch_size=sampling.batch_size)
    metrics: Metrics = {}
    indices = list(range(len(prompts)))

    def scored(params: SamplingParams, name: str) -> RolloutBatch:
        batch = engine.generate(prompts, params)
        rows = [prompts[i] for i in batch.prompt_index.tolist()]
        metadata = rollout_metadata(
            batch, [prompt_metadata[i] for i in indices] if prompt_metadata else None
        )
        output = score_reward(reward, rows, batch.response_texts, metadata)
        metrics.update(output.metrics(prefix=f"{name}reward"))
        if gold is not None:
            metrics[f"{name}gold_reward"] = float(
                score_reward(gold, rows, batch.response_texts, metadata).scores.mean()
            )
        metrics[f"{name}response_tokens"] = float(batch.response_lengths.float().mean())
        metrics[f"{name}eos_rate"] = float(batch.ended_with_eos.float().mean())
        return batch

    if settings.greedy:
        scored(SamplingParams(sampling.max_new_tokens, temperature=0.0, seed=seed), "greedy_")
    if settings.samples_per_prompt > 0:
        params = sampling.params(num_samples=settings.samples_per_prompt, seed=seed)
        batch = scored(params, "")
        if reference is not None:
            ref = reference_logps(reference, batch, params.logp_temperature, sampling.batch_size)
            per_sample = ((batch.logps - ref) * batch.response_mask).sum(-1).double()
            metrics["kl"] = float(per_sample.mean())
    return metrics


# ------------------------------------------------------------------------------ the recipe


PromptSet = tuple[list[Text], list[dict[str, Any]] | None]  # prompts, per-prompt metadata


def load_prompt_set(source: str, data: OnlineDataConfig) -> PromptSet:
    """Distinct prompts of ``source`` and, with ``data.answer_field``, each one's ground truth
    as metadata ``{"answer": ...}`` for the reward."""
    from rlhf.rollout.candidates import load_prompts_and_answers

    return load_prompts_and_answers(
        source, data.answer_field, columns=data.columns or None, option="data.answer_field"
    )


def split_prompts(prompts: PromptSet, count: int, seed: int) -> tuple[PromptSet, PromptSet]:
    """Training prompts and ``count`` held-out ones (a seeded draw, removed from training),
    each with its metadata."""
    texts, metadata = prompts
    if count == 0:
        return prompts, ([], None)
    if count >= len(texts):
        raise ValueError(
            f"eval.prompts {count}: only {len(texts)} distinct prompts, none would be left "
            "to train on (lower eval.prompts or give data.eval_prompts)"
        )
    held = set(round_prompts(list(range(len(texts))), count, 0, seed + 1))  # type: ignore[arg-type]

    def part(indices: list[int]) -> PromptSet:
        kept = None if metadata is None else [metadata[i] for i in indices]
        return [texts[i] for i in indices], kept

    return part([i for i in range(len(texts)) if i not in held]), part(sorted(held))


def live_reference(
    config: OnlineConfig, model: torch.nn.Module, tokenizer: Any
) -> ReferenceModel | None:
    """π_ref for the run, or None when neither the KL term nor the evaluation needs one."""
    from rlhf.recipes.dpo import live_reference as kept_reference

    if config.kl.coef == 0 and (config.eval.prompts == 0 or config.eval.samples_per_prompt == 0):
        return None
    if config.kl.coef == 0 and config.reference.path is None and not is_lora(model):
        logger.info("kl.coef is 0: a frozen reference copy is kept for the evaluation's KL only")
    return kept_reference(config, model, tokenizer)


def compile_scoring_models(
    reference: ReferenceModel | None, reward: RewardFunction, policy: torch.nn.Module
) -> None:
    """With ``train.compile``, compile the blocks of the frozen reference and of any reward
    model too: with a small policy, their forward passes take as long per step as the
    policy's own (the reference of a LoRA policy is the policy, compiled already)."""
    from rlhf.models.compile import compile_blocks
    from rlhf.rewards.composite import CompositeReward
    from rlhf.rewards.model import RewardModelReward

    if reference is not None and reference.module is not policy:
        compile_blocks(reference.module)
    pending = [reward]
    while pending:
        function = pending.pop()
        if isinstance(function, CompositeReward):
            pending.extend(part for _, part in function.parts.values())
        elif isinstance(function, RewardModelReward):
            compile_blocks(function.model.model)


def run_online(
    config: OnlineConfig,
    resume: bool,
    *,
    estimator: AdvantageEstimator,
    loss_fn: Callable[..., tuple[torch.Tensor, Metrics]] | None = None,
    wrap_model: Callable[[torch.nn.Module, Any], torch.nn.Module] | None = None,
    callbacks: Callable[[ExperienceLoader], Sequence[StepCallback]] | None = None,
) -> RunResult:
    """Run an online recipe: prompts, policy (after init SFT), reference, reward, the
    :class:`ExperienceLoader` with ``estimator``, the Trainer, and the export.

    ``loss_fn(model, batch)`` defaults to :func:`policy_gradient_loss` with the config's
    settings. ``wrap_model(policy, tokenizer)`` may return the module the Trainer trains (PPO:
    policy + critic); sampling, the reference and the export use the policy alone.
    ``callbacks(loader)`` may return step callbacks for the Trainer (PPO's early stop).
    """
    from rlhf.rollout.hf import HFGenerationEngine

    out, checkpoint = prepare_out_dir(config, resume)
    seed = config.train.seed
    train = config.derived_train()

    (prompts, metadata), (eval_prompts, eval_metadata) = split_prompts(
        load_prompt_set(config.data.prompts, config.data),
        0 if config.data.eval_prompts is not None else config.eval.prompts,
        seed,
    )
    if config.data.eval_prompts is not None:
        eval_prompts, eval_metadata = load_prompt_set(config.data.eval_prompts, config.data)
        eval_prompts = eval_prompts[: config.eval.prompts]
        eval_metadata = None if eval_metadata is None else eval_metadata[: config.eval.prompts]
    logger.info("%d training prompts, %d held-out", len(prompts), len(eval_prompts))

    path = initial_policy(config, config.init_sft, out, resume)
    model_config = config.model.model_copy(update={"path": path, "tiny": None})
    policy, tokenizer = build_model_and_tokenizer(model_config, out, lambda: [], seed)
    device = resolve_device(train.device)
    policy.to(device)
    # before any update (and before a checkpoint is loaded): the initial policy is π_ref
    reference = live_reference(config, policy, tokenizer)
    if reference is not None and reference.module is not policy:
        reference.to(device)
    reward = build_reward(config.reward)
    gold = build_reward(config.eval.gold_reward) if config.eval.gold_reward else None
    if train.compile:  # the Trainer compiles the policy's blocks; the other passes follow
        compile_scoring_models(reference, reward, policy)

    engine = HFGenerationEngine(policy, tokenizer, batch_size=config.sampling.batch_size)
    episodes = config.episodes_per_iteration
    loader = ExperienceLoader(
        engine=engine,
        reward=reward,
        estimator=estimator,
        prompts=prompts,
        prompt_metadata=metadata,
        reference=reference if (config.kl.coef > 0) else None,
        sampling=config.sampling,
        rollout=config.rollout,
        kl=config.kl,
        micro_batch_size=train.batch_size,
        aggregation=config.policy.aggregation,
        seed=seed,
        old_logps=needs_old_logps(
            config.rollout,
            config.kl,
            estimator,
            episodes=episodes,
            minibatch_size=config.minibatch_size,
        ),
    )
    evaluate = None
    if eval_prompts:
        evaluate_model = partial(
            evaluate_policy,
            tokenizer=tokenizer,
            prompts=eval_prompts,
            prompt_metadata=eval_metadata,
            reward=reward,
            gold=gold,
            reference=reference,
            sampling=config.sampling,
            settings=config.eval,
            seed=seed + 1_000_003,
        )

        def evaluate(_: torch.nn.Module) -> Metrics:
            return evaluate_model(policy)

    if loss_fn is None:
        loss_fn = partial(
            policy_gradient_loss, policy=config.policy, kl=config.kl, grad_accum=train.grad_accum
        )
    trained = wrap_model(policy, tokenizer) if wrap_model is not None else policy
    export = exporter(policy, tokenizer)
    trainer = Trainer(
        trained,
        train,
        loader,
        loss_fn,
        out,
        evaluate=evaluate,
        callbacks=callbacks(loader) if callbacks is not None else (),
        export=export,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        run_config=config.model_dump(mode="json"),
        progress=config.progress,
    )
    history: list[Metrics] = []
    if evaluate is not None and config.eval.before and checkpoint is None:
        with torch.no_grad():
            initial = evaluate(policy)
        (out / "eval_initial.json").write_text(json.dumps(initial, indent=2), encoding="utf-8")
        history.append({"step": 0.0, **{f"eval_{k}": v for k, v in initial.items()}})
        logger.info("starting policy: %s", ", ".join(f"{k}={v:.4g}" for k, v in initial.items()))
    result = trainer.train(resume_from=checkpoint)
    model_dir = out / "model"
    export(model_dir)
    return RunResult(out, result.final_step, model_dir, history + result.history)
