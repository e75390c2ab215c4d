"""What every kind of worker shares: where it runs, calls whose failure names the worker, and
the split of a call's rows over the workers of a role."""

from __future__ import annotations

import os
from typing import Any

import torch


def where() -> dict[str, Any]:
    """This worker's process and node (each worker's ``info()``; the launcher logs it)."""
    import ray

    return {
        "pid": os.getpid(),
        "node_ip": ray.util.get_node_ip_address(),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def worker_call(role: str, index: int, ref: Any) -> Any:
    """``ray.get(ref)`` of a call to worker ``index`` of ``role`` ("rollout worker", ...), a
    death or an out-of-memory error named as such."""
    import ray
    import ray.exceptions

    try:
        return ray.get(ref)
    except ray.exceptions.OutOfMemoryError as error:  # Ray's memory monitor killed it
        raise RuntimeError(f"{role} {index} ran out of memory: {error}") from error
    except ray.exceptions.RayActorError as error:
        raise RuntimeError(f"{role} {index} died: {error}") from error
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, (torch.OutOfMemoryError, MemoryError)):
            raise RuntimeError(f"{role} {index} ran out of memory: {error.cause}") from error
        raise


def split_rows(rows: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` of ``rows`` over at most ``parts`` chunks, the first ones a
    row longer when it does not divide (no empty chunk)."""
    size, extra = divmod(rows, parts)
    bounds, start = [], 0
    for part in range(min(parts, rows)):
        stop = start + size + (part < extra)
        bounds.append((start, stop))
        start = stop
    return bounds
