"""KTO: offline preference optimisation from unpaired thumbs up / thumbs down.

Kahneman–Tversky Optimisation (Ethayarajh et al., 2024) needs no pairs: each example is one
completion with a binary label. With the implicit reward ``r = log π(y|x) − log π_ref(y|x)``
and a reference point ``z_ref`` (the batch's estimate of KL(π‖π_ref), eq. 8)::

    L = λ_D · (1 − σ(β(r − z_ref)))   for a thumbs up
    L = λ_U · (1 − σ(β(z_ref − r)))   for a thumbs down

``z_ref`` is estimated on *mismatched* completions: each example is paired, once at data
preparation (seeded), with the completion of another example under its own prompt, and
``log π(y'|x) − log π_ref(y'|x)`` averaged over the micro-batch (so, unlike the pairwise losses,
KTO's update depends a little on how a step is split into micro-batches, as in the paper).
The rated and the mismatched completion share the prompt, so an example is batched exactly
like a DPO pair (:mod:`rlhf.data.preference`): one row, the prompt once. Reference log-probs of
both are computed once and cached, in the loop DPO runs too
(:func:`rlhf.recipes.offline_common.train_offline`).

Reads binary feedback (``{"prompt", "completion", "label"}``); preference pairs, rankings,
ratings and edits are first made pairs, then split into a thumbs up for the chosen completion
and a thumbs down for the rejected one (:func:`rlhf.data.convert.preference_to_binary`).

    rlhf kto --preset tiny
    rlhf kto --config kto.yaml model.path=runs/sft/model data.train=thumbs.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from pydantic import Field

from rlhf.config import StrictModel
from rlhf.data.convert import as_preferences, by_prompt, preference_to_binary
from rlhf.data.errors import DataError
from rlhf.data.preference import PairBatch, PairText, tokenize_pairs
from rlhf.data.records import BinaryRecord, Record
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.trainer import TrainConfig
from rlhf.losses.preference import LossOutput, UnpairedLogps, kto_loss
from rlhf.models.parallel import all_reduce_sums, is_distributed
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

logger = logging.getLogger("rlhf")


class KTOLossConfig(StrictModel):
    beta: float = Field(0.1, gt=0, description="β: the KL strength.")
    desirable_weight: float = Field(1.0, gt=0, description="λ_D, weight of thumbs-up examples.")
    undesirable_weight: float = Field(
        1.0,
        gt=0,
        description="λ_U, weight of thumbs-down examples; the paper advises "
        "λ_D·n_D / (λ_U·n_U) in [1, 4/3].",
    )


class KTOConfig(RecipeConfig):
    """KTO on unpaired binary feedback."""

    model: ModelConfig = Field(description="The policy to train (usually the SFT model).")
    reference: ReferenceConfig = Field(
        default_factory=ReferenceConfig, description="The reference policy π_ref."
    )
    data: PreferenceDataConfig = Field(
        description="Thumbs up/down; pairs, rankings, ratings and edits are split into thumbs."
    )
    loss: KTOLossConfig = Field(default_factory=KTOLossConfig, description="The loss.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-6),  # as DPO's
        description="Optimisation; batch_size counts examples.",
    )
    eval: PreferenceEvalConfig = Field(
        default_factory=PreferenceEvalConfig, description="Held-out evaluation."
    )


# ------------------------------------------------------------------------------ data


def binary_feedback(records: Sequence[Record], source: str) -> list[BinaryRecord]:
    """Thumbs up/down from binary rows as they are and from anything that compares responses
    (chosen: up, rejected: down); repeated (prompt, completion, label) rows are kept once."""
    binary = [record for record in records if isinstance(record, BinaryRecord)]
    comparing = [record for record in records if not isinstance(record, BinaryRecord)]
    if comparing:
        try:
            pairs = as_preferences(comparing)
        except DataError as error:  # e.g. demonstrations given where feedback belongs
            raise DataError(source, None, error.field, error.message, reason=error.reason) from None
        binary += [thumb for pair in pairs for thumb in preference_to_binary(pair)]
    unique = {(r.prompt, r.completion, r.label): r for r in reversed(binary)}
    return list(reversed(unique.values()))


def with_mismatched(feedback: Sequence[BinaryRecord], seed: int) -> list[PairText]:
    """Each example with the completion of another one (its KL completion y').

    A seeded permutation cycles: the example at place j takes the completion of the example at
    place j + 1, so every completion serves once as someone else's y'. Fixed at data
    preparation, so the reference's log-probs of y' can be computed once and cached.
    """
    order = torch.randperm(len(feedback), generator=torch.Generator().manual_seed(seed)).tolist()
    partner = {order[j]: order[(j + 1) % len(order)] for j in range(len(order))}
    return [
        PairText(record.prompt, record.completion, feedback[partner[i]].completion, record.label)
        for i, record in enumerate(feedback)
    ]


def check_balance(feedback: Sequence[BinaryRecord], loss: KTOLossConfig) -> None:
    """Warn when λ_D·n_D / (λ_U·n_U) is outside the paper's advised [1, 4/3] (§4.2)."""
    up = sum(record.label for record in feedback)
    down = len(feedback) - up
    if not up or not down:
        logger.warning(
            "KTO data holds only thumbs %s: the loss has nothing to contrast",
            "up" if up else "down",
        )
        return
    ratio = loss.desirable_weight * up / (loss.undesirable_weight * down)
    if not 1.0 <= ratio <= 4 / 3:
        logger.warning(
            "λ_D·n_D / (λ_U·n_U) = %.3g (%d up, %d down); KTO's authors advise 1 to 4/3: "
            "adjust loss.desirable_weight / loss.undesirable_weight",
            ratio, up, down,
        )  # fmt: skip


# ------------------------------------------------------------------------------ loss


def kto_objective(loss: KTOLossConfig) -> Objective:
    """KTO on the batch's (rated, mismatched) completions."""

    def objective(batch: PairBatch, logps: torch.Tensor, ref: torch.Tensor | None) -> LossOutput:
        assert ref is not None and batch.desirable is not None  # KTO always has a reference
        return kto_loss(
            UnpairedLogps(
                logps=logps[:, 0],
                ref_logps=ref[:, 0],
                desirable=batch.desirable,
                kl_logps=logps[:, 1],
                ref_kl_logps=ref[:, 1],
            ),
            beta=loss.beta,
            desirable_weight=loss.desirable_weight,
            undesirable_weight=loss.undesirable_weight,
            kl_estimate=batch_kl_over_ranks(logps[:, 1], ref[:, 1]),
        )

    return objective


def batch_kl_over_ranks(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> float | None:
    """z_ref's KL estimate over the whole micro-batch when data-parallel ranks each hold a
    share of it (the mean of every rank's mismatched rows); None in a single process, where
    :func:`~rlhf.losses.preference.kto_loss` takes its batch's own mean."""
    if not is_distributed():
        return None
    rows = (kl_logps.detach().float() - ref_kl_logps.detach().float()).sum()
    totals = all_reduce_sums({"kl": float(rows), "rows": float(kl_logps.numel())})
    return totals["kl"] / max(totals["rows"], 1.0)


def kto_summary(sums: Mapping[str, float]) -> dict[str, float]:
    """Held-out means from KTO's summed metrics."""
    examples = max(sums.get("examples", 0.0), 1.0)
    up, down = max(sums.get("desirable", 0.0), 1.0), max(sums.get("undesirable", 0.0), 1.0)
    desirable = sums["desirable_reward_sum"] / up
    undesirable = sums["undesirable_reward_sum"] / down
    return {
        "loss": sums["loss_sum"] / examples,
        "desirable_reward": desirable,
        "undesirable_reward": undesirable,
        "reward_margin": desirable - undesirable,
        "kl_estimate": sums["kl_sum"] / examples,
        "examples": sums.get("examples", 0.0),
    }


# ------------------------------------------------------------------------------ the recipe


def run_kto(config: KTOConfig, resume: bool = False) -> RunResult:
    """Train a policy on thumbs up/down with KTO; export it to <out>/model."""
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: thumbs from any feedback kind; the held-out split is by prompt
    records = load_records(data.train, data)
    feedback = binary_feedback(records, data.train)

    def read_eval() -> list[BinaryRecord]:
        assert data.eval is not None
        return binary_feedback(load_records(data.eval, data), data.eval)

    train_feedback, eval_feedback = split_by_prompt(by_prompt(feedback), data, seed, read_eval)
    check_balance(train_feedback, config.loss)
    train_items = with_mismatched(train_feedback, seed)
    eval_items = with_mismatched(eval_feedback, seed + 1) if eval_feedback else []

    # model (a tiny one is built here, its tokenizer trained on this data)
    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), seed
    )
    check_fits_positions(model, data.max_length)

    # tokenise: the rated and the mismatched completion, each with the example's prompt
    tokenize = partial(
        tokenize_pairs,
        tokenizer,
        max_length=data.max_length,
        truncation=data.truncation,
        drop_identical=False,
    )
    reports = {split: TruncationReport(data.max_length) for split in ("train", "eval")}
    train_examples = tokenize(train_items, report=reports["train"])
    eval_examples = tokenize(eval_items, first_index=len(train_examples), report=reports["eval"])
    return train_offline(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        train_examples,
        eval_examples,
        objective=kto_objective(config.loss),
        needs_reference=True,
        summarise=kto_summary,
        kl_prompts=unique_prompts(eval_items, config.eval.kl_prompts),
        data_metrics=report_truncation(reports),
    )
