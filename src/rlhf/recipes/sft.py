"""Supervised fine-tuning: maximise log p(completion | prompt) on demonstrations.

Reads prompt→completion pairs or multi-turn conversations (TRL formats), and also anything
that converts to demonstrations: edits (the edited response), preference pairs (the chosen
response). The loss covers completion / assistant tokens only.

    rlhf sft --preset tiny
    rlhf sft --config sft.yaml model.path=./base data.train=demos.jsonl train.lr=2e-5
"""

from __future__ import annotations

from pydantic import Field

from rlhf.data.convert import as_demonstrations
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


class SFTConfig(RecipeConfig):
    """Supervised fine-tuning."""

    model: ModelConfig = Field(description="The model to fine-tune.")
    data: DataConfig = Field(description="Demonstrations.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")


def run_sft(config: SFTConfig, resume: bool = False) -> RunResult:
    out, checkpoint = prepare_out_dir(config, resume)

    # data: demonstrations, with a held-out split
    records = load_records(config.data.train, config.data)
    train_records, eval_records = split_train_eval(records, config.data, config.train.seed)

    # model
    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), config.train.seed
    )

    # tokenise: loss on completion / assistant tokens only
    return train_language_model(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        tokenize_records(tokenizer, train_records, config.data, as_demonstration),
        tokenize_records(tokenizer, eval_records, config.data, as_demonstration),
    )


def as_demonstration(record):
    return as_demonstrations([record])
