"""Rollout workers: Ray actors that only sample, each with its own copy of the policy.

:class:`RolloutWorker` is a plain class the launcher (:mod:`rlhf.distributed.launch`) makes a
Ray actor of; it holds a copy of the policy and an engine of :mod:`rlhf.rollout` (HF or vLLM)
over it. :class:`RemoteEngine` is the trainer's side, a
:class:`~rlhf.rollout.types.GenerationEngine` over those actors that keeps their weights the
trainer's, the way :class:`~rlhf.rollout.vllm.VLLMEngine` keeps its engine's, and lets the
trainer train while they sample (``submit``, then ``collect`` and ``finish``:
:class:`rlhf.online.rollouts.RolloutQueue`):

* **Weights follow the trainer.** An optimiser step on the policy marks the workers' copies
  stale; the next rollout first pushes every weight by checkpoint name (LoRA merged), as
  float32, through Ray's object store (no shared filesystem: workers may be on other nodes).
  Under FSDP2 every training rank gathers the shards (a collective) and the first rank alone
  talks to the workers.
* **Syncs are verified.** Each worker returns a receipt, the checksum of every tensor it now
  holds, compared with the one sent before any rollout sampled after that push is returned: a
  missing or altered tensor raises :class:`~rlhf.rollout.types.WeightSyncError` naming it and
  the worker.
* **The mismatch is returned.** The engine's sampling log-probs come back as
  ``RolloutBatch.engine_logps``; ``logps`` are the trainer's own, recomputed when the rollout
  is returned (``samples_separately``), so a rollout sampled ahead by older weights
  (:mod:`rlhf.online.rollouts`) is trained with today's log-probs and its lag is measurable and
  correctable (``mismatch.correction``).

Prompts are split into contiguous chunks, one per worker, chunk ``c`` sampled with a seed fixed
by the call's seed and ``c`` (the call's own with one worker), so a seeded rollout depends on
the number of workers, not on timing.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray
import ray.exceptions
import torch

from rlhf.data.records import Text
from rlhf.distributed.workers import (
    model_files,
    model_folder,
    split_rows,
    where,
    worker_call,
)
from rlhf.models.forward import evaluating
from rlhf.models.parallel import broadcast_object, is_main_process, is_sharded
from rlhf.models.teacher_forcing import response_logprobs
from rlhf.models.weights import checkpoint_weights, on_optimizer_step
from rlhf.rollout.types import EngineChoice, RolloutBatch, SamplingParams, WeightSyncError
from rlhf.rollout.vllm_runner import checksum

logger = logging.getLogger("rlhf.distributed")

Receipt = dict[str, tuple[int, int]]  # tensor name -> checksum (rlhf.rollout.vllm_runner)

# ------------------------------------------------------------------------------ the worker


class RolloutWorker:
    """One rollout worker (a Ray actor: ``ray.remote(RolloutWorker).options(...).remote(
    threads=..., index=...)``): a copy of the policy and an engine sampling from it."""

    def __init__(self, threads: int, index: int) -> None:
        # its reserved cores only: workers sharing a machine must not oversubscribe it
        torch.set_num_threads(threads)
        self.index = index
        self.model: torch.nn.Module | None = None
        self.engine: Any = None

    def info(self) -> dict[str, Any]:
        """Where this worker runs (the launcher logs it)."""
        return where()

    def setup(
        self,
        model_files: dict[str, bytes],
        engine_kind: str,
        vllm_options: dict[str, Any] | None,
        batch_size: int,
    ) -> dict[str, Any]:
        """Load the policy from the files of its saved folder and build the engine (any
        earlier one is closed); returns where it runs."""
        from rlhf.models.load import load_model, load_tokenizer
        from rlhf.rollout.factory import build_engine
        from rlhf.rollout.vllm_config import VLLMConfig

        self.close()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with model_folder(model_files, prefix=f"rlhf-rollout-{self.index}-") as folder:
            tokenizer = load_tokenizer(folder)
            self.model = load_model(folder, dtype="float32", device=device, tokenizer=tokenizer)
        vllm = VLLMConfig(**vllm_options) if vllm_options is not None else None
        self.engine = build_engine(
            self.model, tokenizer, batch_size=batch_size, kind=engine_kind, vllm=vllm
        )
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "device": device,
        }

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> Receipt:
        """Copy ``weights`` (checkpoint names) into the policy; the receipt is the checksum of
        every one of them as now held (a name it does not hold is left out)."""
        assert self.model is not None, "setup first"
        held = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                if name in held:
                    held[name].copy_(tensor)
        mark_stale = getattr(self.engine, "mark_stale", None)
        if callable(mark_stale):  # vLLM: its own copy follows ours before the next rollout
            mark_stale()
        logger.debug("rollout worker %d holds policy version %d", self.index, version)
        return {name: checksum(held[name]) for name in weights if name in held}

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """The engine's rollout, its sampling log-probs as ``engine_logps`` (``logps`` are the
        trainer's to recompute)."""
        started = time.perf_counter()
        batch = self.engine.generate(prompts, replace(params, return_logps=True))
        sampled = batch.engine_logps if batch.engine_logps is not None else batch.logps
        stats = {"generate_seconds": time.perf_counter() - started} | batch.engine_stats
        return replace(batch, logps=None, engine_logps=sampled, engine_stats=stats).to("cpu")

    def close(self) -> None:
        """Stop the engine (vLLM's process) and remove the model folder."""
        if self.engine is not None:
            close = getattr(self.engine, "close", None)
            if callable(close):
                close()
        self.engine = self.model = None


# ------------------------------------------------------------------------------ the trainer's side


@dataclass
class _Push:
    """Weights sent to the workers, verified once, before the first rollout after it."""

    version: int
    sent: Receipt  # checksum of each tensor as sent
    receipts: list[tuple[int, Any]]  # (worker, ObjectRef of its Receipt)
    seconds: float
    verified: bool = False


@dataclass
class Submission:
    """A rollout in flight (``RemoteEngine.submit``'s handle)."""

    params: SamplingParams
    version: int  # optimiser steps the sampling weights had seen
    push: _Push | None  # the last push before it (checked before its result is used)
    pushed: bool  # whether it brought that push (its sync seconds are reported with it)
    chunks: list[tuple[int, Any]] = field(default_factory=list)  # (worker, ObjectRef of its
    # RolloutBatch); on the first training rank only


class RemoteEngine:
    """A :class:`~rlhf.rollout.types.GenerationEngine` over rollout workers, following the
    trainer's ``model`` (see the module docstring). ``generate`` waits; ``submit``, then
    ``result`` (= ``finish(collect(...))``), lets the caller train meanwhile."""

    samples_separately = True  # its weights are a copy: its log-probs differ from the trainer's

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        workers: Sequence[Any],
        *,
        choice: EngineChoice,
        batch_size: int,
        recompute_logps: bool = True,
    ) -> None:
        if not workers:
            raise ValueError("distributed.rollout_workers: no rollout workers were started")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
        if is_sharded(model):
            raise ValueError(
                "the rollout engine is built from the whole policy: build it before sharding"
            )
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # False (mismatch.old_logps=engine): the workers' sampling log-probs are the rollout's
        # logps, the trainer's forward pass over it saved
        self.recompute_logps = recompute_logps
        self.workers = list(workers)
        self.version = 0  # optimiser steps seen
        # None: the workers hold the weights of construction time, which a checkpoint loaded
        # later (resume) replaces without an optimiser step: the first rollout pushes too
        self._held: int | None = None
        self._push: _Push | None = None
        if is_main_process():
            files = ray.put(model_files(model, tokenizer))  # once, read by every worker
            vllm = choice.vllm.model_dump() if choice.engine == "vllm" else None
            setups = [
                (i, worker.setup.remote(files, choice.engine, vllm, batch_size))
                for i, worker in enumerate(self.workers)
            ]
            for i, ref in setups:
                place = worker_call("rollout worker", i, ref)
                logger.info("rollout worker %d: %s engine on %s", i, choice.engine, place)
        reference = weakref.ref(self)

        def stepped() -> None:
            engine = reference()
            if engine is not None:
                engine.version += 1

        self._hook = on_optimizer_step(model, stepped)

    # ---------------------------------------------------------------- weights
    def mark_stale(self) -> None:
        """The policy's weights changed outside an optimiser step: push them before the next
        rollout."""
        self._held = None

    def _sync(self) -> None:
        """Push the whole weights to every worker (their receipts are checked later)."""
        started = time.perf_counter()
        main = is_main_process()
        weights = _whole_weights(self.model, keep=main)
        receipts: list[tuple[int, Any]] = []
        sent: Receipt = {}
        if main:
            sent = {name: checksum(tensor) for name, tensor in weights.items()}
            shared = ray.put(weights)  # once in the object store, read by every worker
            receipts = [
                (i, worker.load_weights.remote(shared, self.version))
                for i, worker in enumerate(self.workers)
            ]
        self._push = _Push(self.version, sent, receipts, time.perf_counter() - started)
        self._held = self.version

    def _verify(self, push: _Push) -> None:
        for i, ref in push.receipts:
            receipt = worker_call("rollout worker", i, ref)
            missing = [name for name in push.sent if name not in receipt]
            altered = [n for n, value in push.sent.items() if n in receipt and receipt[n] != value]
            if missing or altered:
                problems = []
                if missing:
                    problems.append(f"{len(missing)} never arrived (first: {missing[0]})")
                if altered:
                    problems.append(f"{len(altered)} arrived altered (first: {altered[0]})")
                raise WeightSyncError(
                    f"rollout worker {i}: the weights of policy version {push.version} failed "
                    f"verification: {'; '.join(problems)}"
                )
        push.verified = True

    # ---------------------------------------------------------------- sampling
    def submit(self, prompts: Sequence[Text], params: SamplingParams) -> Submission:
        """Start sampling ``params.num_samples`` responses to every prompt with the weights as
        they are now (pushed first when they changed); returns at once."""
        if not prompts:
            raise ValueError("no prompts to sample from")
        pushed = self._held != self.version
        if pushed:
            self._sync()
        handle = Submission(params, self.version, self._push, pushed)
        if is_main_process():
            for chunk, (start, stop) in enumerate(split_rows(len(prompts), len(self.workers))):
                seed = params.seed if chunk == 0 else _chunk_seed(params.seed, chunk)
                ref = self.workers[chunk].generate.remote(
                    list(prompts[start:stop]), replace(params, seed=seed)
                )
                handle.chunks.append((chunk, ref))
        return handle

    def collect(self, handle: Submission) -> RolloutBatch | None:
        """The samples ``handle`` started, once the weights they were sampled with are
        verified; None on training ranks other than the first (they get them from
        :meth:`finish`)."""
        if not is_main_process():
            return None
        if handle.push is not None and not handle.push.verified:
            self._verify(handle.push)
        parts = [worker_call("rollout worker", i, ref) for i, ref in handle.chunks]
        batch = RolloutBatch.concatenate(parts, self.tokenizer.pad_token_id)
        if handle.pushed and handle.push is not None:
            batch.engine_stats["sync_seconds"] = handle.push.seconds
        return batch

    def finish(self, batch: RolloutBatch | None, params: SamplingParams) -> RolloutBatch:
        """The first training rank's ``batch`` on every rank, its ``logps`` the trainer's
        policy's as it is now (when ``params.return_logps``; a collective under FSDP2), or,
        without ``recompute_logps``, the workers' own (then the batch has no separate
        ``engine_logps``: they are one)."""
        batch = broadcast_object(batch)
        if params.return_logps and self.recompute_logps:
            batch.logps = self._trainer_logps(batch, params.logp_temperature)
        elif params.return_logps:
            batch.logps, batch.engine_logps = batch.engine_logps, None
        return batch

    def result(self, handle: Submission) -> RolloutBatch:
        """The rollout ``handle`` started, the same on every training rank."""
        return self.finish(self.collect(handle), handle.params)

    def generate(self, prompts: Sequence[Text], params: SamplingParams) -> RolloutBatch:
        """``params.num_samples`` responses to every prompt, as one prompt-major batch."""
        return self.result(self.submit(prompts, params))

    def _trainer_logps(self, batch: RolloutBatch, temperature: float) -> torch.Tensor:
        """[B, R] the trainer's policy's log-probs of the responses (eval mode, no grad)."""
        device = next(self.model.parameters()).device
        with evaluating(self.model), torch.no_grad():
            return response_logprobs(
                self.model,
                batch.prompt_ids.to(device),
                batch.prompt_mask.to(device),
                batch.response_ids.to(device),
                batch.response_mask.to(device),
                temperature=temperature,
                batch_size=self.batch_size,
                groups=batch.prompt_index,
            ).cpu()

    def close(self) -> None:
        """Forget the workers (the launcher that started them stops them) and the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.workers = []


def rollout_engine(
    policy: torch.nn.Module,
    tokenizer: Any,
    choice: EngineChoice,
    batch_size: int,
    workers: Sequence[Any],
    *,
    recompute_logps: bool = True,
) -> RemoteEngine:
    """The engine an online recipe samples with when ``distributed.rollout_workers`` > 0."""
    return RemoteEngine(
        policy,
        tokenizer,
        workers,
        choice=choice,
        batch_size=batch_size,
        recompute_logps=recompute_logps,
    )


# ------------------------------------------------------------------------------ helpers


def _chunk_seed(seed: int, chunk: int) -> int:
    """A distinct 63-bit seed per chunk of a call (fixed by the call's seed and the chunk)."""
    return (seed * 1_000_003 + chunk * 7_919 + 1) % (2**63 - 1)


def _whole_weights(model: torch.nn.Module, *, keep: bool) -> dict[str, torch.Tensor]:
    """Every weight under its checkpoint name as float32 on the CPU, each gathered whole from
    its FSDP2 shards (a collective: every rank calls this; only those with ``keep`` get them)."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint_weights(model):
        full = getattr(tensor, "full_tensor", None)
        if callable(full):
            tensor = full()
        if keep:
            weights[name] = tensor.to("cpu", torch.float32).contiguous()
    return weights
