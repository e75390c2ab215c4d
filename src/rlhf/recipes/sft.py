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
from rlhf.data.records import Record
from rlhf.engine.trainer import TrainConfig
from rlhf.recipes.common import DataConfig, ModelConfig, RecipeConfig, RunResult
from rlhf.recipes.lm import train_language_model


class SFTConfig(RecipeConfig):
    """Supervised fine-tuning."""

    model: ModelConfig = Field(description="The model to fine-tune.")
    data: DataConfig = Field(description="Demonstrations.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=2e-5),
        description="Optimisation (lr 2e-5: full fine-tuning of a pretrained model).",
    )


def as_demonstration(record: Record) -> list[Record]:
    return as_demonstrations([record])


def run_sft(config: SFTConfig, resume: bool = False) -> RunResult:
    """Train on demonstrations: loss on completion / assistant tokens only."""
    return train_language_model(config, as_demonstration, resume)
