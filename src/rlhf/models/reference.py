"""Completion log-probs of the policy and of its frozen reference, and the reference's cache.

DPO-style losses compare the policy π with a frozen reference π_ref through
``log π(y|x) − log π_ref(y|x)``. The reference never changes, so its log-probs of the
completions a run reads (the training rows its schedule visits, the held-out rows it evaluates)
are computed **once**, before the first update, and stored on disk:

* **Where π_ref lives.** By default the reference is the policy's own initial weights, so the
  reference pass runs the policy itself before it is updated: no second model at all. With
  LoRA the adapter is zero at initialisation and is switched off anyway
  (``model.disable_adapter()``), which stays right after training has moved it. A separate
  ``reference.path`` is loaded, run and freed before training starts.
* **The cache** is a safetensors file ``<fingerprint>.safetensors`` holding ``logps`` [N, 2],
  the two completions' reference log-probs by example index, NaN for the examples no run has
  needed yet: a run reads the rows it needs, computes the missing ones and writes them back
  (merged with what is on disk then), so the file only grows. The fingerprint hashes (blake2b)
  everything the numbers depend on: the reference's weights (the parameter and buffer bytes
  of the loaded model, or the weight files of a ``reference.path`` folder, so a cache hit
  never loads that model), its config, the tokenizer's class and size, the tokenised examples
  (ids and completion starts, in order), ``max_length``, the device type and precision the
  pass ran in, and :data:`FORMAT_VERSION`. A run whose rows are all in the file neither loads
  nor runs the reference.

Shapes: P pairs (examples of two completions), R rows, L columns, N examples in all.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlhf.data.preference import PairBatch, PairExample
from rlhf.models.forward import label_logprobs, unwrap

logger = logging.getLogger("rlhf.models")

FORMAT_VERSION = 1  # bump when what the cached numbers mean changes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def pair_logps(model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
    """Sequence log-probs ``[P, 2]`` of each example's two completions under ``model``.

    One forward pass over the batch's rows (either layout of :mod:`rlhf.data.preference`);
    only completion tokens count, and the output layer runs on those positions alone.
    """
    token_logps = label_logprobs(
        model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.labels
    )  # [R, L]
    return batch.sequence_logps(token_logps)


class ReferenceModel:
    """Where π_ref is run from: a frozen model, or a LoRA policy with its adapter disabled.

    :meth:`active` yields the module to call, in eval mode and without gradients.
    """

    def __init__(self, module: torch.nn.Module, *, disable_adapter: bool = False) -> None:
        self.module, self.disable_adapter = module, disable_adapter

    @classmethod
    def frozen(cls, module: torch.nn.Module) -> ReferenceModel:
        """A separate model, never trained (its parameters stop requiring gradients)."""
        module.eval()
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        return cls(module)

    @classmethod
    def policy(cls, model: torch.nn.Module) -> ReferenceModel:
        """The policy itself: with LoRA, its base weights (adapter disabled); without, its
        current weights, which are the reference only until the first update."""
        return cls(model, disable_adapter=is_lora(model))

    @contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        was_training = self.module.training
        self.module.eval()
        adapter_off = self.module.disable_adapter() if self.disable_adapter else nullcontext()
        try:
            with torch.no_grad(), adapter_off:
                yield self.module
        finally:
            self.module.train(was_training)

    def to(self, device: torch.device) -> ReferenceModel:
        self.module.to(device)
        return self

    def response_logps(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        *,
        temperature: float,
        batch_size: int,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[N, R] float32 log π_ref of the responses' tokens at ``temperature`` (0 on
        padding), on the CPU; ``groups`` [N]: rows answering one prompt, read once
        (:func:`rlhf.models.teacher_forcing.response_logprobs`)."""
        from rlhf.models.teacher_forcing import response_logprobs

        with self.active() as module:
            return response_logprobs(
                module,
                prompt_ids,
                prompt_mask,
                response_ids,
                response_mask,
                temperature=temperature,
                batch_size=batch_size,
                groups=groups,
            ).cpu()


def is_lora(model: torch.nn.Module) -> bool:
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def load_reference(
    path: str,
    tokenizer: Any,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
) -> torch.nn.Module:
    """The model at ``reference.path`` (folder or hub name), loaded in ``dtype``."""
    from rlhf.models.load import load_model

    logger.info("loading the reference model %s (%s)", path, dtype)
    return load_model(
        path, dtype=dtype, attn_implementation=attn_implementation, tokenizer=tokenizer
    )


def live_reference(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    path: str | None = None,
    dtype: str | None = None,
    model_dtype: str = "float32",
    attn_implementation: str | None = "sdpa",
) -> ReferenceModel:
    """π_ref kept in memory for the whole run (per-step reference log-probs, the online
    recipes' KL, the sampled-KL evaluation).

    ``path`` set: that model, loaded in ``dtype`` (``reference.dtype``; None: ``model_dtype``,
    the policy's ``model.dtype``). Else a LoRA ``model`` with its adapter disabled (no second
    model; ``dtype`` unused). Else a frozen copy of ``model``'s current (initial) weights, a
    second model in memory, cast to ``dtype`` (None: the policy's own dtype).
    """
    from rlhf.models.load import DTYPES
    from rlhf.models.memory import frozen_copy

    if path is not None:
        return ReferenceModel.frozen(
            load_reference(
                path,
                tokenizer,
                dtype=dtype or model_dtype,
                attn_implementation=attn_implementation,
            )
        )
    if is_lora(model):
        if dtype is not None:
            logger.info("reference.dtype: unused, the reference is the LoRA policy's base model")
        return ReferenceModel.policy(model)
    logger.info(
        "keeping a frozen copy of the initial policy as the reference (%s)",
        dtype or "the policy's dtype",
    )
    return ReferenceModel.frozen(frozen_copy(model, DTYPES[dtype] if dtype else None))


def release_memory() -> None:
    """Return freed tensors' memory now (after dropping a reference loaded for one pass)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def compute_reference_logps(
    reference: ReferenceModel,
    batches: Iterable[PairBatch],
    count: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Reference log-probs ``[count, 2]`` of the examples of ``batches``, by example index
    (NaN for an example in no batch).

    Eval mode, no gradients, the batching and precision of training (``autocast_dtype``);
    ``on_batch(pairs)`` after each batch (progress).
    """
    table = torch.full((count, 2), float("nan"))
    done: list[torch.Tensor] = []
    # a one-off pass over batches of many shapes: compiled blocks (train.compile) would
    # recompile for each new shape and cost more than they save, so it runs eagerly
    with reference.active() as module, torch.compiler.set_stance("force_eager"):
        for batch in batches:
            batch = batch.to(device)
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                logps = pair_logps(module, batch)  # [P, 2]
            index = batch.index.cpu()
            table[index] = logps.float().cpu()
            done.append(index)
            if on_batch is not None:
                on_batch(int(index.numel()))
    if done:
        missing = int(table[torch.cat(done)].isnan().any(1).sum())
        if missing:
            raise RuntimeError(
                f"the reference pass gave NaN log-probs for {missing} of "
                f"{int(torch.cat(done).unique().numel())} examples"
            )
    return table


# ------------------------------------------------------------------------------ fingerprints


def _config_json(model: torch.nn.Module) -> str:
    """The model config without fields that name where it was loaded from."""
    config = getattr(unwrap(model), "config", None)
    values = {} if config is None else config.to_dict()
    values = {
        key: value
        for key, value in values.items()
        if not key.startswith("_") and key != "transformers_version"
    }
    return json.dumps(values, sort_keys=True, default=str)


def parameters_digest(model: torch.nn.Module) -> str:
    """blake2b of a loaded model's weights: every parameter and buffer (name, dtype, shape,
    bytes) and its config. LoRA adapter weights are left out (the reference runs with them
    disabled) and peft's ``base_layer`` naming is undone, so the digest is the base model's."""
    base = unwrap(model)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(_config_json(base).encode())
    tensors = dict(base.named_parameters())
    tensors.update(base.named_buffers())
    for name in sorted(tensors):
        if "lora_" in name:
            continue
        tensor = tensors[name].detach()
        whole = getattr(tensor, "full_tensor", None)  # an FSDP2 shard: gathered (every rank)
        if callable(whole):
            tensor = whole()
        digest.update(
            f"{name.replace('.base_layer', '')}:{tensor.dtype}:{tuple(tensor.shape)}".encode()
        )
        digest.update(tensor.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def folder_digest(folder: str | os.PathLike[str]) -> str:
    """blake2b of a model folder's weight files and config.json, without loading the model."""
    root = Path(folder)
    digest = hashlib.blake2b(digest_size=20)
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and (path.suffix in WEIGHT_SUFFIXES or path.name == "config.json")
    )
    if not any(path.suffix in WEIGHT_SUFFIXES for path in files):
        raise ValueError(
            f"reference.path: {root} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})"
        )
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        if path.name == "config.json":
            config = json.loads(path.read_text(encoding="utf-8"))
            config.pop("_name_or_path", None)
            config.pop("transformers_version", None)
            digest.update(json.dumps(config, sort_keys=True).encode())
            continue
        with path.open("rb") as file:
            while chunk := file.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def examples_digest(examples: Sequence[PairExample]) -> str:
    """blake2b of tokenised examples: ids and completion starts of both sequences, in order."""
    digest = hashlib.blake2b(digest_size=20)
    for example in examples:
        for sequence, start in zip(example.sequences, example.starts, strict=True):
            digest.update(f"{start}:{len(sequence)};".encode())
            digest.update(torch.tensor(sequence, dtype=torch.int64).numpy())
        digest.update(b"|")
    return digest.hexdigest()


def reference_fingerprint(
    weights: str,
    tokenizer: Any,
    examples: Sequence[PairExample],
    max_length: int,
    precision: str,
) -> dict[str, str]:
    """Everything the cached reference log-probs depend on, with ``key``: their hash.

    ``weights``: :func:`parameters_digest` or :func:`folder_digest` of the reference;
    ``precision``: the device type and autocast dtype of the pass (e.g. ``"cpu/float32"``).
    """
    parts = {
        "format_version": str(FORMAT_VERSION),
        "weights": weights,
        "tokenizer": f"{type(tokenizer).__name__}/{len(tokenizer)}",
        "data": examples_digest(examples),
        "examples": str(len(examples)),
        "max_length": str(max_length),
        "precision": precision,
    }
    key = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16)
    return parts | {"key": key.hexdigest()}


# ------------------------------------------------------------------------------ the cache


def default_cache_dir() -> Path:
    """``$RLHF_CACHE/reference`` when RLHF_CACHE is set, else ``~/.cache/rlhf/reference``."""
    root = os.environ.get("RLHF_CACHE")
    return Path(root) / "reference" if root else Path.home() / ".cache" / "rlhf" / "reference"


def cache_path(cache_dir: str | os.PathLike[str] | None, fingerprint: dict[str, str]) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / f"{fingerprint['key']}.safetensors"


def read_cache(path: Path, count: int) -> torch.Tensor | None:
    """The cached ``[count, 2]`` log-probs (NaN rows: not computed yet), or None when absent
    or unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            values = file.get_tensor("logps")
    except Exception as error:  # a torn or foreign file: recompute rather than fail the run
        logger.warning("%s: unreadable reference cache (%s); recomputing", path, error)
        return None
    if tuple(values.shape) != (count, 2):
        logger.warning(
            "%s: holds %s log-probs, expected (%d, 2); recomputing",
            path,
            tuple(values.shape),
            count,
        )
        return None
    return values.float()


def write_cache(path: Path, values: torch.Tensor, fingerprint: dict[str, str]) -> None:
    """Write ``values`` [N, 2] (NaN rows: not computed), keeping the rows that only the file
    on disk has (another run may have added some since it was read). Atomic: a temporary
    name, then renamed, so readers never see half a file."""
    values = values.float().clone()
    on_disk = read_cache(path, values.shape[0]) if path.is_file() else None
    if on_disk is not None:
        fill = values.isnan().any(1) & ~on_disk.isnan().any(1)
        values[fill] = on_disk[fill]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    save_file({"logps": values.contiguous()}, str(partial), metadata=fingerprint)
    partial.replace(path)
