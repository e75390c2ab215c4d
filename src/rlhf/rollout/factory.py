"""The one place that builds a generation engine.

Every sampling site (``rlhf sample``, best-of-N, RAFT, the online recipes, the pipeline's
feedback stage, the evaluations, the feedback app's sampler) asks :func:`build_engine` (a
model in memory) or :func:`load_engine` (a model folder or hub name) and then talks to the
:class:`~rlhf.rollout.types.GenerationEngine` protocol only. Adding an engine is one class
implementing the protocol plus one entry in :data:`ENGINES`; a recipe then picks it with
``sampling.engine=<kind>``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from rlhf.rollout.types import EngineChoice, GenerationEngine
from rlhf.rollout.vllm_config import VLLMConfig

# kind -> "module:class"; imported on first use so the types never pull in transformers
ENGINES: dict[str, str] = {
    "hf": "rlhf.rollout.hf:HFGenerationEngine",
    "vllm": "rlhf.rollout.vllm:VLLMEngine",
}


def engine_class(kind: str) -> Any:
    """The class registered under ``kind`` (a clear error naming the known kinds)."""
    if kind not in ENGINES:
        raise ValueError(f"engine kind {kind!r}: expected one of {sorted(ENGINES)}")
    module, name = ENGINES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _settings(kind: str, vllm: VLLMConfig | None) -> dict[str, Any]:
    """The keyword arguments of an engine kind's own settings (vLLM's section)."""
    return {"options": vllm} if kind == "vllm" and vllm is not None else {}


def build_engine(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    batch_size: int = 64,
    kind: str = "hf",
    vllm: VLLMConfig | None = None,
) -> GenerationEngine:
    """An engine sampling from ``model`` as it is now and after every later update (the HF
    engine samples from ``model`` itself; vLLM syncs its copy after each optimiser step)."""
    return engine_class(kind)(model, tokenizer, batch_size=batch_size, **_settings(kind, vllm))


def engine_for(
    choice: EngineChoice, model: torch.nn.Module, tokenizer: Any, *, batch_size: int
) -> GenerationEngine:
    """:func:`build_engine` with the kind and settings a config section chose."""
    return build_engine(
        model, tokenizer, batch_size=batch_size, kind=choice.engine, vllm=choice.vllm
    )


def load_engine(
    path: str | Path,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
    attn_implementation: str | None = "sdpa",
    kind: str = "hf",
    vllm: VLLMConfig | None = None,
) -> GenerationEngine:
    """An engine over the model saved at ``path`` (a folder or hub name) and its tokenizer."""
    return engine_class(kind).from_pretrained(
        path,
        dtype=dtype,
        device=device,
        attn_implementation=attn_implementation,
        batch_size=batch_size,
        **_settings(kind, vllm),
    )


def load_engine_for(
    choice: EngineChoice,
    path: str | Path,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
) -> GenerationEngine:
    """:func:`load_engine` with the kind and settings a config section chose."""
    return load_engine(
        path, batch_size=batch_size, dtype=dtype, device=device, kind=choice.engine,
        vllm=choice.vllm,
    )  # fmt: skip


def check_engine(choice: EngineChoice) -> None:
    """Raise, as one line, what can be known wrong with the chosen engine before anything
    runs (vLLM: this CPU, its environment), so a run fails before its first training step
    rather than when it first samples."""
    preflight = getattr(engine_class(choice.engine), "preflight", None)
    if callable(preflight):
        preflight(**_settings(choice.engine, choice.vllm))


def close_engine(engine: GenerationEngine) -> None:
    """Stop what an engine runs beside this process (vLLM's engine process), if anything."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()
