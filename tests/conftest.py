"""Shared fixtures: tiny models and tokenizers built in code (nothing from a hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
HH = SHARED / "data" / "hh-rlhf-harmless"

TINY_SIZES = dict(
    vocab_size=400,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=256,
)


def sample_texts() -> list[str]:
    from rlhf.sim.builtin import arithmetic

    texts = [r.prompt + r.completion for r in arithmetic(600, seed=1)]
    return texts + ["Once upon a time there was a little cat who liked to play."] * 20


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama with its trained byte-level BPE tokenizer and the default chat template."""
    from rlhf.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", sample_texts(), **TINY_SIZES)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from rlhf.models.load import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def require_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the ../shared assets are not beside this checkout)")
    return path
