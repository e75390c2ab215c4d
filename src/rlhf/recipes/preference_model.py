"""Pairwise preference model training: P(y ≻ y′ | x) from a model that reads both responses.

A reward model (``rlhf rm``) gives each response one number, so the preferences it can express
are Bradley–Terry's and transitive. A pairwise preference model reads the prompt and both
responses in one sequence (:mod:`rlhf.data.pairwise`) and gives a logit g(x, a, b); each
comparison is read in both orders and

    P(a ≻ b | x) = σ(g(x, a, b) − g(x, b, a))

antisymmetric by construction, and free to be non-transitive (PairRM, Jiang et al., 2023; the
general preference model of Ye et al., 2024, §2; the preference oracle of Nash learning from
human feedback, Munos et al., 2023, and of SPPO, Wu et al., 2024). The loss is the binary
cross-entropy of that probability against the label
(:func:`rlhf.losses.preference_model.pairwise_preference_loss`), averaged over the comparisons
of each optimiser step; ``train.batch_size`` counts comparisons (two sequences each).

The data is the reward model's: preference pairs, rankings (all their pairs), ratings and
thumbs (paired within a prompt), edits (:mod:`rlhf.recipes.comparisons`); the held-out split is
by prompt and reports accuracy, loss and the expected calibration error of P over both orders.
The model is saved to ``<out>/model`` as a one-label ``AutoModelForSequenceClassification``
whose config marks it a pairwise preference model (:mod:`rlhf.models.preference`); online
recipes use it as ``preference: {model: <out>/model}`` (:mod:`rlhf.rewards.preference`).

    rlhf pm --preset tiny
    rlhf pm --config pm.yaml model.path=runs/sft/model data.train=prefs.jsonl
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
from pydantic import Field, model_validator

from rlhf.data.pairwise import (
    FIRST_HEADER,
    SECOND_HEADER,
    PairwiseBatch,
    PairwiseExample,
    collate_pairwise,
    tokenize_pairwise,
)
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.progress import Progress
from rlhf.engine.trainer import TrainConfig, resolve_device
from rlhf.losses.preference_model import pairwise_preference_loss, preference_probability
from rlhf.losses.reward import expected_calibration_error
from rlhf.models.load import LoraSpec, load_tokenizer
from rlhf.models.preference import init_preference_model
from rlhf.models.reward import reward_logits
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    RunResult,
    check_fits_positions,
    model_source,
    prepare_out_dir,
    report_truncation,
    training_texts,
)
from rlhf.recipes.comparisons import ComparisonDataConfig, load_comparisons
from rlhf.recipes.lm import train_and_export

logger = logging.getLogger("rlhf")

# copies of the pair text's headers among a tiny model's tokenizer texts, so that its BPE
# learns them as a few tokens (they are in every sequence, but not in the data's rows)
HEADER_TEXTS = 64


class PreferenceModelConfig(RecipeConfig):
    """Pairwise preference model training: P(y ≻ y′ | x) = σ(g(x, y, y′) − g(x, y′, y))."""

    model: ModelConfig = Field(
        description="The backbone: a causal LM (e.g. the SFT model), an encoder (BERT, "
        "MiniLM), a reward or preference model to train further, or a tiny Llama built from "
        "scratch."
    )
    data: ComparisonDataConfig = Field(
        description="Comparisons: preference pairs, rankings, ratings, thumbs, edits. Each "
        "sequence holds the prompt and both responses: data.max_length must fit them."
    )
    train: TrainConfig = Field(
        # the reward model's rate: the same backbone, the same kind of head
        default_factory=lambda: TrainConfig(lr=1e-5),
        description="Optimisation; batch_size counts comparisons (each read in both orders).",
    )

    @model_validator(mode="after")
    def _no_packing(self) -> PreferenceModelConfig:
        if self.data.packing:
            raise ValueError(
                "data.packing: a preference model reads one comparison per row; set false"
            )
        return self


# ------------------------------------------------------------------------------ loss and eval


def pair_logits(model: torch.nn.Module, batch: PairwiseBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g(x, a, b) [P], g(x, b, a) [P])`` of a batch: one forward pass over its 2P rows."""
    logits = reward_logits(model, batch.input_ids, batch.attention_mask)  # [2P]
    count = batch.loss_units
    return logits[:count], logits[count:]


def preference_loss(
    model: torch.nn.Module, batch: PairwiseBatch
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed cross-entropy of σ(g(x, a, b) − g(x, b, a)) against the batch's labels."""
    forward, reverse = pair_logits(model, batch)
    return pairwise_preference_loss(forward, reverse, batch.labels)


def held_out_metrics(loader: ResumableLoader, device: torch.device, progress: bool = False) -> Any:
    """An evaluation function: ``loss`` (mean cross-entropy), ``accuracy`` (share of
    comparisons whose preferred side is the label's, ties ½), ``ece`` (expected calibration
    error of P over both orders: P(a ≻ b) with the label and 1 − P with its complement, as the
    reward model's) and ``pairs``."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        probabilities, labels = [], []
        with Progress("held-out evaluation", len(loader.items), "pairs", enabled=progress) as bar:
            for batch in loader:
                batch = batch.to(device)
                forward, reverse = pair_logits(model, batch)
                _, metrics = pairwise_preference_loss(forward, reverse, batch.labels)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                probabilities.append(preference_probability(forward, reverse).cpu())
                labels.append(batch.labels.cpu())
                bar.update(batch.loss_units)
        count = max(sums.get("pairs", 0.0), 1.0)
        p, y = torch.cat(probabilities), torch.cat(labels)  # [P] each
        return {
            "loss": sums.get("loss_sum", 0.0) / count,
            "accuracy": sums.get("correct_pairs", 0.0) / count,
            "ece": expected_calibration_error(torch.cat([p, 1 - p]), torch.cat([y, 1 - y])),
            "pairs": sums.get("pairs", 0.0),
        }

    return evaluate


def make_pairwise_loader(
    examples: list[PairwiseExample],
    batch_size: int,
    pad_token_id: int,
    seed: int,
    shuffle: bool = True,
    group_by_length: bool = False,
) -> ResumableLoader:
    lengths = [example.length for example in examples] if shuffle and group_by_length else None
    return ResumableLoader(
        examples,
        batch_size,
        partial(collate_pairwise, pad_token_id=pad_token_id),
        seed=seed,
        shuffle=shuffle,
        drop_last=shuffle,
        lengths=lengths,
    )


# ------------------------------------------------------------------------------ the recipe


def run_preference_model(config: PreferenceModelConfig, resume: bool = False) -> RunResult:
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: comparisons grouped by prompt; the held-out split is by prompt too
    comparisons = load_comparisons(data, seed)

    # model: the backbone with a scalar head, marked as a pairwise preference model
    def tokenizer_texts() -> list[str]:
        return training_texts(comparisons.records) + [FIRST_HEADER + SECOND_HEADER] * HEADER_TEXTS

    path = model_source(config.model, out, tokenizer_texts, seed)
    tokenizer = load_tokenizer(path, gguf_file=config.model.gguf_file)
    lora = config.model.lora
    model = init_preference_model(
        path,
        tokenizer,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        gguf_file=config.model.gguf_file,
        lora=None if lora is None else LoraSpec(**lora.model_dump()),
        seed=seed,
    )
    check_fits_positions(model, data.max_length)

    # tokenise: every comparison in both orders
    reports = {split: TruncationReport(data.max_length, "pairs") for split in ("train", "eval")}
    train_examples = tokenize_pairwise(
        tokenizer, comparisons.train, data.max_length, data.truncation, report=reports["train"]
    )
    eval_examples = tokenize_pairwise(
        tokenizer, comparisons.eval, data.max_length, data.truncation, report=reports["eval"]
    )
    data_metrics = report_truncation(reports)
    if not train_examples:
        raise ValueError(f"{data.train}: no comparison left to train on (see the log)")
    pad = tokenizer.pad_token_id
    loader = make_pairwise_loader(
        train_examples, config.train.batch_size, pad, seed, group_by_length=data.group_by_length
    )
    device = resolve_device(config.train.device)
    evaluate = None
    if eval_examples:
        eval_loader = make_pairwise_loader(
            eval_examples, config.train.batch_size, pad, seed, shuffle=False
        )
        evaluate = held_out_metrics(eval_loader, device, config.progress)

    # train, then export a plain Hugging Face folder
    return train_and_export(
        config,
        model,
        tokenizer,
        loader,
        preference_loss,
        out,
        checkpoint,
        evaluate=evaluate,
        data_metrics=data_metrics,
    )
