"""Offline preference optimisation: DPO and its family, trained directly on preference pairs.

DPO (Rafailov et al., 2023) needs no reward model and no sampling during training. Its
loss (eq. 7) is the Bradley–Terry likelihood of the data with the reward replaced by the
policy's *implicit reward* ``β · log π(y|x) / π_ref(y|x)``::

    L = −log σ(β · [log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)])

and its minimiser is the optimum of the KL-regularised reward objective. ``loss.name`` picks
the variant from :data:`rlhf.losses.preference.PREFERENCE_LOSSES` (IPO, SLiC hinge, robust /
conservative DPO, the general convex f, SimPO, ORPO, RPO, APO-zero); see docs/dpo.md.

Phases: data (any comparing kind becomes pairs; the held-out split is by prompt) → model →
tokenise (prompt and completion together) → batches (one row per pair with the prompt once
for decoders that take a 4-D mask, else ``[2P, T]``) → reference log-probs (of the pairs the
seeded schedule reads, computed once with the policy's own initial weights, a LoRA policy's
disabled adapter or ``reference.path``, and cached on disk; skipped for reference-free
losses) → train → export. From the batches on, it is the loop shared with KTO
(:func:`rlhf.recipes.offline_common.train_offline`).

    rlhf dpo --preset tiny
    rlhf dpo --preset tiny --loss ipo
    rlhf dpo --config dpo.yaml model.path=runs/sft/model data.train=prefs.jsonl
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.pairs import preference_groups
from rlhf.data.preference import PairBatch, PairText, tokenize_pairs
from rlhf.data.records import Record
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.trainer import TrainConfig
from rlhf.losses.preference import (
    CONVEX_FUNCTIONS,
    PREFERENCE_LOSSES,
    LossOutput,
    PairLogps,
)
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    RunResult,
    build_model_and_tokenizer,
    check_fits_positions,
    load_records,
    prepare_out_dir,
    report_truncation,
    training_texts,
)
from rlhf.recipes.offline_common import (
    Objective,
    PreferenceDataConfig,
    PreferenceEvalConfig,
    ReferenceConfig,
    split_by_prompt,
    train_offline,
    unique_prompts,
)

LossName = Literal[tuple(PREFERENCE_LOSSES)]  # type: ignore[valid-type]
ConvexName = Literal[tuple(CONVEX_FUNCTIONS)]  # type: ignore[valid-type]
HYPERPARAMETERS = ("beta", "label_smoothing", "gamma", "alpha")


# ------------------------------------------------------------------------------ config


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

    def function(self) -> Callable[[PairLogps], LossOutput]:
        """The loss with the hyperparameters set here; unset ones keep the loss's defaults."""
        spec = PREFERENCE_LOSSES[self.name]
        kwargs = {key: getattr(self, key) for key in spec.hyperparameters}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if self.name == "general":
            kwargs["f"] = CONVEX_FUNCTIONS[self.convex_f or "logistic"]
        return partial(spec.fn, **kwargs)


class DPOConfig(RecipeConfig):
    """Offline preference optimisation (DPO and its family)."""

    model: ModelConfig = Field(description="The policy to train (usually the SFT model).")
    reference: ReferenceConfig = Field(
        default_factory=ReferenceConfig, description="The reference policy π_ref."
    )
    data: PreferenceDataConfig = Field(
        description="Comparisons: preference pairs, rankings, ratings, thumbs, edits."
    )
    loss: PreferenceLossConfig = Field(
        default_factory=PreferenceLossConfig, description="The loss."
    )
    train: TrainConfig = Field(
        # lr 1e-6: Rafailov et al. 2023 (§B); β-scaled log-ratios move fast, larger rates overfit
        default_factory=lambda: TrainConfig(lr=1e-6),
        description="Optimisation; batch_size counts pairs.",
    )
    eval: PreferenceEvalConfig = Field(
        default_factory=PreferenceEvalConfig, description="Held-out evaluation."
    )


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


# ------------------------------------------------------------------------------ loss


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


# ------------------------------------------------------------------------------ the recipe


def run_dpo(config: DPOConfig, resume: bool = False) -> RunResult:
    """Train a policy on preference pairs with the configured loss; export it to <out>/model."""
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: pairs from any comparing kind; the held-out split is by prompt
    records = load_records(data.train, data)
    groups = preference_pairs(records, data.train)

    def read_eval() -> list[PairText]:
        assert data.eval is not None
        held_out = preference_pairs(load_records(data.eval, data), data.eval)
        return [pair for group in held_out for pair in group]

    train_pairs, eval_pairs = split_by_prompt(groups, data, seed, read_eval)

    # model (a tiny one is built here, its tokenizer trained on this data)
    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), seed
    )
    check_fits_positions(model, data.max_length)

    # tokenise: prompt and completion together, both completions of a pair
    reports = {split: TruncationReport(data.max_length, "pairs") for split in ("train", "eval")}
    train_examples = tokenize_pairs(
        tokenizer, train_pairs, data.max_length, data.truncation, report=reports["train"]
    )
    eval_examples = tokenize_pairs(
        tokenizer, eval_pairs, data.max_length, data.truncation,
        first_index=len(train_examples), report=reports["eval"],
    )  # fmt: skip
    return train_offline(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        train_examples,
        eval_examples,
        objective=pairwise_objective(config.loss.function()),
        needs_reference=config.loss.needs_reference,
        summarise=pair_summary,
        kl_prompts=unique_prompts(eval_pairs, config.eval.kl_prompts),
        data_metrics=report_truncation(reports),
    )
