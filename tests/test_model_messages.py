"""What loading and sampling tell the user: our words for a new scoring head (transformers'
load report only when it says more), and no deprecation warning caused by our own calls."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf.models.load import load_model, load_tokenizer
from tests.conftest import TINY_SIZES, sample_texts
from tests.smol_like import make_smol_like


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    return make_smol_like(tmp_path_factory.mktemp("smol") / "base", sample_texts(), **TINY_SIZES)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_reports():
    """The messages transformers' model loading logs (its load report among them)."""
    handler = Records()
    target = logging.getLogger("transformers.modeling_utils")
    target.addHandler(handler)
    yield handler.messages
    target.removeHandler(handler)


def test_new_scoring_head_is_said_once_in_our_words(smol, transformers_reports, caplog):
    from rlhf.models.reward import init_reward_model

    tokenizer = load_tokenizer(smol)
    with caplog.at_level(logging.INFO, logger="rlhf.models"):
        init_reward_model(smol, tokenizer, seed=3)
    assert not any("LOAD REPORT" in message for message in transformers_reports)
    ours = [r.getMessage() for r in caplog.records if "scoring head" in r.getMessage()]
    assert len(ours) == 1
    assert ours[0] == (
        f"{smol}: new scoring head score.weight (1 × 32), initialised N(0, 1/√(32 + 1)) with "
        "seed 3; the checkpoint's output layer is not used"
    )


def test_other_missing_weights_keep_transformers_report(smol, tmp_path, transformers_reports):
    import shutil

    from rlhf.models.reward import init_reward_model

    damaged = tmp_path / "damaged"
    shutil.copytree(smol, damaged)
    weights = load_file(damaged / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    init_reward_model(damaged, load_tokenizer(damaged))
    reports = [message for message in transformers_reports if "LOAD REPORT" in message]
    assert len(reports) == 1 and "model.norm.weight" in reports[0]


def test_sampling_passes_the_kv_cache_under_its_current_name(smol):
    from transformers import StaticCache

    from rlhf.models.compile import _decode_step
    from rlhf.rollout import HFGenerationEngine
    from rlhf.rollout.types import SamplingParams

    tokenizer = load_tokenizer(smol)
    model = load_model(smol, tokenizer=tokenizer)
    engine = HFGenerationEngine(model, tokenizer, batch_size=8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        for samples in (1, 2):  # K = 2 prefills each prompt once into a shared cache
            engine.generate(["What is 1 + 2?", "Hi"], SamplingParams(4, num_samples=samples))
        cache = StaticCache(config=model.config, max_cache_len=8)
        with torch.no_grad():
            _decode_step(model, torch.tensor([[5]]), torch.tensor([[0]]), torch.ones(1, 8), cache)
