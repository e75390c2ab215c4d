"""Supervised fine-tuning: maximise log p(completion | prompt) on demonstrations.

Reads prompt→completion pairs or multi-turn conversations (TRL formats), and also anything
that converts to demonstrations: edits (the edited response), preference pairs (the chosen
response). The loss covers completion / assistant tokens only.

    rlhf sft --preset tiny
    rlhf sft --config sft.yaml model.path=./base data.train=demos.jsonl train.lr=2e-5
"""

from __future__ import annotations

from rlhf.recipes.common import RunResult

# SFT's config and conversion live with the shared next-token trainer, which RAFT's rounds and
# the init-SFT phase of RAFT and the online recipes run too
from rlhf.recipes.lm import SFTConfig, as_demonstration, train_language_model

__all__ = ["SFTConfig", "as_demonstration", "run_sft"]


def run_sft(config: SFTConfig, resume: bool = False) -> RunResult:
    """Train on demonstrations: loss on completion / assistant tokens only."""
    return train_language_model(config, as_demonstration, resume)
