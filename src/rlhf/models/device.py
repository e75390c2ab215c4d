"""Device names as configs give them ('auto', 'cpu', 'cuda:1', ...), checked against this machine."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device ('auto': cuda when available, else cpu); a ValueError says
    why a name is not a device, or not one this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{name!r} is not a device (expected auto, cpu, cuda, cuda:N or mps)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"{name!r}: no CUDA device is available here (torch {torch.__version__}, "
                f"{build}); use cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name!r}: MPS is not available here; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name!r}: unsupported device type (expected auto, cpu, cuda or mps)")
    return device
