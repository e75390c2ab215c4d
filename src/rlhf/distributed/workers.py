"""What every kind of worker shares: where it runs, calls whose failure names the worker, and
the split of a call's rows over the workers of a role."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

# The launcher records each role's workers here, in each training rank, before the recipe runs.
_started: dict[str, list[Any]] = {}


def set_role_workers(role: str, handles: Sequence[Any]) -> None:
    """Make ``handles`` (Ray actors) the ``role`` workers ("rollout", "reward", "reference")
    of the run in this process."""
    _started[role] = list(handles)


def role_workers(role: str, expected: int) -> list[Any]:
    """The ``role`` workers the launcher started for this run, checked against the
    ``distributed.<role>_workers`` (``expected``) the config asks for."""
    workers = list(_started.get(role, []))
    if len(workers) != expected:
        raise ValueError(
            f"distributed.{role}_workers={expected}, but {len(workers)} {role} workers were "
            f"started for this run (a run with {role} workers goes through rlhf.distributed's "
            "launcher)"
        )
    return workers


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


def model_files(model: torch.nn.Module, tokenizer: Any) -> dict[str, bytes]:
    """The files of ``model`` (LoRA merged) and ``tokenizer`` saved as a Hugging Face folder:
    what a worker on any node loads a copy of the model from (through Ray's object store, no
    shared filesystem)."""
    from rlhf.models.load import save_model

    with tempfile.TemporaryDirectory(prefix="rlhf-model-") as folder:
        save_model(model, tokenizer, folder, merge_lora=True)
        root = Path(folder)
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in root.rglob("*")
            if path.is_file()
        }


@contextlib.contextmanager
def model_folder(files: dict[str, bytes], prefix: str) -> Iterator[Path]:
    """``files`` (:func:`model_files`) written to a temporary folder for the ``with`` block,
    removed after it: a worker loads its copy from there, then needs it no more (a folder
    kept for the actor's life was left behind whenever Ray killed the actor)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        folder = Path(name)
        for relative, data in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        yield folder
