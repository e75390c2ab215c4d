"""Models: loading (hub name or path, GGUF, LoRA), saving, log-prob helpers, tiny models.

Names are imported on first use, so ``rlhf.models.logprobs`` (pure torch) does not pull in
transformers and peft.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf.models.load import (
        LoraSpec,
        ModelLoadError,
        disable_dropout,
        load_model,
        load_tokenizer,
        save_model,
        tokenizer_adds_bos,
    )
    from rlhf.models.logprobs import (
        selective_log_softmax,
        sequence_logprobs,
        token_logprobs_from_hidden,
    )
    from rlhf.models.tiny import (
        build_tiny_llama,
        count_parameters,
        make_tiny_model,
        train_bpe_tokenizer,
    )

_EXPORTS = {
    "LoraSpec": "load",
    "ModelLoadError": "load",
    "disable_dropout": "load",
    "load_model": "load",
    "load_tokenizer": "load",
    "save_model": "load",
    "tokenizer_adds_bos": "load",
    "selective_log_softmax": "logprobs",
    "sequence_logprobs": "logprobs",
    "token_logprobs_from_hidden": "logprobs",
    "build_tiny_llama": "tiny",
    "count_parameters": "tiny",
    "make_tiny_model": "tiny",
    "train_bpe_tokenizer": "tiny",
}
__all__ = [
    "LoraSpec",
    "ModelLoadError",
    "build_tiny_llama",
    "count_parameters",
    "disable_dropout",
    "load_model",
    "load_tokenizer",
    "make_tiny_model",
    "save_model",
    "selective_log_softmax",
    "sequence_logprobs",
    "token_logprobs_from_hidden",
    "tokenizer_adds_bos",
    "train_bpe_tokenizer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rlhf.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rlhf.models.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
