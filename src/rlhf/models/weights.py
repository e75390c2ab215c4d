"""A model's weights under their checkpoint names, as another engine loads them.

:func:`checkpoint_weights` yields what ``save_pretrained`` would write (the names of the
transformers model, a tied output layer once), with a LoRA adapter merged on the fly
(W + ΔW of each adapted layer, the model itself untouched), so an inference engine that loads
Hugging Face checkpoints (vLLM) takes them as they are. :func:`on_optimizer_step` tells a
watcher whenever any ``torch.optim`` optimiser updates the model's parameters, which a weight
copy must then follow: a tensor's version counter is no guide, since fused optimisers update
in place without bumping it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from rlhf.models.forward import unwrap


def checkpoint_weights(
    model: torch.nn.Module, *, merge_lora: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter under its checkpoint name, detached; a LoRA
    adapter merged (``merge_lora``) or left out (the base model's own weights)."""
    base = unwrap(model)
    adapted = {
        name: module
        for name, module in base.named_modules()
        if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")
    }
    for name, parameter in base.named_parameters():
        if ".lora_" in name:  # the adapter's own factors: merged below into their layer
            continue
        owner, separator, leaf = name.partition(".base_layer.")
        if not separator:
            yield name, parameter.detach()
            continue
        module = adapted[owner]
        tensor = parameter.detach()
        if (
            merge_lora
            and leaf == "weight"
            and not getattr(module, "merged", False)
            and not module.disable_adapters
        ):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    tensor = tensor + module.get_delta_weight(adapter).detach().to(tensor.dtype)
        yield f"{owner}.{leaf}", tensor


def adapter_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA adapter's tensors under the names peft's ``save_pretrained`` writes."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach() for name, tensor in get_peft_model_state_dict(model).items()}


def trainable_outside_adapter(model: torch.nn.Module) -> list[str]:
    """Trainable parameters that are not LoRA factors (an adapter-only sync would miss them)."""
    return [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and ".lora_" not in name
    ]


def on_optimizer_step(model: torch.nn.Module, callback: Callable[[], None]) -> Any:
    """Call ``callback()`` after every optimiser step that updates a parameter of ``model``;
    returns the hook's handle (``.remove()`` stops it). The parameters are looked up at each
    step, not now: FSDP2's ``fully_shard`` (the trainer's, under data parallelism) replaces
    them after an engine has subscribed."""
    import weakref

    from torch.optim.optimizer import register_optimizer_step_post_hook

    followed = weakref.ref(model)  # the hook is global: it must not keep the model alive

    def after_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        model = followed()
        if model is None:
            return
        watched = {id(parameter) for parameter in model.parameters()}
        if any(id(p) in watched for group in optimizer.param_groups for p in group["params"]):
            callback()

    return register_optimizer_step_post_hook(after_step)
