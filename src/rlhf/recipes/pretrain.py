"""Pretraining: next-token loss on every token of raw text (tiny models from scratch).

Reads language-modelling rows (`{"text": ...}` or `{"messages": [...]}`), and demonstrations
as plain text. Packs several documents per row by default, with attention kept inside each.

    rlhf pretrain --preset tiny
"""

from __future__ import annotations

from pydantic import Field

from rlhf.data.records import ConversationRecord, Record, TextRecord
from rlhf.engine.trainer import TrainConfig
from rlhf.recipes.common import DataConfig, ModelConfig, RunResult
from rlhf.recipes.lm import NextTokenConfig, train_language_model


class PretrainDataConfig(DataConfig):
    packing: bool = Field(
        True, description="Pack several documents per row, no attention across them."
    )


class PretrainConfig(NextTokenConfig):
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
    """Train on raw text: loss on every token."""
    return train_language_model(config, as_text, resume)
