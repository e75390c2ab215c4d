"""Pretraining: next-token loss on every token of raw text (tiny models from scratch).

Reads language-modelling rows (`{"text": ...}` or `{"messages": [...]}`), and demonstrations
as plain text. Packs several documents per row by default, with attention kept inside each.

    rlhf pretrain --preset tiny
"""

from __future__ import annotations

from pydantic import Field

from rlhf.data.records import ConversationRecord, Record, TextRecord
from rlhf.engine.trainer import TrainConfig
from rlhf.recipes.common import (
    DataConfig,
    ModelConfig,
    RecipeConfig,
    RunResult,
    build_model_and_tokenizer,
    load_records,
    prepare_out_dir,
    split_train_eval,
    tokenize_records,
    training_texts,
)
from rlhf.recipes.lm import train_language_model


class PretrainDataConfig(DataConfig):
    packing: bool = Field(
        True, description="Pack several documents per row, no attention across them."
    )


class PretrainConfig(RecipeConfig):
    """Causal-LM pretraining on raw text."""

    model: ModelConfig = Field(description="The model (usually `tiny`, built from scratch).")
    data: PretrainDataConfig = Field(description="Raw text.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")


def as_text(record: Record) -> list[TextRecord]:
    """Any record with text becomes language-modelling text (every token is a target)."""
    if isinstance(record, TextRecord):
        return [record]
    if isinstance(record, ConversationRecord):
        return [TextRecord(record.messages)]
    prompt, completion = getattr(record, "prompt", None), getattr(record, "completion", None)
    if isinstance(prompt, str) and isinstance(completion, str):
        return [TextRecord(prompt + completion)]
    raise ValueError(f"pretraining reads text; got a {record.kind} record")


def run_pretrain(config: PretrainConfig, resume: bool = False) -> RunResult:
    out, checkpoint = prepare_out_dir(config, resume)

    # data: raw text with a held-out split
    records = load_records(config.data.train, config.data)
    train_records, eval_records = split_train_eval(records, config.data, config.train.seed)

    # model: usually a tiny one built here, its tokenizer trained on this text
    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), config.train.seed
    )

    # tokenise (loss on every token) and train
    return train_language_model(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        tokenize_records(tokenizer, train_records, config.data, as_text),
        tokenize_records(tokenizer, eval_records, config.data, as_text),
    )
