"""Process reward model training: P(step correct) at every step of a solution.

An outcome reward model scores a whole response; a process reward model (PRM) scores each
step, so it can say *where* a solution goes wrong (Lightman et al. 2023, "Let's verify step by
step"; Math-Shepherd, Wang et al. 2024). The data is step-level records (``prompt``, ``steps``,
``labels``: +1 correct, −1 wrong, 0 neutral, null unlabelled; PRM800K's and Math-Shepherd's
layouts read as they are, :mod:`rlhf.data.records`); each solution is one sequence with a
separator after every step (:mod:`rlhf.data.step_tokens`); the model is a token classifier read
at each separator (:mod:`rlhf.models.prm`), trained with the per-step binary cross-entropy
(:func:`rlhf.losses.prm.step_loss`) averaged over the labelled steps of each optimiser step;
``train.batch_size`` counts solutions. The held-out split is by prompt and reports ``loss``,
``step_accuracy`` (σ(ℓ) on the label's side of ½) and ``first_error_accuracy`` (the first step
judged wrong, or none, is the first step labelled −1, or none; over the solutions whose labels
say where that is). The model is saved to ``<out>/model``.

    rlhf prm --preset tiny
    rlhf prm --config prm.yaml model.path=runs/sft/model data.train=steps.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from pydantic import Field, model_validator

from rlhf.data.convert import by_prompt
from rlhf.data.records import Record
from rlhf.data.step_tokens import (
    Neutral,
    StepBatch,
    StepExample,
    collate_steps,
    tokenize_solutions,
)
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.progress import Progress
from rlhf.engine.trainer import TrainConfig, resolve_device
from rlhf.losses.prm import first_error, step_loss
from rlhf.models.load import LoraSpec, load_tokenizer
from rlhf.models.prm import init_process_reward_model, step_logits
from rlhf.recipes.common import (
    DataConfig,
    ModelConfig,
    RecipeConfig,
    RunResult,
    check_fits_positions,
    load_records,
    model_source,
    prepare_out_dir,
    report_truncation,
    training_texts,
)
from rlhf.recipes.lm import train_and_export
from rlhf.recipes.offline_common import split_by_prompt

logger = logging.getLogger("rlhf")


class StepDataConfig(DataConfig):
    step_separator: str = Field(
        "\n",
        min_length=1,
        description="Written after the prompt and after every step; each step's score is read "
        "at its last token.",
    )
    group_by_length: bool = Field(
        True,
        description="Batch solutions of similar length together (each window of 50 shuffled "
        "batches sorted by length, then the batches shuffled): far less padding.",
    )
    neutral: Neutral = Field(
        "positive",
        description="Neutral (0) steps: positive (no error, the default), negative, or ignore "
        "(left out of the loss).",
    )


class PRMConfig(RecipeConfig):
    """Process reward model training: a per-step binary loss at each step's end."""

    model: ModelConfig = Field(
        description="The backbone: a causal LM (e.g. the SFT model), an encoder (BERT, "
        "MiniLM), a process reward model to train further, or a tiny Llama built from scratch."
    )
    data: StepDataConfig = Field(
        description="Step-level records: {prompt, steps, labels}, PRM800K or Math-Shepherd rows."
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-5),  # the reward model's rate and head
        description="Optimisation; batch_size counts solutions.",
    )

    @model_validator(mode="after")
    def _no_packing(self) -> PRMConfig:
        if self.data.packing:
            raise ValueError("data.packing: a process reward model reads one solution per row")
        return self


# ------------------------------------------------------------------------------ loss and eval


def prm_loss(model: torch.nn.Module, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed per-step cross-entropy of a batch (:func:`rlhf.losses.prm.step_loss`)."""
    logits = step_logits(
        model, batch.input_ids, batch.attention_mask, batch.step_rows, batch.step_ends
    )
    return step_loss(logits, batch.targets)


def true_first_error(labels: Sequence[float | None]) -> tuple[bool, int | None]:
    """Whether a solution's labels say where its first error is, and where (None: no error):
    the first step labelled −1 (or with a soft label below ½), provided every step before it
    is labelled; no error when every step is labelled and none is an error."""
    for index, label in enumerate(labels):
        if label is None:
            return False, None
        if label == -1 or 0 < label < 0.5:
            return True, index
    return True, None


def held_out_metrics(
    loader: ResumableLoader, examples: Sequence[StepExample], device: torch.device, progress: bool
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """An evaluation function: ``loss``, ``step_accuracy``, ``first_error_accuracy``,
    ``steps`` and ``solutions`` (those whose first error the labels locate)."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        judged: list[bool] = []  # σ(ℓ) > ½ of every step, in example order
        with Progress("held-out evaluation", len(examples), "solutions", enabled=progress) as bar:
            for batch in loader:
                batch = batch.to(device)
                logits = step_logits(
                    model, batch.input_ids, batch.attention_mask, batch.step_rows, batch.step_ends
                )
                _, metrics = step_loss(logits, batch.targets)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
                judged += (logits > 0).tolist()
                bar.update(batch.input_ids.shape[0])
        hits, located, start = 0, 0, 0
        for example in examples:
            steps = judged[start : start + len(example.ends)]
            start += len(example.ends)
            known, where = true_first_error(example.labels)
            if known:
                located += 1
                hits += first_error(steps) == where
        count = max(sums.get("steps", 0.0), 1.0)
        return {
            "loss": sums.get("loss_sum", 0.0) / count,
            "step_accuracy": sums.get("correct_steps", 0.0) / count,
            "first_error_accuracy": hits / located if located else float("nan"),
            "steps": sums.get("steps", 0.0),
            "solutions": float(located),
        }

    return evaluate


def _solutions(records: Sequence[Record], source: str) -> list[Any]:
    from rlhf.data.records import StepRecord

    wrong = [type(r).__name__ for r in records if not isinstance(r, StepRecord)]
    if wrong:
        raise ValueError(
            f"{source}: a process reward model trains on step-level records ({{prompt, steps, "
            f"labels}}, PRM800K or Math-Shepherd rows); found {len(wrong)} {wrong[0]}(s)"
        )
    return list(records)


# ------------------------------------------------------------------------------ the recipe


def run_prm(config: PRMConfig, resume: bool = False) -> RunResult:
    """Train a process reward model on step-level records; export it to <out>/model."""
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: solutions grouped by prompt; the held-out split is by prompt too
    records = load_records(data.train, data)
    solutions = _solutions(records, data.train)

    def read_eval() -> list[Any]:
        assert data.eval is not None
        return _solutions(load_records(data.eval, data), data.eval)

    train, held_out = split_by_prompt(by_prompt(solutions), data, seed, read_eval)

    # model: the backbone with a scalar head on every token, marked with the separator
    def tokenizer_texts() -> list[str]:
        return training_texts(records) + [data.step_separator] * 64

    path = model_source(config.model, out, tokenizer_texts, seed)
    tokenizer = load_tokenizer(path, gguf_file=config.model.gguf_file)
    lora = config.model.lora
    model = init_process_reward_model(
        path,
        tokenizer,
        data.step_separator,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        gguf_file=config.model.gguf_file,
        lora=None if lora is None else LoraSpec(**lora.model_dump()),
        seed=seed,
    )
    check_fits_positions(model, data.max_length)

    # tokenise: one sequence per solution, a label at each step's end
    reports = {split: TruncationReport(data.max_length, "solutions") for split in ("train", "eval")}
    tokenize = partial(
        tokenize_solutions,
        tokenizer,
        separator=data.step_separator,
        max_length=data.max_length,
        neutral=data.neutral,
        truncation=data.truncation,
    )
    train_examples = tokenize(train, report=reports["train"])
    eval_examples = tokenize(held_out, report=reports["eval"])
    data_metrics = report_truncation(reports)
    if not any(t is not None for e in train_examples for t in e.targets):
        raise ValueError(f"{data.train}: no labelled step left to train on (see the log)")
    collate = partial(collate_steps, pad_token_id=tokenizer.pad_token_id)
    lengths = [example.length for example in train_examples] if data.group_by_length else None
    loader = ResumableLoader(
        train_examples, config.train.batch_size, collate, seed=seed, lengths=lengths
    )
    device = resolve_device(config.train.device)
    evaluate = None
    if eval_examples:
        eval_loader = ResumableLoader(
            eval_examples, config.train.batch_size, collate, shuffle=False, drop_last=False
        )
        evaluate = held_out_metrics(eval_loader, eval_examples, device, config.progress)

    # train, then export a plain Hugging Face folder
    return train_and_export(
        config,
        model,
        tokenizer,
        loader,
        prm_loss,
        out,
        checkpoint,
        evaluate=evaluate,
        data_metrics=data_metrics,
    )
