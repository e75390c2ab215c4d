"""Shared fixtures: tiny models and tokenizers built in code (nothing from a hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.services"]

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


@pytest.fixture(scope="module")
def eos_engine(tiny_model_dir):
    """An engine on the tiny model with its output layer tilted towards EOS, so responses end at
    varied lengths (test_rollout.py has its own, stronger one)."""
    import torch

    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir, tokenizer=tokenizer)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] += 0.5 * model.lm_head.weight.std()
        bias = torch.zeros(model.lm_head.out_features)
        bias[tokenizer.eos_token_id] = 3.0
        model.lm_head.bias = torch.nn.Parameter(bias)
    from rlhf.rollout import HFGenerationEngine

    return HFGenerationEngine(model, tokenizer, batch_size=64)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from rlhf.models.load import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    """64 tokenised arithmetic demonstrations of varied lengths (so that token-level
    normalisation matters), for the engine's tests."""
    from rlhf.data.records import CompletionRecord
    from rlhf.data.tokenize import tokenize_record
    from rlhf.sim.builtin import arithmetic

    records = [
        CompletionRecord(r.prompt, r.completion + " ok" * (i % 5))
        for i, r in enumerate(arithmetic(64, seed=3))
    ]
    return [tokenize_record(tiny_tokenizer, r) for r in records]


def require_shared(path: Path) -> Path:
    """``path`` (an asset under ../shared), or, when it is absent, a skip locally and a
    failure under ``CI=true``: a learning test on real data must not pass in CI by not running."""
    if not path.exists():
        from tests.services import skip_or_fail  # the plugin module: imported by pytest first

        skip_or_fail(
            f"{path} is absent (the ../shared assets are not beside this checkout)",
            "CI=true runs every test that needs them",
        )
    return path
