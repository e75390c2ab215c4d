"""Settings of the vLLM engine (``sampling.vllm.*``), read when ``sampling.engine=vllm``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlhf.config import StrictModel

# The |Δ log p| a verified sync accepts (the probe's mean, the drawn token's), by the engine's
# dtype: float32 kernels agree with the trainer's to ~1e-6; bf16 / fp16 round every product.
DEFAULT_PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}


class VLLMConfig(StrictModel):
    placement: Literal["process", "trainer"] = Field(
        "process",
        description="process: vLLM runs in its own engine process (with `python`'s interpreter) "
        "that the trainer talks to over a socket; trainer: vLLM runs in the trainer's process "
        "(its environment must have vLLM; on GPUs it sleeps while the trainer trains).",
    )
    python: str | None = Field(
        None,
        description="The engine process's Python (placement=process). Default: "
        "$RLHF_VLLM_PYTHON, else .venv-vllm/bin/python beside the running environment when it "
        "exists (`make vllm` builds it), else this Python.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="The engine's weights and activations (auto: the policy's dtype)."
    )
    sync: Literal["full", "lora"] = Field(
        "full",
        description="full: push every weight (a LoRA adapter merged in) after each update; "
        "lora: push the base once, then only the LoRA adapter (vLLM applies it per request; "
        "the policy must be a LoRA model with nothing else trainable).",
    )
    sync_bucket_mb: float = Field(
        256, gt=0, description="Weights travel to the engine in buckets of at most this many MB."
    )
    verify_every: int = Field(
        1,
        ge=0,
        description="Verify every N-th weight sync (0: never): the engine's log-probs of a "
        "fixed probe sequence must match the trainer's, and every tensor must arrive intact.",
    )
    probe_tokens: int = Field(64, ge=2, description="Tokens of the verification probe.")
    probe_tolerance: float | None = Field(
        None,
        gt=0,
        description="Largest |Δ log p| a verified sync accepts, both as the mean over the probe "
        "and for the one token drawn after it (default by "
        f"the engine's dtype: {DEFAULT_PROBE_TOLERANCE}).",
    )
    max_model_len: int | None = Field(
        None, ge=2, description="Longest sequence (default: the model's positions)."
    )
    enforce_eager: bool | None = Field(
        None,
        description="Run the model eagerly, without compiling or CUDA graphs (default: on CPU, "
        "where compiling costs more start-up time than it saves on small models).",
    )
    gpu_memory_utilization: float = Field(
        0.3,
        gt=0,
        le=1,
        description="Share of GPU memory vLLM may take (weights + KV cache); the rest is the "
        "trainer's.",
    )
    sleep: bool | None = Field(
        None,
        description="Free vLLM's GPU memory between rollouts (sleep mode level 1). Default: on "
        "for the trainer placement on a GPU.",
    )
    cpu_kv_cache_gb: int = Field(1, ge=1, description="KV cache of the CPU backend, in GiB.")
    threads: int | None = Field(
        None, ge=1, description="CPU threads the engine binds (default: vLLM's choice, all)."
    )
    start_timeout_s: float = Field(
        900, gt=0, description="Seconds to wait for the engine to start before giving up."
    )

    def probe_tolerance_for(self, dtype: str) -> float:
        if self.probe_tolerance is not None:
            return self.probe_tolerance
        return DEFAULT_PROBE_TOLERANCE.get(dtype, DEFAULT_PROBE_TOLERANCE["bfloat16"])
