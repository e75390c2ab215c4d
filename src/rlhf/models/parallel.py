"""Data parallelism over ``torch.distributed``: which rank this process is, FSDP2 sharding of
a model, and the few collectives the trainer needs.

Everything here is a no-op in a single process (no process group): the trainer and the
recipes call it unconditionally, so the single-process path stays the code every run takes.
Ranks are started by :mod:`rlhf.distributed` (Ray workers), which also sets up the process
group (gloo on CPU, NCCL on GPU: the same code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch

logger = logging.getLogger("rlhf")


def is_distributed() -> bool:
    """Whether this process is a rank of a process group (a run under ``distributed``)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 in a single process)."""
    if not is_distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main_process() -> bool:
    """Rank 0, the one that writes logs, checkpoints' metadata and exports (always true in a
    single process)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def all_reduce_sums(values: Mapping[str, float]) -> dict[str, float]:
    """``values`` summed over every rank (in one collective; unchanged in a single process).
    Every rank must pass the same keys in the same order."""
    if not is_distributed():
        return dict(values)
    keys = list(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def keys_over_ranks(keys: Iterable[str]) -> list[str]:
    """The sorted union of every rank's ``keys`` (a collective; sorted ``keys`` in a single
    process): what ranks whose dicts may differ pass to :func:`all_reduce_sums` together."""
    mine = sorted(set(keys))
    if not is_distributed():
        return mine
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return sorted(set().union(*gathered))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so every rank takes the same branch)."""
    return all_reduce_sums({"flag": float(flag)})["flag"] > 0


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not is_distributed():
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank holds (its shard of an FSDP2 DTensor; else itself)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s weights are FSDP2 shards (DTensors)."""
    return any(hasattr(p, "to_local") for p in model.parameters())


def _hf_models(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost Hugging Face models inside ``model`` (itself, a peft wrapper's base, a
    policy and its critic)."""
    from transformers import PreTrainedModel

    found: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        if isinstance(module, PreTrainedModel):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model``'s weights, gradients and optimiser state over the ranks (FSDP2's
    ``fully_shard``; the model is changed in place and returned).

    Units: each transformer block; each Hugging Face model's decoder (embeddings, final norm);
    each other weight-holding child of the model (the LM head, a reward or value head); then
    the smallest modules holding whatever is left. Our forward passes call the decoder and the head
    separately (``rlhf.models.forward``: the output layer only where the loss reads it), so
    each of them must be a unit whose own call gathers its weights. A head tied to the
    embeddings would have to share the decoder's unit, which would keep its weights gathered from its
    forward to its backward would be needed; FSDP2 does not gather a shared weight for a
    second module, so tied models are refused with a clear error.
    """
    from torch.distributed.fsdp import fully_shard

    from rlhf.models.compile import decoder_blocks

    if not is_distributed() or is_sharded(model):  # RAFT's rounds train one model again
        return model
    for hf_model in _hf_models(model):
        blocks = decoder_blocks(hf_model)
        for block in blocks or ():
            fully_shard(block)
        decoder = getattr(hf_model, hf_model.base_model_prefix, None)
        if not isinstance(decoder, torch.nn.Module) or decoder is hf_model:
            continue
        decoder_params = {id(p) for p in decoder.parameters()}
        others = [child for child in hf_model.children() if child is not decoder]
        if any(id(p) in decoder_params for child in others for p in child.parameters()):
            raise ValueError(
                "distributed.train_workers > 1: this model's output layer is tied to its input "
                "embeddings (tie_word_embeddings), which FSDP2 cannot shard as two units; "
                "train it with one training worker"
            )
        fully_shard(decoder)
        for child in others:
            if any(True for _ in child.parameters()):
                fully_shard(child)
    # whatever holds weights outside those units (a critic's value head beside the policy):
    # the smallest modules that own them directly. Never a unit around the others: FSDP2 then
    # wants every forward to enter through it, and our passes call the decoder and the head
    # directly (each unit above is then a root of its own, which FSDP2 allows)
    covered: set[int] = set()
    for module in model.modules():
        if hasattr(module, "reshard"):  # an FSDP2 unit
            covered.update(id(p) for p in module.parameters())

    def cover(module: torch.nn.Module) -> None:
        if any(id(p) not in covered for p in module.parameters(recurse=False)):
            fully_shard(module)
            covered.update(id(p) for p in module.parameters())
            return
        for child in module.children():
            if any(id(p) not in covered for p in child.parameters()):
                cover(child)

    cover(model)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s whole state dict on the CPU, gathered from the shards when sharded (a
    collective: every rank calls it; ranks other than 0 get an empty dict)."""
    if not is_sharded(model):
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def gathered_parameters(
    model: torch.nn.Module, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Named parameters, whole on every rank (all-gathered from FSDP2 shards: a collective)."""
    wanted = None if names is None else set(names)
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if wanted is not None and name not in wanted:
            continue
        full = getattr(param, "full_tensor", None)
        out[name] = (full() if callable(full) else param).detach()
    return out
