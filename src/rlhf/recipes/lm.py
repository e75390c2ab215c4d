"""Next-token training shared by SFT, pretraining and RAFT: loss, evaluation, loaders,
export, SFT's config, and the init-SFT phase that trains a starting policy first (RAFT and the
online recipes)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import Field

from rlhf.config import StrictModel
from rlhf.data.collate import IGNORE_INDEX, LMBatch, collate_packed, collate_padded, pack_examples
from rlhf.data.convert import as_demonstrations
from rlhf.data.records import Record
from rlhf.data.tokenize import TokenizedExample, TruncationReport
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.trainer import TrainConfig, Trainer, latest_checkpoint, resolve_device
from rlhf.losses.sft import nll_loss_sum
from rlhf.models.forward import has_plain_head, label_logprobs, logits_at
from rlhf.models.memory import activations_checkpointed
from rlhf.recipes.common import (
    DataConfig,
    ModelConfig,
    RecipeConfig,
    RunResult,
    build_model_and_tokenizer,
    check_fits_positions,
    load_records,
    prepare_out_dir,
    report_truncation,
    split_train_eval,
    tokenize_records,
    training_texts,
)

logger = logging.getLogger("rlhf")


class NextTokenConfig(RecipeConfig):
    """What a next-token recipe's config holds (SFT's, pretraining's): the keys
    :func:`train_language_model` and :func:`train_on_examples` read. Each recipe's own config
    narrows the sections and gives them its defaults and descriptions."""

    model: ModelConfig = Field(description="The model.")
    data: DataConfig = Field(description="The training text.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")


class SFTConfig(NextTokenConfig):
    """Supervised fine-tuning."""

    model: ModelConfig = Field(description="The model to fine-tune.")
    data: DataConfig = Field(description="Demonstrations.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=2e-5),
        description="Optimisation (lr 2e-5: full fine-tuning of a pretrained model).",
    )


def as_demonstration(record: Record) -> list[Record]:
    """The demonstrations a record holds (SFT's ``to_examples``)."""
    return as_demonstrations([record])


def lm_loss(model: torch.nn.Module, batch: LMBatch) -> tuple[torch.Tensor, Mapping[str, float]]:
    """Summed NLL of the batch's target tokens; the output layer runs on those positions only.

    Under activation checkpointing (``train.gradient_checkpointing``) the output layer is
    checkpointed too: applied to 1,024 positions at a time and recomputed in the backward
    pass (:func:`~rlhf.models.forward.label_logprobs`), so the ``[N, V]`` logits, their
    log-softmax and its gradient (three times 400 MB for 2,048 tokens of a 49k vocabulary) are
    never held at once. The same NLL within float rounding, for one more pass of the output
    layer."""
    if activations_checkpointed(model) and has_plain_head(model):
        logps = label_logprobs(
            model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.labels
        )  # [B, T], 0 where there is no target
        loss_sum = -logps.sum()
        return loss_sum, {"nll_sum": loss_sum.item()}
    select = batch.labels != IGNORE_INDEX  # [B, T]
    logits = logits_at(model, batch.input_ids, batch.attention_mask, batch.position_ids, select)
    return nll_loss_sum(logits, batch.labels[select])  # logits [N, V], targets [N]


def make_loader(
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_token_id: int,
    packing: bool,
    max_length: int,
    seed: int,
    shuffle: bool = True,
) -> ResumableLoader:
    """Batches of padded examples, or of packs of examples when ``packing``."""
    if packing:
        packs = pack_examples(examples, max_length)
        return ResumableLoader(
            packs,
            batch_size,
            partial(collate_packed, pad_token_id=pad_token_id),
            seed=seed,
            shuffle=shuffle,
            drop_last=shuffle,
        )
    return ResumableLoader(
        list(examples),
        batch_size,
        partial(collate_padded, pad_token_id=pad_token_id),
        seed=seed,
        shuffle=shuffle,
        drop_last=shuffle,
    )


def held_out_loss(loader: ResumableLoader, device: torch.device) -> Any:
    """An evaluation function: token-level mean NLL and perplexity on held-out examples."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        total, tokens = 0.0, 0
        for batch in loader:
            loss_sum, _ = lm_loss(model, batch.to(device))
            total, tokens = total + float(loss_sum), tokens + batch.num_loss_tokens
        mean = total / max(tokens, 1)
        return {"loss": mean, "perplexity": float(torch.tensor(mean).exp())}

    return evaluate


def exporter(model: torch.nn.Module, tokenizer: Any) -> Any:
    """Writes a Hugging Face folder (safetensors) that plain transformers loads."""
    from rlhf.models.load import save_model
    from rlhf.models.parallel import barrier

    def export(folder: Path) -> None:
        save_model(model, tokenizer, folder, merge_lora=True)
        barrier()  # data-parallel ranks: rank 0 writes, and the folder is whole for all after

    return export


def make_trainer(
    config: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    loader: Any,
    loss_fn: Callable[..., Any],
    out: Path,
    *,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    data_metrics: dict[str, float] | None = None,
) -> tuple[Trainer, Callable[[Path], None]]:
    """A supervised recipe's Trainer on its config's ``train``, ``tensorboard``,
    ``wandb_project`` and ``progress`` (the whole config saved as the run's), and the exporter
    it checkpoints with (:func:`exporter`)."""
    export = exporter(model, tokenizer)
    trainer = Trainer(
        model,
        config.train,
        loader,
        loss_fn,
        out,
        evaluate=evaluate,
        export=export,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        run_config=config.model_dump(mode="json"),
        progress=config.progress,
        data_metrics=data_metrics,
    )
    return trainer, export


def train_and_export(
    config: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    loader: Any,
    loss_fn: Callable[..., Any],
    out: Path,
    checkpoint: Path | None,
    *,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    data_metrics: dict[str, float] | None = None,
) -> RunResult:
    """The tail of a supervised recipe: :func:`make_trainer`, trained (resumed from
    ``checkpoint`` when given), then the model exported to ``<out>/model``."""
    trainer, export = make_trainer(
        config, model, tokenizer, loader, loss_fn, out, evaluate=evaluate, data_metrics=data_metrics
    )
    result = trainer.train(resume_from=checkpoint)
    model_dir = out / "model"
    export(model_dir)
    return RunResult(out, result.final_step, model_dir, result.history)


def train_language_model(
    config: NextTokenConfig, to_examples: Callable[[Record], Iterable[Record]], resume: bool
) -> RunResult:
    """The whole next-token recipe; SFT and pretraining differ only in ``to_examples``.

    Phases: output folder → records with a held-out split → model (a tiny one is built here,
    its tokenizer trained on this data) → tokenise through ``to_examples`` → train → export
    the final model to ``<out>/model``.
    """
    out, checkpoint = prepare_out_dir(config, resume)

    records = load_records(config.data.train, config.data)
    train_records, eval_records = split_train_eval(records, config.data, config.train.seed)

    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), config.train.seed
    )
    check_fits_positions(model, config.data.max_length)

    reports = {split: TruncationReport(config.data.max_length) for split in ("train", "eval")}
    train_examples = tokenize_records(
        tokenizer, train_records, config.data, to_examples, reports["train"]
    )
    eval_examples = tokenize_records(
        tokenizer, eval_records, config.data, to_examples, reports["eval"]
    )
    return train_on_examples(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        train_examples,
        eval_examples,
        data_metrics=report_truncation(reports),
    )


def train_on_examples(
    config: NextTokenConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    out: Path,
    checkpoint: Path | None,
    train_examples: Sequence[TokenizedExample],
    eval_examples: Sequence[TokenizedExample],
    data_metrics: Mapping[str, float] | None = None,
) -> RunResult:
    """Train on tokenised examples through the engine; export the final model to <out>/model.

    ``config`` gives ``data`` (packing, max_length), ``train`` and the sinks; recipes that
    make their own examples (RAFT) call this directly with an SFT config. ``data_metrics``
    (:func:`~rlhf.recipes.common.report_truncation`) open the run's ``metrics.jsonl``.
    """
    options = dict(
        pad_token_id=tokenizer.pad_token_id,
        packing=config.data.packing,
        max_length=config.data.max_length,
        seed=config.train.seed,
    )
    train_loader = make_loader(train_examples, batch_size=config.train.batch_size, **options)
    evaluate = None
    if eval_examples:
        eval_loader = make_loader(
            eval_examples, batch_size=config.train.batch_size, shuffle=False, **options
        )
        evaluate = held_out_loss(eval_loader, resolve_device(config.train.device))
    return train_and_export(
        config,
        model,
        tokenizer,
        train_loader,
        lm_loss,
        out,
        checkpoint,
        evaluate=evaluate,
        data_metrics=data_metrics,
    )


# ------------------------------------------------------------------------------ init SFT


class InitSFTConfig(StrictModel):
    """An SFT phase that trains the starting policy before the first round."""

    data: DataConfig = Field(description="Demonstrations (as for `rlhf sft`).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=2e-5), description="Its optimisation (as SFT's)."
    )


class StartsFromModel(Protocol):
    """A recipe config naming its starting model (RAFT's, the online recipes'): the model to
    start from and the logging keys the init-SFT phase inherits."""

    @property
    def model(self) -> ModelConfig: ...
    @property
    def tensorboard(self) -> bool: ...
    @property
    def wandb_project(self) -> str | None: ...
    @property
    def progress(self) -> bool: ...


def initial_policy(
    config: StartsFromModel, init_sft: InitSFTConfig | None, out: Path, resume: bool
) -> str:
    """The starting policy's path: ``config.model.path``, or, with ``init_sft``, the model an
    SFT phase trains first in ``<out>/init-sft`` (reused as it is when resuming after it
    finished; resumed from its checkpoint when it was interrupted)."""
    if init_sft is None:
        return str(config.model.path)
    folder = out / "init-sft"
    if resume and (folder / "model" / "config.json").is_file():
        return str(folder / "model")  # written once the init SFT has finished
    sft = SFTConfig(
        out=str(folder),
        overwrite=True,
        tensorboard=config.tensorboard,
        wandb_project=config.wandb_project,
        progress=config.progress,
        model=config.model,
        data=init_sft.data,
        train=init_sft.train,
    )
    logger.info("init SFT: training the starting policy in %s", folder)
    resume_sft = resume and latest_checkpoint(folder) is not None
    return str(train_language_model(sft, as_demonstration, resume_sft).model_dir)
