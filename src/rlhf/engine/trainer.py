"""The one training loop every recipe uses.

A recipe hands the :class:`Trainer` a model, a :class:`ResumableLoader` of typed batches and a
loss function ``loss_fn(model, batch) -> (loss_sum, metrics)`` that returns a *sum* over the
batch's loss units (tokens for SFT, pairs for preference losses). The trainer divides by the
units of the whole optimiser step, so the update is the same however the step is split into
micro-batches (and, later, data-parallel ranks).

It owns: AdamW, warm-up + decay schedule, gradient accumulation and clipping, bf16 autocast (GPUs,
and CPUs with bf16 units when asked), periodic evaluation, checkpoints with exact resume, metrics
sinks and the NaN guard.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from rlhf.config import StrictModel
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.metrics import JsonlSink, MetricsSink, TensorBoardSink, WandbSink
from rlhf.engine.schedule import Schedule, build_scheduler

logger = logging.getLogger("rlhf")

CHECKPOINT_PREFIX = "step-"


class TrainConfig(StrictModel):
    """Optimisation settings shared by every recipe."""

    max_steps: int | None = Field(
        None, ge=1, description="Optimiser steps to run; when null, `epochs` decides."
    )
    epochs: float = Field(
        1.0, gt=0, description="Passes over the training data (if max_steps is null)."
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (one forward/backward).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    schedule: Schedule = Field("cosine", description="Decay after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up from 0 to lr.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of lr.")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this (null: no clipping)."
    )
    seed: int = Field(0, description="Seed for initialisation, shuffling and sampling.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto",
        description="bf16 autocast (fp32 weights and optimiser). 'auto': on GPUs that support "
        "it, never on CPU; 'bf16' also on CPUs with bf16 matrix units (AVX512-BF16 / AMX).",
    )
    device: str = Field(
        "auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda:0', ..."
    )
    compile: bool = Field(
        False,
        description="torch.compile each transformer block: much faster steps after a one-off "
        "compile (~30 s on a laptop CPU), worth it for runs longer than a few minutes (online "
        "recipes compile the reference and reward models' blocks too).",
    )
    log_every: int = Field(1, ge=1, description="Log training metrics every N steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")


class Batch(Protocol):
    """What the trainer needs of a batch; recipes' typed batches provide it."""

    @property
    def loss_units(self) -> int: ...  # what the loss is a sum over (tokens, pairs, ...)

    @property
    def num_tokens(self) -> int: ...  # real (non-pad) tokens, for throughput

    def to(self, device: torch.device) -> Batch: ...


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Mapping[str, float]]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StepCallback(Protocol):
    def on_step_end(self, step: int, metrics: Mapping[str, float]) -> None: ...


@dataclass
class TrainResult:
    final_step: int
    last_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles), where
    bf16 autocast runs matrix products several times faster than fp32; elsewhere it would
    only emulate them."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for us
        pass


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        numpy.random.set_state(state["numpy"])


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints`` (None if there is none)."""
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return None
    complete = [
        p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.json").exists()
    ]
    return max(complete, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), default=None)


class Trainer:
    """Runs optimiser steps over a loader; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        loader: ResumableLoader,
        loss_fn: LossFn,
        out_dir: str | Path,
        *,
        evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
        export: Callable[[Path], None] | None = None,
        callbacks: Sequence[StepCallback] = (),
        tensorboard: bool = True,
        wandb_project: str | None = None,
        run_config: Mapping[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.model, self.config, self.loader, self.loss_fn = model, config, loader, loss_fn
        self.out_dir = Path(out_dir)
        self.evaluate, self.export, self.callbacks = evaluate, export, list(callbacks)
        self.device = resolve_device(config.device)
        model.to(self.device)
        if config.compile:
            from rlhf.models.compile import compile_blocks

            compile_blocks(model)
        self.autocast_dtype = self._autocast_dtype()
        if self.autocast_dtype is not None and self.device.type == "cpu":
            from rlhf.models.attention import upcast_cpu_attention

            upcast_cpu_attention()  # the CPU's bf16 attention kernel is the slow part
        self.total_steps = config.max_steps or max(
            1, math.ceil(config.epochs * len(loader) / config.grad_accum)
        )
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            self._param_groups(),
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            # the fused CPU/GPU kernel updates every tensor in one pass
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=config.warmup_steps,
            total_steps=self.total_steps,
            schedule=config.schedule,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._tensorboard, self._wandb_project = tensorboard, wandb_project
        self._run_config = dict(run_config or {})
        self._progress = progress

    def _autocast_dtype(self) -> torch.dtype | None:
        wanted = self.config.mixed_precision
        if wanted == "no":
            return None
        if self.device.type == "cuda":
            if wanted == "auto" and not torch.cuda.is_bf16_supported():
                return None
            return torch.bfloat16
        # on a CPU only when asked: bf16 changes the numbers, and the default keeps CPU runs
        # reproducible in fp32
        if wanted == "bf16":
            if self.device.type == "cpu" and cpu_has_bf16_units():
                return torch.bfloat16
            logger.warning(
                "mixed_precision=bf16 needs a GPU or a CPU with bf16 matrix units (AVX512-BF16 "
                "or AMX); training in fp32 on %s",
                self.device,
            )
        return None

    def precision(self) -> Any:
        """The context of every pass the model makes: bf16 autocast under mixed precision."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def _param_groups(self) -> list[dict[str, Any]]:
        """No weight decay on biases and norm weights (1-D tensors), as is standard."""
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write model, optimiser, scheduler, RNG and data position; prune old checkpoints."""
        folder = self.out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        names = {id(p): n for n, p in self.model.named_parameters()}
        save_file(
            {names[id(p)]: p.detach().contiguous().cpu() for p in self.trainable},
            partial / "trainable.safetensors",
        )
        torch.save(self.optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), partial / "scheduler.pt")
        torch.save(_rng_state(), partial / "rng.pt")
        if self.export is not None:
            self.export(partial / "model")
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "loader": self.loader.state_dict(),
        }
        # trainer_state.json is written last and the folder renamed into place: a checkpoint
        # that exists is complete, even if the process died while writing the next one.
        (partial / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        self.last_checkpoint = folder
        self._prune_checkpoints()
        return folder

    def _prune_checkpoints(self) -> None:
        folders = sorted(
            (p for p in (self.out_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()),
            key=lambda p: p.name,
        )
        for old in folders[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, folder: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote."""
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        weights = load_file(folder / "trainable.safetensors", device=str(self.device))
        params = dict(self.model.named_parameters())
        missing = [name for name in weights if name not in params]
        if missing:
            raise ValueError(
                f"{folder}: checkpoint does not match the model (unknown {missing[:3]})"
            )
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(
            torch.load(folder / "optimizer.pt", map_location=self.device)
        )
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        _set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]
        self.last_checkpoint = folder
        logger.info("resumed from %s at step %d", folder, self.step)

    # ------------------------------------------------------------------ the loop
    def _sinks(self, resumed: bool) -> list[MetricsSink]:
        sinks: list[MetricsSink] = [
            JsonlSink(self.out_dir / "metrics.jsonl", resume_step=self.step if resumed else None)
        ]
        if self._tensorboard:
            sinks.append(TensorBoardSink(self.out_dir / "tensorboard"))
        if self._wandb_project:
            sinks.append(WandbSink(self._wandb_project, self.out_dir.name, self._run_config))
        return sinks

    def _train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches."""
        with self.precision():  # an online recipe's loader samples and scores rollouts
            micro_batches = [self.loader.next_batch() for _ in range(self.config.grad_accum)]
        units = sum(batch.loss_units for batch in micro_batches)
        self.model.train()
        totals: dict[str, float] = {}
        loss_total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            batch = batch.to(self.device)
            with self.precision():
                loss_sum, metrics = self.loss_fn(self.model, batch)
            loss = loss_sum / max(units, 1)
            loss.backward()
            loss_total += loss.detach()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        loss_value = float(loss_total)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            where = self.last_checkpoint or "none was saved yet"
            raise TrainingDiverged(
                f"step {self.step + 1}: the loss is {loss_value}; last good checkpoint: {where}"
            )
        if self.config.max_grad_norm is not None:
            grad_norm = float(
                torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
            )
        else:
            grad_norm = float(
                torch.linalg.vector_norm(
                    torch.stack(
                        [
                            torch.linalg.vector_norm(p.grad)
                            for p in self.trainable
                            if p.grad is not None
                        ]
                    )
                )
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(batch.num_tokens for batch in micro_batches)
        # the engine's own figures win over same-named metrics a loss function reports
        return totals | {
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": float(tokens),
            "loss_units": float(units),
        }

    def _run_eval(self, sinks: Sequence[MetricsSink]) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self.precision():
            metrics = dict(self.evaluate(self.model))
        for sink in sinks:
            sink.log(self.step, metrics, prefix="eval")
        logger.info("step %d eval: %s", self.step, _format(metrics))
        return metrics

    def train(self, resume_from: Path | None = None) -> TrainResult:
        """Run until ``total_steps``; resume from a checkpoint folder when given."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            seed_everything(self.config.seed)
        sinks = self._sinks(resumed=resume_from is not None)
        history: list[dict[str, float]] = []
        bar = _progress_bar(self.total_steps, self.step, enabled=self._progress)
        start = time.perf_counter()
        window_tokens, window_start = 0.0, start
        unlogged: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                metrics = self._train_step()
                self.step += 1
                now = time.perf_counter()
                window_tokens += metrics["tokens"]
                metrics["time"] = now - start
                metrics["epoch"] = self.loader.epoch + self.loader.position / max(
                    len(self.loader), 1
                )
                if self.step % self.config.log_every == 0 or self.step == self.total_steps:
                    metrics["tokens_per_s"] = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0.0, now
                    # a metric only some steps report (e.g. an online recipe's rollout_* on
                    # the first step of each rollout) reaches the next logged row, latest value
                    row = unlogged | metrics
                    unlogged = {}
                    for sink in sinks:
                        sink.log(self.step, row)
                    bar.set_postfix(
                        loss=f"{metrics['loss']:.4f}",
                        lr=f"{metrics['lr']:.2e}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}",
                        refresh=False,
                    )
                else:
                    unlogged |= metrics
                history.append(metrics)
                for callback in self.callbacks:
                    callback.on_step_end(self.step, metrics)
                bar.update(1)
                final = self.step == self.total_steps
                if final or (self.config.eval_every and self.step % self.config.eval_every == 0):
                    metrics.update({f"eval_{k}": v for k, v in self._run_eval(sinks).items()})
                if final or (self.config.save_every and self.step % self.config.save_every == 0):
                    self.save_checkpoint()
        finally:
            bar.close()
            for sink in sinks:
                sink.close()
        return TrainResult(self.step, self.last_checkpoint, history)


def _format(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in metrics.items())


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
