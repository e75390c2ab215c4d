"""The optimiser: AdamW in one of three implementations (``train.optimizer``).

* ``adamw_fused``: torch's AdamW with its fused kernel (CPU, CUDA, MPS, XPU): one pass over
  every tensor and no temporaries. State: two float32 moments per weight (8 bytes a weight).
* ``adamw_foreach``: torch's multi-tensor AdamW; the same numbers within float rounding, but
  each ``_foreach_*`` operation allocates a temporary as large as the weights.
* ``adamw_8bit``: torchao's ``AdamW8bit`` (Dettmers et al. 2022, "8-bit Optimizers via
  Block-wise Quantization"): both moments block-wise quantised to 8 bits (about 2 bytes a
  weight instead of 8), the update computed in float32. Needs the optional ``torchao``
  package (``pip install 'rlhf[optim8bit]'``); its per-tensor update is compiled by
  ``torch.compile`` the first time each tensor shape is seen (a C++ compiler on CPU, tens of
  seconds once per process). Tensors under 4,096 values, and the embeddings and output
  layer, keep float32 moments: a rarely seen token's second moment rounds to zero within its
  block and its update explodes (the paper's remedy, as bitsandbytes' advice for embeddings:
  32-bit state there).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

logger = logging.getLogger("rlhf")

OptimizerName = Literal["adamw_fused", "adamw_foreach", "adamw_8bit"]
FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")  # where torch's AdamW has a fused kernel
_TORCHAO_HINT = (
    "train.optimizer=adamw_8bit needs the optional 'torchao' package: pip install 'rlhf[optim8bit]'"
)


def has_8bit_adamw() -> bool:
    return importlib.util.find_spec("torchao") is not None


def build_optimizer(
    name: OptimizerName,
    param_groups: Sequence[dict[str, Any]],
    device: torch.device,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    full_precision: Iterable[torch.Tensor] = (),
) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (each with its own ``weight_decay``), as ``name`` says;
    with ``adamw_8bit`` the ``full_precision`` tensors keep float32 moments."""
    groups = [dict(group) for group in param_groups]
    if name == "adamw_8bit":
        if not has_8bit_adamw():
            raise ValueError(_TORCHAO_HINT)
        from torchao.optim import AdamW8bit

        optimizer = AdamW8bit(groups, lr=lr, betas=betas, eps=eps)
        trained = {id(p) for group in groups for p in group["params"]}
        for tensor in full_precision:
            # AdamW8bit creates the state of a tensor that has none; given it, it updates it
            if id(tensor) in trained:
                optimizer.state[tensor] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(tensor, dtype=torch.float32),
                    "exp_avg_sq": torch.zeros_like(tensor, dtype=torch.float32),
                }
        return optimizer
    fused = name == "adamw_fused" and device.type in FUSED_DEVICES
    if name == "adamw_fused" and not fused:
        logger.info("train.optimizer=adamw_fused: no fused AdamW on %s; using foreach", device)
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=not fused or None
    )


def embedding_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The input embedding tables and output layers (``get_output_embeddings``) in ``model``,
    each once (tied ones are one tensor)."""
    found: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            found[id(module.weight)] = module.weight
        get_output = getattr(module, "get_output_embeddings", None)
        if callable(get_output) and isinstance(module, torch.nn.Module):
            try:
                output = get_output()
            except (NotImplementedError, AttributeError):
                continue
            weight = getattr(output, "weight", None)
            if isinstance(weight, torch.Tensor):
                found[id(weight)] = weight
    return list(found.values())
