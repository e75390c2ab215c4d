"""What every online recipe shares: its config's common sections, the set-up of a run
(:func:`prepare_online`) and the loop around the algorithm's ``make_experience``
(:func:`run_online`). Not a recipe: each algorithm's file (``grpo.py``, ``ppo.py``, ...)
composes the phases of its experience itself and calls these two.

One iteration: the next ``prompts_per_iteration`` prompts of a seeded shuffle (cycling) →
``samples_per_prompt`` responses each from the *current* policy, seeded by the iteration →
rewards → reference log-probs and the KL to π_ref → advantages (the algorithm's own) → an
:class:`~rlhf.online.experience.Experience`; then ``ppo_epochs`` passes over it in shuffled
minibatches of ``rollout.minibatch_size`` episodes, one Trainer step per minibatch
(``train.batch_size`` rows per micro-batch, ``grad_accum`` = minibatch_size / batch_size).

Rollout metrics (``rollout_*``) ride on the first micro-batch of each iteration and are
returned by the loss, so they reach ``metrics.jsonl`` in that step's row. Resume is at
iteration boundaries (``train.save_every`` is rounded up to whole iterations).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.engine.trainer import StepCallback, TrainConfig, Trainer
from rlhf.models.device import resolve_device
from rlhf.models.reference import ReferenceModel, is_lora
from rlhf.online.evaluate import OnlineEvalConfig, evaluate_policy
from rlhf.online.experience import Experience, ExperienceBuffer, Stateful, build_experience
from rlhf.online.loss import policy_gradient_loss
from rlhf.online.phases import (
    AdaptiveKLController,
    ReferenceTerm,
    compile_scoring_models,
    needs_old_logps,
    reference_phase,
)
from rlhf.online.rollouts import RolloutQueue, is_async
from rlhf.online.settings import (
    KLSettings,
    MismatchSettings,
    PolicyLossSettings,
    RolloutSettings,
)
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    ReferenceDtype,
    RunResult,
    build_model_and_tokenizer,
    kept_reference,
    prepare_out_dir,
    reference_dtype_field,
    round_prompts,
)
from rlhf.recipes.lm import InitSFTConfig, exporter, initial_policy
from rlhf.rewards.base import RewardFunction, RewardOutput
from rlhf.rewards.spec import RewardSpec, build_reward
from rlhf.rollout.factory import check_engine, close_engine, engine_for
from rlhf.rollout.types import (
    GenerationEngine,
    RolloutBatch,
    SamplingConfig,
    SamplingParams,
    WeightSyncError,
)

logger = logging.getLogger("rlhf")

Metrics = dict[str, float]
LossFn = Callable[..., tuple[torch.Tensor, Metrics]]

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


class OnlineConfig(RecipeConfig):
    """Settings every online recipe shares; each recipe adds its own section."""

    samples_from_policy: ClassVar[bool] = True
    # the update weighs samples by π/π_old (PPO's ratio); online preference optimisation's
    # losses do not, so they never need the sampling policy's log-probs
    reads_old_logps: ClassVar[bool] = True

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
    mismatch: MismatchSettings = Field(
        default_factory=MismatchSettings,
        description="Correcting the train–inference mismatch of an engine sampling from a copy "
        "of the weights (sampling.engine=vllm).",
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
        if (
            self.mismatch.correction != "none"
            and self.sampling.engine == "hf"
            and self.distributed.rollout_workers == 0
        ):
            raise ValueError(
                f"mismatch.correction={self.mismatch.correction}: the hf engine samples from "
                "the trainer's own weights, so there is no mismatch to correct (use "
                "sampling.engine=vllm or distributed.rollout_workers ≥ 1, or "
                "mismatch.correction=none)"
            )
        if self.mismatch.old_logps == "engine" and self.distributed.rollout_workers == 0:
            raise ValueError(
                "mismatch.old_logps=engine: only rollout workers return the log-probs they "
                "sampled with as π_old; set distributed.rollout_workers ≥ 1 (or leave it trainer)"
            )
        if (self.mismatch.correction != "none" or self.mismatch.old_logps == "engine") and (
            self.sampling.top_p < 1 or self.sampling.top_k > 0
        ):
            chosen = (
                "mismatch.old_logps=engine"
                if self.mismatch.old_logps == "engine"
                else f"mismatch.correction={self.mismatch.correction}"
            )
            raise ValueError(
                f"{chosen} with sampling.top_p/top_k: the engine's log-probs are of the "
                "filtered distribution it samples from, the trainer's of the whole one, so "
                "every ratio is off by the kept mass; sample without top-p/top-k"
            )
        return self

    @property
    def trains_against_reference(self) -> bool:
        """Whether the update reads π_ref (the KL term here; a recipe whose loss reads it
        otherwise says so)."""
        return self.kl.coef > 0

    @property
    def episodes_per_iteration(self) -> int:
        """Rows of experience per rollout (a recipe training on fewer rows than it samples
        says so, and in :attr:`episodes_description`)."""
        return self.rollout.prompts_per_iteration * self.rollout.samples_per_prompt

    @property
    def episodes_description(self) -> str:
        return "rollout.prompts_per_iteration × samples_per_prompt"

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
                f"{self.episodes_description} = {episodes} episodes must be a multiple of the "
                f"minibatch size {minibatch}"
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


# ------------------------------------------------------------------------------ prompts


@dataclass
class Prompts:
    """Prompts and, when the data gives them, each one's metadata (e.g. its ground truth as
    ``{"answer": ...}``, which the reward reads)."""

    texts: list[Text]  # [P]
    metadata: list[dict[str, Any]] | None = None  # [P] or None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: Sequence[int]) -> Prompts:
        """The prompts at ``indices``, in that order, each with its metadata."""
        return Prompts(
            [self.texts[i] for i in indices],
            None if self.metadata is None else [self.metadata[i] for i in indices],
        )


def load_prompt_set(source: str, data: OnlineDataConfig) -> Prompts:
    """Distinct prompts of ``source`` and, with ``data.answer_field``, each one's ground truth
    as metadata ``{"answer": ...}`` for the reward."""
    from rlhf.rollout.candidates import load_prompts_and_answers

    texts, metadata = load_prompts_and_answers(
        source, data.answer_field, columns=data.columns or None, option="data.answer_field"
    )
    return Prompts(texts, metadata)


def split_prompts(prompts: Prompts, count: int, seed: int) -> tuple[Prompts, Prompts]:
    """Training prompts and ``count`` held-out ones (a seeded draw, removed from training),
    each with its metadata."""
    if count == 0:
        return prompts, Prompts([])
    if count >= len(prompts):
        raise ValueError(
            f"eval.prompts {count}: only {len(prompts)} distinct prompts, none would be left "
            "to train on (lower eval.prompts or give data.eval_prompts)"
        )
    held = set(round_prompts(list(range(len(prompts))), count, 0, seed + 1))
    train = [i for i in range(len(prompts)) if i not in held]
    return prompts.select(train), prompts.select(sorted(held))


def training_and_held_out_prompts(config: OnlineConfig) -> tuple[Prompts, Prompts]:
    """The training prompts and the held-out ones (``data.eval_prompts`` or a seeded draw)."""
    data, count = config.data, config.eval.prompts
    train, held = split_prompts(
        load_prompt_set(data.prompts, data),
        0 if data.eval_prompts is not None else count,
        config.train.seed,
    )
    if data.eval_prompts is not None:
        held = load_prompt_set(data.eval_prompts, data)
        held = held.select(range(min(count, len(held))))
    logger.info("%d training prompts, %d held-out", len(train), len(held))
    return train, held


# ------------------------------------------------------------------------------ the run


Config = TypeVar("Config", bound=OnlineConfig)


@dataclass
class OnlineRun(Generic[Config]):
    """Everything an online recipe's phases work with, built once by :func:`prepare_online`;
    ``config`` is the recipe's own (``OnlineRun[PPOConfig]`` holds a PPOConfig)."""

    config: Config
    out: Path
    checkpoint: Path | None  # the checkpoint resumed from (None: a fresh run)
    train: TrainConfig  # config.derived_train()
    prompts: Prompts  # training prompts
    eval_prompts: Prompts  # held-out prompts
    policy: torch.nn.Module
    tokenizer: Any
    reference: ReferenceModel | None  # π_ref (also kept with β = 0 for the evaluation's KL)
    reward: RewardFunction
    gold: RewardFunction | None
    engine: GenerationEngine  # samples from the policy as it is trained
    kl_controller: AdaptiveKLController
    old_logps: bool  # whether rollouts recompute the sampling policy's log-probs
    # rollouts sampled ahead on rollout workers (distributed.max_staleness); None: sampled
    # when asked, by engine.generate
    rollouts: RolloutQueue | None = None
    # the last sample's rollout_staleness and rollout_wait_seconds (with rollouts), which
    # experience() adds to the rollout's metrics
    sampled: Metrics = field(default_factory=dict)

    # ---------------------------------------------------------------- phases
    def prompts_for(self, iteration: int) -> Prompts:
        """The prompts of rollout ``iteration`` (1-based): the next slice of a seeded shuffle
        of the training prompts, wrapping around."""
        count = self.config.rollout.prompts_per_iteration
        offset = (iteration - 1) * count
        indices = round_prompts(
            list(range(len(self.prompts))), count, offset, self.config.train.seed
        )
        return self.prompts.select(indices)

    def sampling_params(self, iteration: int) -> SamplingParams:
        """The sampling of rollout ``iteration``: ``rollout.samples_per_prompt`` per prompt,
        seeded by the iteration."""
        return self.config.sampling.params(
            num_samples=self.config.rollout.samples_per_prompt,
            seed=self.config.train.seed + iteration,
            return_logps=self.old_logps,
        )

    def sample(self, prompts: Prompts, iteration: int) -> RolloutBatch:
        """Responses to each prompt from the current policy (prompt-major rows); with
        :attr:`rollouts`, from a policy up to ``distributed.max_staleness`` updates older (the
        rollout sampled ahead while the previous ones trained)."""
        try:
            if self.rollouts is None:
                return self.engine.generate(prompts.texts, self.sampling_params(iteration))
            if list(prompts.texts) != list(self.prompts_for(iteration).texts):
                raise ValueError(
                    f"rollout {iteration}: rollouts sampled ahead (distributed.rollout_workers) "
                    "are of prompts_for(iteration); sample other prompts with run.engine"
                )
            taken = self.rollouts.take(iteration)
            self.sampled = taken.metrics
            return taken.batch
        except WeightSyncError as error:
            step = (iteration - 1) * self.config.steps_per_iteration()
            raise WeightSyncError(
                f"rollout {iteration}, after optimiser step {step}: {error}"
            ) from None

    def reference_term(self, batch: RolloutBatch) -> ReferenceTerm:
        """log π_ref and the per-token KL of a rollout (none with β = 0), with its β. The
        adaptive β moves on as this returns: read this rollout's from ``ReferenceTerm.coef``,
        never from ``kl_controller`` (that is already the next rollout's)."""
        return reference_phase(
            self.reference if self.config.kl.coef > 0 else None,
            batch,
            temperature=self.config.sampling.logp_temperature,
            batch_size=self.config.sampling.batch_size,
            kl=self.config.kl,
            controller=self.kl_controller,
        )

    def experience(
        self,
        batch: RolloutBatch,
        reward: RewardOutput,
        reference: ReferenceTerm,
        advantages: torch.Tensor,
        *,
        metrics: Metrics,
        keep: torch.Tensor | None = None,
        returns: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> Experience:
        """The rollout's :class:`Experience` (:func:`rlhf.online.experience.build_experience`
        with the scores, π_ref log-probs, β and the config's loss settings filled in; the
        metrics gain the sampling's staleness, with :attr:`rollouts`)."""
        metrics, self.sampled = metrics | self.sampled, {}
        return build_experience(
            batch,
            advantages,
            scores=reward.scores,
            ref_logps=reference.ref_logps,
            kl_coef=reference.coef,
            keep=keep,
            returns=returns,
            values=values,
            metrics=metrics,
            aggregation=self.config.policy.aggregation,
            max_new_tokens=self.config.sampling.max_new_tokens,
            logp_temperature=self.config.sampling.logp_temperature,
            mismatch=self.config.mismatch,
        )

    def evaluate(self, _: torch.nn.Module | None = None) -> Metrics:
        """Held-out metrics of the policy now (the Trainer's ``evaluate`` hook)."""
        return evaluate_policy(
            self.engine,
            prompts=self.eval_prompts.texts,
            prompt_metadata=self.eval_prompts.metadata,
            reward=self.reward,
            gold=self.gold,
            reference=self.reference,
            sampling=self.config.sampling,
            settings=self.config.eval,
            seed=self.config.train.seed + 1_000_003,
        )


def online_reference(
    config: OnlineConfig, model: torch.nn.Module, tokenizer: Any
) -> ReferenceModel | None:
    """π_ref for the run, or None when neither the loss nor the evaluation needs one."""
    in_loss = config.trains_against_reference
    if not in_loss and (config.eval.prompts == 0 or config.eval.samples_per_prompt == 0):
        return None
    if not in_loss and config.reference.path is None and not is_lora(model):
        logger.info("kl.coef is 0: a frozen reference copy is kept for the evaluation's KL only")
    if config.distributed.reference_workers:
        return remote_reference(config, model, tokenizer)
    return kept_reference(config.reference, config.model, model, tokenizer)


def remote_reference(config: OnlineConfig, model: torch.nn.Module, tokenizer: Any) -> Any:
    """π_ref on the reference workers the launcher started (``distributed.reference_workers``):
    ``reference.path``, or the initial policy's weights sent to them."""
    from rlhf.distributed.reference import RemoteReference
    from rlhf.distributed.workers import model_files, role_workers
    from rlhf.models.parallel import is_main_process

    workers = role_workers("reference", config.distributed.reference_workers)
    path = config.reference.path
    if path is None and is_lora(model):
        raise ValueError(
            "distributed.reference_workers with model.lora: the reference is the policy's base "
            "model, which the trainer holds anyway; leave reference_workers at 0 or set "
            "reference.path"
        )
    files = model_files(model, tokenizer) if path is None and is_main_process() else None
    return RemoteReference(
        workers,
        path=path,
        files=files,
        dtype=config.reference.dtype or config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        cwd=str(Path.cwd()),
    )


def prepare_online(
    config: Config, resume: bool, *, advantages_read_old_logps: bool = False
) -> OnlineRun[Config]:
    """Set up a run: prompts, the policy (after init SFT), π_ref, the reward, the engine.
    ``advantages_read_old_logps``: the algorithm's advantages read the rollout's old
    log-probs (PPO's per-token KL rewards), so sampling must compute them."""
    if config.distributed.rollout_workers == 0:  # else the workers build it (and check it)
        check_engine(config.sampling)  # before the init SFT trains anything
    out, checkpoint = prepare_out_dir(config, resume)
    train = config.derived_train()
    prompts, eval_prompts = training_and_held_out_prompts(config)

    path = initial_policy(config, config.init_sft, out, resume)
    model_config = config.model.model_copy(update={"path": path, "tiny": None})
    policy, tokenizer = build_model_and_tokenizer(model_config, out, lambda: [], train.seed)
    device = resolve_device(train.device)
    policy.to(device)
    # before any update (and before a checkpoint is loaded): the initial policy is π_ref
    reference = online_reference(config, policy, tokenizer)
    if reference is not None and reference.module is not policy:
        reference.to(device)
    reward = online_reward(config)
    gold = build_reward(config.eval.gold_reward) if config.eval.gold_reward else None
    if train.compile:  # the Trainer compiles the policy's blocks; the other passes follow
        compile_scoring_models(reference, reward, policy)
    engine = online_engine(config, policy, tokenizer)
    # an engine sampling from a copy of the weights (vLLM): the trainer recomputes the old
    # log-probs, so the update's ratio is the trainer's and the mismatch can be measured
    old_logps = getattr(engine, "samples_separately", False) or (
        config.reads_old_logps
        and needs_old_logps(
            config.rollout,
            config.kl,
            episodes=config.episodes_per_iteration,
            minibatch_size=config.minibatch_size,
            advantages_read_them=advantages_read_old_logps,
        )
    )
    run = OnlineRun(
        config=config,
        out=out,
        checkpoint=checkpoint,
        train=train,
        prompts=prompts,
        eval_prompts=eval_prompts,
        policy=policy,
        tokenizer=tokenizer,
        reference=reference,
        reward=reward,
        gold=gold,
        engine=engine,
        kl_controller=AdaptiveKLController(config.kl.coef, config.kl.target, config.kl.horizon),
        old_logps=old_logps,
    )
    if is_async(engine):
        run.rollouts = RolloutQueue(
            engine,
            lambda iteration: (run.prompts_for(iteration).texts, run.sampling_params(iteration)),
            max_staleness=config.distributed.max_staleness,
            last=config.rollout.iterations,
        )
    return run


def online_engine(
    config: OnlineConfig, policy: torch.nn.Module, tokenizer: Any
) -> GenerationEngine:
    """The engine of ``config.sampling``: in this process, or on the rollout workers the
    launcher started (``distributed.rollout_workers``)."""
    batch_size = config.sampling.batch_size
    if config.distributed.rollout_workers == 0:
        return engine_for(config.sampling, policy, tokenizer, batch_size=batch_size)
    from rlhf.distributed.rollout import rollout_engine
    from rlhf.distributed.workers import role_workers

    workers = role_workers("rollout", config.distributed.rollout_workers)
    return rollout_engine(
        policy,
        tokenizer,
        config.sampling,
        batch_size,
        workers,
        recompute_logps=config.mismatch.old_logps == "trainer",
    )


def online_reward(config: OnlineConfig) -> RewardFunction:
    """The reward of ``config.reward``: built in this process, or on the reward workers the
    launcher started (``distributed.reward_workers``)."""
    if config.distributed.reward_workers == 0:
        return build_reward(config.reward)
    from rlhf.distributed.reward import remote_reward
    from rlhf.distributed.workers import role_workers

    workers = role_workers("reward", config.distributed.reward_workers)
    return remote_reward(config.reward.model_dump(mode="json"), workers)


def run_online(
    run: OnlineRun[Any],
    make_experience: Callable[[int], Experience],
    *,
    state: Mapping[str, Stateful] | None = None,
    loss_fn: LossFn | None = None,
    trained: torch.nn.Module | None = None,
    callbacks: Callable[[ExperienceBuffer], Sequence[StepCallback]] | None = None,
    group_size: int = 1,
) -> RunResult:
    """Train with the experience ``make_experience(iteration)`` makes, then export.

    ``state``: the algorithm's stateful parts, checkpointed with the buffer (the KL
    controller is added as ``kl_controller``). ``loss_fn(model, batch)`` defaults to
    :func:`rlhf.online.loss.policy_gradient_loss` with the config's settings. ``trained``
    is the module the Trainer optimises when it is more than the policy (PPO: policy +
    critic); sampling, the reference and the export use the policy alone. ``callbacks(buffer)``
    may return step callbacks (PPO's early stop). ``group_size``: consecutive rows that stay
    in one micro-batch (:class:`ExperienceBuffer`; a preference pair's 2).
    """
    config, train = run.config, run.train
    if (
        not run.old_logps
        and config.reads_old_logps
        and needs_old_logps(
            config.rollout,
            config.kl,
            episodes=config.episodes_per_iteration,
            minibatch_size=config.minibatch_size,
        )
    ):
        raise ValueError(
            "this run trains several steps per rollout or reads the rollout's KL before the "
            "update: it must sample with the old log-probs (OnlineRun.old_logps)"
        )
    buffer = ExperienceBuffer(
        make_experience,
        episodes=config.episodes_per_iteration,
        micro_batch_size=train.batch_size,
        ppo_epochs=config.rollout.ppo_epochs,
        seed=train.seed,
        group_size=group_size,
        state={
            **(state or {}),
            "kl_controller": run.kl_controller,
            **({"rollouts": run.rollouts} if run.rollouts is not None else {}),
        },
    )
    if loss_fn is None:
        loss_fn = partial(
            policy_gradient_loss, policy=config.policy, kl=config.kl, grad_accum=train.grad_accum
        )
    evaluate = run.evaluate if len(run.eval_prompts) else None
    export = exporter(run.policy, run.tokenizer)
    trainer = Trainer(
        trained if trained is not None else run.policy,
        train,
        buffer,
        loss_fn,
        run.out,
        evaluate=evaluate,
        callbacks=callbacks(buffer) if callbacks is not None else (),
        export=export,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        run_config=config.model_dump(mode="json"),
        progress=config.progress,
        metrics_over_ranks="mean",  # the loss's metrics are means over each rank's rows
    )
    history: list[Metrics] = []
    if evaluate is not None and config.eval.before and run.checkpoint is None:
        with torch.no_grad():
            initial = evaluate()
        (run.out / "eval_initial.json").write_text(json.dumps(initial, indent=2), encoding="utf-8")
        history.append({"step": 0.0, **{f"eval_{k}": v for k, v in initial.items()}})
        logger.info("starting policy: %s", ", ".join(f"{k}={v:.4g}" for k, v in initial.items()))
    try:
        result = trainer.train(resume_from=run.checkpoint)
    finally:
        close_engine(run.engine)
    model_dir = run.out / "model"
    export(model_dir)
    return RunResult(run.out, result.final_step, model_dir, history + result.history)
