"""The offline loop DPO's family and KTO share: two-completion examples trained against a
frozen reference π_ref.

Phases of :func:`train_offline`: batches (one row per example with the prompt once for
decoders that take a 4-D mask, else one row per completion) → the reference kept in memory
when a step or the sampled KL needs it → reference log-probs of the examples the seeded
schedule reads, computed once before the first update (the policy's own initial weights, a
LoRA policy's disabled adapter or ``reference.path``) and cached on disk → train → export.
The recipes differ in their data and their ``Objective`` only (:mod:`rlhf.recipes.dpo`,
:mod:`rlhf.recipes.kto`).

Shapes: P examples (pairs, or a rated and a mismatched completion), N examples in all.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.pairs import preference_groups
from rlhf.data.preference import (
    LogpTable,
    PairBatch,
    PairExample,
    PairText,
    collate_pairs,
    collate_pairs_shared_prompt,
)
from rlhf.data.records import Record, Text
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.progress import Progress
from rlhf.engine.trainer import TrainConfig, Trainer, read_trainer_state, resolve_device
from rlhf.losses.preference import CONVEX_FUNCTIONS, PREFERENCE_LOSSES, LossOutput, PairLogps
from rlhf.models.forward import shares_prompt_prefix
from rlhf.models.reference import (
    ReferenceModel,
    cache_path,
    compute_reference_logps,
    folder_digest,
    load_reference,
    pair_logps,
    parameters_digest,
    read_cache,
    reference_fingerprint,
    release_memory,
    write_cache,
)
from rlhf.recipes.common import (
    DataConfig,
    ModelConfig,
    ReferenceDtype,
    RunResult,
    kept_reference,
    reference_dtype_field,
    split_train_eval,
)
from rlhf.recipes.lm import make_trainer
from rlhf.rewards.base import RewardFunction, score_rollout
from rlhf.rewards.spec import RewardSpec, build_reward
from rlhf.rollout.factory import close_engine, engine_for
from rlhf.rollout.measure import sampled_kl
from rlhf.rollout.types import EngineChoice, GenerationEngine, SamplingParams

logger = logging.getLogger("rlhf")

Item = TypeVar("Item")


# ------------------------------------------------------------------------------ config


LossName = Literal[tuple(PREFERENCE_LOSSES)]  # type: ignore[valid-type]
ConvexName = Literal[tuple(CONVEX_FUNCTIONS)]  # type: ignore[valid-type]
HYPERPARAMETERS = ("beta", "label_smoothing", "gamma", "alpha")


class PreferenceLossConfig(StrictModel):
    """The loss and its hyperparameters; one left unset takes the loss's own default."""

    name: LossName = Field(  # type: ignore[valid-type]
        "dpo",
        description="dpo (sigmoid; conservative with label_smoothing > 0), robust, ipo, hinge, "
        "general, simpo, orpo, rpo, apo_zero.",
    )
    beta: float | None = Field(
        None,
        gt=0,
        description="β: the KL strength (all losses; IPO's τ, ORPO's λ, SimPO's reward scale). "
        "Default: the loss's own (2.0 for simpo, else 0.1).",
    )
    label_smoothing: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="ε, the assumed label-flip rate: dpo (cDPO, default 0) and robust (default 0.1).",
    )
    gamma: float | None = Field(
        None, description="simpo: the target reward margin γ, absolute (default 0.5)."
    )
    alpha: float | None = Field(
        None, ge=0, description="rpo: weight of the chosen completion's NLL (default 1.0)."
    )
    convex_f: ConvexName | None = Field(  # type: ignore[valid-type]
        None,
        description="general: the convex f of f(βρ): logistic (= dpo), hinge (= SLiC), "
        "squared (IPO-like), exponential, truncated_squared, savage (default logistic).",
    )

    @model_validator(mode="after")
    def _only_what_the_loss_reads(self) -> PreferenceLossConfig:
        reads = set(PREFERENCE_LOSSES[self.name].hyperparameters)
        if self.name == "general":
            reads.add("convex_f")
        for key in (*HYPERPARAMETERS, "convex_f"):
            if getattr(self, key) is not None and key not in reads:
                readers = [
                    name
                    for name, spec in PREFERENCE_LOSSES.items()
                    if key in spec.hyperparameters or (key == "convex_f" and name == "general")
                ]
                raise ValueError(
                    f"loss.{key}: the {self.name!r} loss does not read it (read by "
                    f"{', '.join(readers)}); leave it unset"
                )
        return self

    @property
    def needs_reference(self) -> bool:
        return PREFERENCE_LOSSES[self.name].needs_reference

    @property
    def effective_beta(self) -> float:
        """β as the loss reads it: the one set here, else the loss function's own default."""
        if self.beta is not None:
            return self.beta
        return float(inspect.signature(PREFERENCE_LOSSES[self.name].fn).parameters["beta"].default)

    def function(self) -> Callable[[PairLogps], LossOutput]:
        """The loss with the hyperparameters set here; unset ones keep the loss's defaults."""
        spec = PREFERENCE_LOSSES[self.name]
        kwargs = {key: getattr(self, key) for key in spec.hyperparameters}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if self.name == "general":
            kwargs["f"] = CONVEX_FUNCTIONS[self.convex_f or "logistic"]
        return partial(spec.fn, **kwargs)


class ReferenceConfig(StrictModel):
    path: str | None = Field(
        None,
        description="The reference model π_ref (hub name or folder). Default: the policy's own "
        "initial weights (with LoRA: the base model, adapter disabled), no second model.",
    )
    cache_dir: str | None = Field(
        None,
        description="Where reference log-probs are cached (default $RLHF_CACHE/reference, "
        "else ~/.cache/rlhf/reference).",
    )
    precompute: bool = Field(
        True,
        description="Compute reference log-probs once before training (cached on disk); "
        "false runs the reference in every step instead (a second model in memory unless LoRA).",
    )
    dtype: ReferenceDtype | None = reference_dtype_field()


class PreferenceDataConfig(DataConfig):
    group_by_length: bool = Field(
        True,
        description="Batch pairs of similar length together (each window of 50 shuffled "
        "batches sorted by length, then the batches shuffled): far less padding.",
    )
    share_prompt: bool = Field(
        True,
        description="One row per pair with the prompt once (decoders whose attention takes a "
        "4-D mask); false always uses one row per completion.",
    )

    @model_validator(mode="after")
    def _no_packing(self) -> PreferenceDataConfig:
        if self.packing:
            raise ValueError("data.packing: preference pairs are batched as pairs; set false")
        return self


class PreferenceEvalConfig(EngineChoice):
    """Held-out evaluation beyond the loss: the policy's sampled KL to the reference, sampled
    with ``engine`` (``eval.engine=vllm``, ``eval.vllm.*``)."""

    kl_prompts: int = Field(
        16,
        ge=0,
        description="Held-out prompts to sample from for KL(π‖π_ref) at each evaluation; 0 "
        "skips it (and keeps only one model in memory with the default reference).",
    )
    kl_samples_per_prompt: int = Field(2, ge=1, description="Samples per KL prompt.")
    max_new_tokens: int = Field(64, ge=1, description="Longest sampled response.")
    temperature: float = Field(
        1.0,
        gt=0,
        description="Sampling temperature; the KL is that of the tempered policies (1: π itself).",
    )
    batch_size: int = Field(64, ge=1, description="Sequences generated together.")
    gold_reward: RewardSpec | None = Field(
        None,
        description="A reward that scores the KL samples at each evaluation (e.g. {rule: "
        "world_gold}): gold_reward along training, beside kl.",
    )
    before: bool = Field(
        False,
        description="Also evaluate the starting policy, before the first step "
        "(eval_initial.json): the first point of a curve along training.",
    )


class OfflineConfig(Protocol):
    """What the shared loop reads of a recipe's config (:class:`~rlhf.recipes.dpo.DPOConfig`,
    :class:`~rlhf.recipes.kto.KTOConfig`)."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def reference(self) -> ReferenceConfig: ...
    @property
    def data(self) -> PreferenceDataConfig: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def eval(self) -> PreferenceEvalConfig: ...
    @property
    def progress(self) -> bool: ...
    @property
    def tensorboard(self) -> bool: ...
    @property
    def wandb_project(self) -> str | None: ...
    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------ data


def preference_pairs(records: Sequence[Record], source: str) -> list[list[PairText]]:
    """Records of any comparing kind as pairs, one list per prompt (first-seen order)."""
    return [
        [
            PairText(group.prompt, group.responses[chosen], group.responses[rejected])
            for chosen, rejected in zip(group.chosen, group.rejected, strict=True)
        ]
        for group in preference_groups(records, source)
    ]


def pairwise_objective(loss: Callable[[PairLogps], LossOutput]) -> Objective:
    """A pairwise loss on the batch's (chosen, rejected) completions."""

    def objective(batch: PairBatch, logps: torch.Tensor, ref: torch.Tensor | None) -> LossOutput:
        tokens = batch.completion_tokens  # [P, 2]
        return loss(
            PairLogps(
                chosen_logps=logps[:, 0],
                rejected_logps=logps[:, 1],
                chosen_tokens=tokens[:, 0],
                rejected_tokens=tokens[:, 1],
                ref_chosen_logps=None if ref is None else ref[:, 0],
                ref_rejected_logps=None if ref is None else ref[:, 1],
            )
        )

    return objective


def pair_summary(sums: Mapping[str, float]) -> dict[str, float]:
    """Held-out means from the summed metrics of a pairwise loss."""
    pairs = max(sums.get("pairs", 0.0), 1.0)
    return {
        "loss": sums["loss_sum"] / pairs,
        "accuracy": sums["correct_pairs"] / pairs,
        "margin": sums["margin_sum"] / pairs,
        "chosen_reward": sums["chosen_reward_sum"] / pairs,
        "rejected_reward": sums["rejected_reward_sum"] / pairs,
        "chosen_logps": sums["chosen_logps_sum"] / pairs,
        "rejected_logps": sums["rejected_logps_sum"] / pairs,
        "pairs": sums.get("pairs", 0.0),
    }


def split_by_prompt(
    groups: Sequence[list[Item]], data: DataConfig, seed: int, read_eval: Callable[[], list[Item]]
) -> tuple[list[Item], list[Item]]:
    """Training and held-out items; the held-out split is by prompt (no prompt on both sides).

    ``groups`` holds one list of items per prompt; ``read_eval()`` gives the held-out items
    when ``data.eval`` is set.
    """
    if data.eval is not None:
        train_groups, held_out = list(groups), read_eval()
    else:
        train_groups, eval_groups = split_train_eval(groups, data, seed)  # type: ignore[arg-type]
        held_out = [item for group in eval_groups for item in group]  # type: ignore[union-attr]
    train = [item for group in train_groups for item in group]  # type: ignore[union-attr]
    return train, held_out[: data.eval_max_examples]


def unique_prompts(items: Sequence[PairText], limit: int) -> list[Text]:
    prompts: dict[Text, None] = {}
    for item in items:
        prompts.setdefault(item.prompt, None)
        if len(prompts) >= limit:
            break
    return list(prompts)


# ------------------------------------------------------------------------------ loss and eval

# (batch, policy log-probs [P, 2], reference log-probs [P, 2] or None) -> (loss sum, metric sums)
Objective = Callable[[PairBatch, torch.Tensor, torch.Tensor | None], LossOutput]


def offline_loss(
    model: torch.nn.Module,
    batch: PairBatch,
    objective: Objective,
    reference: ReferenceModel | None = None,
) -> LossOutput:
    """One forward pass over both completions of every pair; the reference's log-probs come
    from the batch (precomputed) or, when it has none, from ``reference`` run now."""
    logps = pair_logps(model, batch)  # [P, 2]
    ref = batch.ref_logps
    if ref is None and reference is not None:
        with reference.active() as module:
            ref = pair_logps(module, batch)
    return objective(batch, logps, ref)


KL_METRICS = ("kl", "kl_stderr", "response_tokens")


def kl_evaluation(
    engine: GenerationEngine,
    reference: ReferenceModel,
    prompts: Sequence[Text],
    params: SamplingParams,
    batch_size: int,
    gold: RewardFunction | None = None,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """KL(π‖π_ref) estimated from samples of the engine's policy as it is when called
    (:func:`rlhf.rollout.measure.sampled_kl`): ``kl``, ``kl_stderr`` and ``response_tokens``;
    with ``gold``, the same samples' mean ``gold_reward`` and its ``gold_reward_stderr``, so
    gold and KL along training come from one set of samples."""

    def kl(policy: torch.nn.Module) -> dict[str, float]:  # the engine samples from it
        batch, metrics = sampled_kl(engine, reference, prompts, params, batch_size)
        result = {key: metrics[key] for key in KL_METRICS}
        if gold is not None:
            scores = score_rollout(gold, prompts, batch).scores.double()
            count = scores.numel()
            result["gold_reward"] = float(scores.mean())
            result["gold_reward_stderr"] = (
                float(scores.std() / math.sqrt(count)) if count > 1 else 0.0
            )
        return result

    return kl


def held_out_evaluation(
    loader: ResumableLoader | None,
    objective: Objective,
    summarise: Callable[[Mapping[str, float]], dict[str, float]],
    device: torch.device,
    reference: ReferenceModel | None,
    kl: Callable[[torch.nn.Module], dict[str, float]] | None,
    progress: bool = False,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An evaluation function: the loss's held-out metrics and the sampled KL."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if loader is not None:
            sums: dict[str, float] = {}
            with Progress(
                "held-out evaluation", len(loader.items), "examples", enabled=progress
            ) as bar:
                for batch in loader:
                    loss_sum, batch_metrics = offline_loss(
                        model, batch.to(device), objective, reference
                    )
                    sums["loss_sum"] = sums.get("loss_sum", 0.0) + float(loss_sum)
                    for key, value in batch_metrics.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
                    bar.update(batch.loss_units)
            metrics = summarise(sums)
        if kl is not None:
            metrics |= kl(model)
        return metrics

    return evaluate


# ------------------------------------------------------------------------------ the reference


def _load_reference(config: OfflineConfig, tokenizer: Any) -> torch.nn.Module:
    assert config.reference.path is not None
    return load_reference(
        config.reference.path,
        tokenizer,
        dtype=config.reference.dtype or config.model.dtype,
        attn_implementation=config.model.attn_implementation,
    )


def _reference_weights_digest(config: OfflineConfig, model: torch.nn.Module) -> str | None:
    """The reference's weight digest without loading it (None: it must be loaded to tell)."""
    path = config.reference.path
    if path is None:
        return parameters_digest(model)  # the policy at initialisation is the reference
    if Path(path).expanduser().is_dir():
        # the files do not say which dtype they are loaded in (reference.dtype); a hub model
        # is hashed as loaded, dtype included
        dtype = config.reference.dtype or config.model.dtype
        return f"{folder_digest(Path(path).expanduser())}/{dtype}"
    return None  # a hub name: hashed once loaded


def precompute_reference(
    config: OfflineConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[PairExample],
    plan: Sequence[Sequence[int]],
    collate: Callable[[list[PairExample]], PairBatch],
    trainer: Trainer,
    kept: ReferenceModel | None = None,
) -> torch.Tensor:
    """Reference log-probs ``[N, 2]`` of the examples the run reads, NaN for the others: from
    the cache, the missing ones computed once.

    ``plan`` lists the run's batches in order (example indices, see :func:`reference_plan`);
    each example is computed in the batch that reads it first, with that batch's other new
    examples, so a row's value does not depend on which run (or resumed part of one) computed
    it. Runs before the first update (so the policy's own weights are still the initial ones)
    with the trainer's device and precision. A separate ``reference.path`` is loaded for the
    pass and freed after it, unless ``kept`` (the reference held for the whole run) has it.
    """
    device, autocast = trainer.device, trainer.autocast_dtype
    separate = config.reference.path is not None
    loaded = kept.module if separate and kept is not None else None
    weights = _reference_weights_digest(config, model)
    if weights is None:  # a hub name: hashed once loaded
        loaded = loaded if loaded is not None else _load_reference(config, tokenizer)
        weights = parameters_digest(loaded)
    fingerprint = reference_fingerprint(
        weights,
        tokenizer,
        examples,
        config.data.max_length,
        f"{device.type}/{autocast or torch.float32}",
    )
    path = cache_path(config.reference.cache_dir, fingerprint)
    values = read_cache(path, len(examples))
    if values is None:
        values = torch.full((len(examples), 2), float("nan"))
    known = (~values.isnan().any(1)).tolist()  # [N] rows the cache holds
    # each batch's examples that no earlier batch (nor the cache) has: [[index, ...], ...]
    batches, needed = [], set()
    for batch in plan:
        new = [i for i in batch if not known[i] and i not in needed]
        needed.update(batch)
        if new:
            batches.append(new)
    missing = sum(len(batch) for batch in batches)
    if not missing:
        logger.info("reference log-probs: cache hit, %s (%d examples)", path, len(needed))
    else:
        if separate:
            loaded = loaded if loaded is not None else _load_reference(config, tokenizer)
            reference = ReferenceModel.frozen(loaded).to(device)
        else:
            reference = ReferenceModel.policy(model)  # initial weights, or adapter disabled
        start = time.perf_counter()
        with Progress(
            "reference log-probs", missing, "examples", enabled=config.progress
        ) as progress:
            computed = compute_reference_logps(
                reference,
                (collate([examples[i] for i in batch]) for batch in batches),
                len(examples),
                device,
                autocast,
                on_batch=progress.update,
            )
        rows = ~computed.isnan().any(1)
        values[rows] = computed[rows]
        write_cache(path, values, fingerprint)
        logger.info(
            "reference log-probs: computed for %d of the %d examples the run reads (%d in "
            "the data) in %.1f s, cached in %s",
            missing, len(needed), len(examples), time.perf_counter() - start, path,
        )  # fmt: skip
        reference = None
    if loaded is not None and kept is None:  # free a reference loaded for this pass alone
        loaded = None
        release_memory()
    return values


def reference_plan(
    loader: ResumableLoader,
    eval_batches: Sequence[Sequence[int]],
    trainer: Trainer,
    checkpoint: Path | None,
) -> list[list[int]]:
    """The batches (example indices) the run will read, in order: the training batches from
    step 0 to the last step, then the held-out ones.

    Resuming, the checkpoint's loader position adds the batches from there (the same ones
    unless ``resume.allow_changes`` let the batch size change); a run already at its last
    step reads nothing. Planning from step 0 also on resume keeps every example in the batch
    an uninterrupted run computes it in, so a resumed run's losses equal that run's.
    """
    per_step = trainer.config.grad_accum
    state = read_trainer_state(checkpoint) if checkpoint is not None else None
    if state is None:
        return [*loader.upcoming(trainer.total_steps * per_step), *map(list, eval_batches)]
    steps_left = trainer.total_steps - int(state["step"])
    if steps_left <= 0:
        return []
    resumed = dict(state["loader"])
    start = {"epoch": 0, "position": 0, "seed": resumed["seed"]}
    return [
        *loader.upcoming(trainer.total_steps * per_step, start),
        *loader.upcoming(steps_left * per_step, resumed),
        *map(list, eval_batches),
    ]


def _with_reference_check(collate: Callable[[list[PairExample]], PairBatch], table: LogpTable):
    """``collate`` that refuses a batch whose reference log-probs were never computed (a
    wrong plan must stop the run, not train on NaN)."""

    def checked(examples: list[PairExample]) -> PairBatch:
        batch = collate(examples)
        if table.values is not None and batch.ref_logps is not None:
            lacking = batch.index[batch.ref_logps.isnan().any(1)]
            if lacking.numel():
                raise RuntimeError(
                    f"no reference log-probs for examples {lacking.tolist()}: the reference "
                    "pass did not plan for them (a bug); reference.precompute=false runs the "
                    "reference in every step instead"
                )
        return batch

    return checked


# ------------------------------------------------------------------------------ the shared loop


def train_offline(
    config: OfflineConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    out: Path,
    checkpoint: Path | None,
    train_examples: Sequence[PairExample],
    eval_examples: Sequence[PairExample],
    *,
    objective: Objective,
    needs_reference: bool,
    summarise: Callable[[Mapping[str, float]], dict[str, float]],
    kl_prompts: Sequence[Text],
    data_metrics: Mapping[str, float] | None = None,
) -> RunResult:
    """Train on two-completion examples through the engine (DPO family and KTO alike).

    ``eval_examples`` are indexed after ``train_examples`` (one reference table for both);
    ``data_metrics`` (truncation counts) open the run's ``metrics.jsonl``.
    """
    data, seed = config.data, config.train.seed
    if not train_examples:
        raise ValueError(f"{data.train}: no pair left to train on (see the log)")
    examples = [*train_examples, *eval_examples]
    if [example.index for example in examples] != list(range(len(examples))):
        raise ValueError("train and eval examples must be indexed 0 .. N-1 in order")

    # batches: one row per pair with the prompt once where the model allows it
    shared = data.share_prompt and shares_prompt_prefix(model)
    precompute = needs_reference and config.reference.precompute
    table = LogpTable() if precompute else None
    collate = partial(
        collate_pairs_shared_prompt if shared else collate_pairs,
        pad_token_id=tokenizer.pad_token_id,
        reference=table,
    )
    if table is not None:
        collate = _with_reference_check(collate, table)
    lengths = [example.length for example in train_examples] if data.group_by_length else None
    batch_size = config.train.batch_size
    train_loader = ResumableLoader(
        list(train_examples), batch_size, collate, seed=seed, lengths=lengths
    )

    def ordered(items: Sequence[PairExample]) -> ResumableLoader:
        return ResumableLoader(list(items), batch_size, collate, shuffle=False, drop_last=False)

    eval_loader = ordered(eval_examples) if eval_examples else None
    eval_batches = [
        [example.index for example in eval_examples[start : start + batch_size]]
        for start in range(0, len(eval_examples), batch_size)
    ]  # eval_loader's batches
    logger.info(
        "%d training examples, %d held-out; %s layout",
        len(train_examples), len(eval_examples),
        "shared-prompt (one row per pair)" if shared else "plain (one row per completion)",
    )  # fmt: skip

    # the reference kept in memory: for per-step log-probs, or for the sampled KL
    sampled = bool(kl_prompts) and config.eval.kl_prompts > 0 and needs_reference
    if needs_reference and (sampled or not precompute):
        reference = kept_reference(config.reference, config.model, model, tokenizer)
    else:
        reference = None
        if config.eval.kl_prompts > 0 and not needs_reference:
            logger.info("no sampled KL: a reference-free loss has no reference to measure it to")

    device = resolve_device(config.train.device)
    kl, engine = None, None
    if sampled and reference is not None:
        params = SamplingParams(
            max_new_tokens=config.eval.max_new_tokens,
            temperature=config.eval.temperature,
            num_samples=config.eval.kl_samples_per_prompt,
            seed=seed,
        )
        model.to(device)  # as the Trainer will: an engine with its own copy (vLLM) starts there
        engine = engine_for(config.eval, model, tokenizer, batch_size=config.eval.batch_size)
        gold = config.eval.gold_reward
        kl = kl_evaluation(
            engine,
            reference,
            list(kl_prompts),
            params,
            config.eval.batch_size,
            gold=build_reward(gold) if gold is not None else None,
        )
    evaluate = held_out_evaluation(
        eval_loader,
        objective,
        summarise,
        device,
        None if precompute else reference,
        kl,
        progress=config.progress,
    )
    trainer, export = make_trainer(
        config,
        model,
        tokenizer,
        train_loader,
        partial(offline_loss, objective=objective, reference=None if precompute else reference),
        out,
        evaluate=evaluate if (eval_loader is not None or kl is not None) else None,
        data_metrics=data_metrics,
    )
    if reference is not None and reference.module is not model:
        reference.to(trainer.device)

    # reference log-probs: once, before the first update, for the rows the run reads (the
    # schedule is seeded, so known now); from the cache when it has them. Computing them all
    # up front rather than per batch lets the default reference, the initial policy itself,
    # be run with no second model in memory, and a separate reference be freed.
    if table is not None:
        plan = reference_plan(train_loader, eval_batches, trainer, checkpoint)
        table.values = precompute_reference(
            config, model, tokenizer, examples, plan, collate, trainer, reference
        )

    if config.eval.before and trainer.evaluate is not None and checkpoint is None:
        initial = trainer.evaluation()
        (out / "eval_initial.json").write_text(json.dumps(initial, indent=2), encoding="utf-8")
    try:
        result = trainer.train(resume_from=checkpoint)
    finally:
        if engine is not None:
            close_engine(engine)
    model_dir = out / "model"
    export(model_dir)
    return RunResult(out, result.final_step, model_dir, result.history)
