"""Reference workers: Ray actors holding π_ref, so the frozen reference is not a whole second
model beside the policy in every training rank.

:class:`ReferenceWorker` loads the reference (``reference.path``, or the initial policy's
files sent by the trainer) and computes the log-probs of rollouts' responses under it;
:class:`RemoteReference` is the trainer's side, a
:class:`~rlhf.models.reference.ReferenceModel` whose :meth:`response_logps` asks the workers.
A rollout's prompts are split into contiguous groups, one per worker (a prompt's samples stay
together, so each worker still reads a prompt once for its K samples); rank 0 asks and the
other training ranks receive its answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rlhf.distributed.workers import model_folder, split_rows, where, worker_call
from rlhf.models.parallel import broadcast_object, is_main_process
from rlhf.models.reference import ReferenceModel

logger = logging.getLogger("rlhf.distributed")


class ReferenceWorker:
    """One reference worker (a Ray actor: ``ray.remote(ReferenceWorker).options(...).remote(
    threads=..., index=...)``): π_ref, frozen, and its log-probs of responses."""

    def __init__(self, threads: int, index: int) -> None:
        torch.set_num_threads(threads)  # its reserved cores only
        self.index = index
        self.reference: ReferenceModel | None = None

    def info(self) -> dict[str, Any]:
        """Where this worker runs (the launcher logs it)."""
        return where()

    def setup(
        self,
        *,
        path: str | None,
        files: dict[str, bytes] | None,
        dtype: str,
        attn_implementation: str | None,
        cwd: str,
    ) -> str:
        """Load π_ref from ``path`` (a folder, read from ``cwd`` when relative, or a hub name)
        or from ``files`` (a saved model folder's files); returns what it loaded."""
        from rlhf.models.load import load_tokenizer
        from rlhf.models.reference import load_reference

        self.close()
        device = "cuda" if torch.cuda.is_available() else "cpu"

        def load(source: str) -> None:
            module = load_reference(
                source, load_tokenizer(source), dtype=dtype, attn_implementation=attn_implementation
            )
            self.reference = ReferenceModel.frozen(module).to(torch.device(device))

        if files is not None:
            with model_folder(files, prefix=f"rlhf-reference-{self.index}-") as folder:
                load(str(folder))
        else:
            if os.path.isdir(cwd):
                os.chdir(cwd)
            assert path is not None
            load(path)
        return f"{path if files is None else 'the initial policy'} ({dtype}) on {device}"

    def response_logps(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float,
        batch_size: int,
        groups: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError(f"reference worker {self.index}: setup() was never called")
        device = next(self.reference.module.parameters()).device
        return self.reference.response_logps(
            prompt_ids.to(device),
            prompt_mask.to(device),
            response_ids.to(device),
            response_mask.to(device),
            temperature=temperature,
            batch_size=batch_size,
            groups=None if groups is None else groups.to(device),
        )

    def close(self) -> None:
        self.reference = None


class RemoteReference(ReferenceModel):
    """π_ref on reference workers (see the module docstring). It holds no module: where a
    caller would run one (``active``), it is told to use :meth:`response_logps`."""

    def __init__(self, workers: Sequence[Any], **setup: Any) -> None:
        if not workers:
            raise ValueError("RemoteReference needs at least one reference worker")
        self.workers, self.disable_adapter = list(workers), False
        self.module = None  # type: ignore[assignment]
        if is_main_process():
            calls = [worker.setup.remote(**setup) for worker in self.workers]
            for index, ref in enumerate(calls):
                logger.info(
                    "reference worker %d: %s", index, worker_call("reference worker", index, ref)
                )

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        raise TypeError(
            "the reference runs on reference workers (distributed.reference_workers): ask it "
            "for response_logps, it has no module here"
        )
        yield  # pragma: no cover

    def to(self, device: torch.device) -> RemoteReference:
        return self  # the workers place it

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
        logps = None
        if is_main_process():
            rows = _row_chunks(groups, prompt_ids.shape[0], len(self.workers))
            calls = [
                worker.response_logps.remote(
                    prompt_ids[start:stop].cpu(),
                    prompt_mask[start:stop].cpu(),
                    response_ids[start:stop].cpu(),
                    response_mask[start:stop].cpu(),
                    temperature,
                    batch_size,
                    None if groups is None else (groups[start:stop] - groups[start]).cpu(),
                )
                for worker, (start, stop) in zip(self.workers, rows, strict=False)
            ]
            parts = [worker_call("reference worker", i, ref) for i, ref in enumerate(calls)]
            logps = torch.cat(parts) if parts else torch.zeros(0, response_ids.shape[1])
        return broadcast_object(logps)


def _row_chunks(groups: torch.Tensor | None, rows: int, workers: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges, one per worker, never splitting a prompt's rows (rows are
    prompt-major: ``groups`` [N] is each row's prompt, non-decreasing)."""
    if groups is None:
        return split_rows(rows, workers)
    starts = [0] + [i for i in range(1, rows) if groups[i] != groups[i - 1]]  # each prompt's
    prompts = split_rows(len(starts), workers)
    bounds = [*starts, rows]
    return [(bounds[first], bounds[last]) for first, last in prompts]
