"""Finite-value checks: a diverged model must stop the run, never reach a checkpoint or a sampler.

A NaN or an infinity in the weights poisons everything computed from them, and a huge but
finite weight overflows the activations. Each check here costs one fused pass over the
tensors (``torch._foreach_norm`` through :func:`torch.nn.utils.get_total_norm`) and names
the offending tensors only when it fails.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class NonFiniteError(FloatingPointError):
    """Weights, gradients or a model's outputs hold NaN or infinity.

    The training engine turns it into :class:`rlhf.engine.trainer.TrainingDiverged`, naming
    the step and the last checkpoint whose weights are finite.
    """


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Up to ``limit`` names of the tensors holding NaN or ±inf (empty when all are finite).
    Of FSDP2 shards (DTensors), this rank's part only: no collective."""
    named = [(name, _local(tensor.detach())) for name, tensor in named]
    if not named:
        return []
    # fast path: one fused norm over every tensor is finite iff each element is (a norm that
    # merely overflows float32 is checked element-wise below and passes)
    if torch.isfinite(torch.nn.utils.get_total_norm([t for _, t in named])):
        return []
    bad = []
    for name, tensor in named:
        if not torch.isfinite(tensor).all():
            bad.append(name)
            if len(bad) == limit:
                break
    return bad


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` when any parameter of ``model`` holds NaN or ±inf;
    ``what`` says what was about to happen (e.g. "saving <folder>")."""
    bad = nonfinite_names(model.named_parameters())
    if bad:
        raise NonFiniteError(
            f"{what}: the model's weights hold NaN or infinity (in {', '.join(bad)}); "
            "the model has diverged"
        )


def check_finite_logits(logits: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` when ``logits`` hold NaN or +inf (−inf is a masked token).

    Cheap enough for every decoding step: the maximum propagates NaN and is +inf iff an
    element is, so one reduction decides (a plain ``isfinite(...).all()`` over [B, V] costs
    more than the softmax)."""
    largest = logits.amax()
    if bool(torch.isnan(largest) | torch.isposinf(largest)):
        raise NonFiniteError(
            f"{what}: the model's next-token logits hold NaN or infinity; its weights or "
            "activations have overflowed (the model has diverged)"
        )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
