"""The one training loop every recipe uses.

A recipe hands the :class:`Trainer` a model, a :class:`ResumableLoader` of typed batches and a
loss function ``loss_fn(model, batch) -> (loss_sum, metrics)`` that returns a *sum* over the
batch's loss units (tokens for SFT, pairs for preference losses). The trainer divides by the
units of the whole optimiser step, so the update is the same however the step is split into
micro-batches (and, later, data-parallel ranks).

It owns: AdamW, warm-up + decay schedule, gradient accumulation and clipping, bf16 autocast (GPUs,
and CPUs with bf16 units when asked), periodic evaluation, checkpoints with exact resume, metrics
sinks, and the safety rails:

- a step whose loss or gradient is NaN or infinite never reaches the optimiser: the run stops
  (or skips up to ``train.skip_nonfinite_steps`` such steps), naming the step and the last
  checkpoint, and no checkpoint or export is ever written with non-finite weights;
- the first Ctrl-C finishes the current step, saves a checkpoint and stops
  (:class:`TrainingInterrupted`); a second one stops at once;
- resuming falls back past a damaged newest checkpoint to the previous complete one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save_file

from rlhf.config import StrictModel
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.metrics import (
    JsonlSink,
    MetricsSink,
    TensorBoardSink,
    WandbSink,
    close_sinks,
)
from rlhf.engine.optim import OptimizerName, build_optimizer, embedding_weights, has_8bit_adamw
from rlhf.engine.schedule import Schedule, build_scheduler
from rlhf.models.device import resolve_device
from rlhf.models.finite import NonFiniteError, nonfinite_names
from rlhf.models.parallel import (
    all_reduce_sums,
    any_rank,
    barrier,
    is_distributed,
    is_main_process,
    keys_over_ranks,
    rank_and_world,
    shard_model,
)

logger = logging.getLogger("rlhf")

CHECKPOINT_PREFIX = "step-"
SHARDED_FOLDER = "sharded"  # in a checkpoint of data-parallel ranks: torch.distributed.checkpoint
RUN_CONFIG_FILE = "run_config.json"  # in a checkpoint: the config of the run that wrote it
# how long closing the metric sinks may take at the end of a run: TensorBoard's writer has been
# seen to wait minutes on a slow disk, and a run that is over must not hang on its logs
SINK_CLOSE_TIMEOUT_S = 15.0


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
    skip_nonfinite_steps: int = Field(
        0,
        ge=0,
        description="Optimiser steps whose loss or gradient is NaN or infinite to skip (no "
        "update, a warning) before the run stops; 0 stops at the first, naming the step.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Activation checkpointing: keep only each transformer block's input in the "
        "forward pass and recompute the block in the backward pass (about a third more compute "
        "per step, activations down to about one hidden state per layer and token; SFT's "
        "output layer is then applied in chunks recomputed in the backward pass as well). "
        "Covers LoRA, reward and value models (every Hugging Face model in the trained "
        "module); the loss and gradients are those without it, within float rounding.",
    )
    optimizer: OptimizerName = Field(
        "adamw_fused",
        description="AdamW implementation: 'adamw_fused' (torch's fused kernel on CPU/GPU, no "
        "temporaries), 'adamw_foreach' (torch's multi-tensor one: same numbers, temporaries as "
        "large as the weights during the update), 'adamw_8bit' (torchao's AdamW8bit: moments "
        "in 8 bits, 2 instead of 8 bytes per weight; needs pip install 'rlhf[optim8bit]' and "
        "compiles its update once per tensor shape).",
    )
    save_optimizer: Literal["always", "except_final", "never"] = Field(
        "always",
        description="Which checkpoints hold the optimiser state (AdamW's moments: twice the "
        "fp32 weights' size, the largest file). 'always': every one, so --resume is exact, "
        "also extending a finished run. 'except_final': all but the last step's, which a run "
        "that completes keeps model-only (an interrupted run still resumes exactly). 'never': "
        "model-only checkpoints; --resume then restarts AdamW's moments from zero with a "
        "warning (the resumed run is no longer exactly the uninterrupted one).",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        resolve_device(name)  # a clear ValueError for a device that is not, or not here
        return name

    @field_validator("optimizer")
    @classmethod
    def _installed_optimizer(cls, name: OptimizerName) -> OptimizerName:
        if name == "adamw_8bit" and not has_8bit_adamw():
            raise ValueError(
                "adamw_8bit needs the optional 'torchao' package: pip install 'rlhf[optim8bit]'"
            )
        return name


class Batch(Protocol):
    """What the trainer needs of a batch; recipes' typed batches provide it."""

    @property
    def loss_units(self) -> int: ...  # what the loss is a sum over (tokens, pairs, ...)

    @property
    def num_tokens(self) -> int: ...  # real (non-pad) tokens, for throughput

    def to(self, device: torch.device) -> Batch: ...


LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, Mapping[str, float]]]


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; the message names the
    step and the last checkpoint (whose weights are finite: no other is ever written)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after a complete step, with a checkpoint of that step saved."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class CheckpointDamaged(ValueError):
    """A checkpoint's files cannot be read back whole; the message names the file."""


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


def complete_checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in ``folder`` (a run's ``checkpoints``), newest first."""
    if not folder.is_dir():
        return []
    complete = [
        p
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / "trainer_state.json").exists()
    ]
    return sorted(complete, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), reverse=True)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir/checkpoints`` (None if there is none)."""
    return next(iter(complete_checkpoints(out_dir / "checkpoints")), None)


def read_trainer_state(folder: Path) -> dict[str, Any] | None:
    """A checkpoint's step and loader position (``{"step", "loader", ...}``) without loading
    it, e.g. to plan the batches a resumed run reads; None when unreadable."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(state, dict) and {"step", "loader"} <= state.keys()
    return state if ok else None


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
        data_metrics: Mapping[str, float] | None = None,
        metrics_over_ranks: Literal["sum", "mean"] = "sum",
    ) -> None:
        self.model, self.config, self.loader, self.loss_fn = model, config, loader, loss_fn
        self.out_dir = Path(out_dir)
        self.evaluate, self.export, self.callbacks = evaluate, export, list(callbacks)
        self.device = resolve_device(config.device)
        model.to(self.device)
        if config.gradient_checkpointing:  # before compiling: the blocks' forward changes
            from rlhf.models.memory import enable_activation_checkpointing

            enable_activation_checkpointing(model)
        if config.compile:
            from rlhf.models.compile import compile_blocks

            compile_blocks(model)
        # data parallel (ranks started by rlhf.distributed): each rank holds a shard of the
        # weights (FSDP2) and reads its share of every micro-batch; the loss is divided by the
        # step's units over all ranks, so the update is the single process's at the same batch
        self.rank, self.world = rank_and_world()
        self.metrics_over_ranks = metrics_over_ranks
        if self.world > 1:
            loader.shard(self.rank, self.world)
            shard_model(model)
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
        self.optimizer = build_optimizer(
            config.optimizer,
            self._param_groups(),
            self.device,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            full_precision=embedding_weights(model),
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            warmup_steps=config.warmup_steps,
            total_steps=self.total_steps,
            schedule=config.schedule,
            min_lr_ratio=config.min_lr_ratio,
        )
        self.step = 0
        self.skipped_steps = 0  # steps whose loss or gradient was not finite, skipped
        self.last_checkpoint: Path | None = None
        self._stop_requested = False
        self._names = {id(p): name for name, p in model.named_parameters()}
        self._tensorboard, self._wandb_project = tensorboard, wandb_project
        self._run_config = dict(run_config or {})
        self._progress = progress and is_main_process()
        # figures about the data (rows truncated, dropped), a ``data`` row at the run's start
        self.data_metrics = dict(data_metrics or {})

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
    def _saves_optimizer(self, final: bool) -> bool:
        policy = self.config.save_optimizer
        return policy == "always" or (policy == "except_final" and not final)

    def save_checkpoint(self, final: bool = False) -> Path:
        """Write model, optimiser (``train.save_optimizer``; ``final``: the run's last step),
        scheduler, RNG and data position; prune old checkpoints.

        The exported model (``model/``, when the recipe exports) is written first, and the
        trainable weights it already holds bit for bit (all of them in a full fine-tune) are
        not written a second time: ``trainable.safetensors`` keeps the rest (LoRA adapters, a
        critic) and ``trainer_state.json`` names the ones to read from ``model/``.
        Weights that hold NaN or infinity are never written: :class:`TrainingDiverged`."""
        bad = nonfinite_names((self._names[id(p)], p) for p in self.trainable)
        if any_rank(bool(bad)):
            where = f" (in {', '.join(bad)})" if bad else " (on another rank)"
            raise TrainingDiverged(
                f"step {self.step}: the weights hold NaN or infinity{where}; "
                f"nothing was saved; {self._last_good()}"
            )
        folder = self.out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        partial = folder.with_name(folder.name + ".partial")
        if is_main_process():
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        barrier()
        trainable = {self._names[id(p)]: p for p in self.trainable}
        exported: set[str] = set()
        if self.export is not None:
            self.export(partial / "model")  # FSDP2 ranks: gathered, written by rank 0
            if not is_distributed():
                exported = _held_by_export(partial / "model", trainable)
        with_optimizer = self._saves_optimizer(final)
        if is_distributed():
            self._save_sharded(partial / SHARDED_FOLDER, with_optimizer)
        else:
            save_file(
                {
                    name: p.detach().contiguous().cpu()
                    for name, p in trainable.items()
                    if name not in exported
                },
                partial / "trainable.safetensors",
            )
            if with_optimizer:
                torch.save(self.optimizer.state_dict(), partial / "optimizer.pt")
        if not is_main_process():  # rank 0 writes the rest and renames the folder
            barrier()
            self.last_checkpoint = folder
            return folder
        torch.save(self.scheduler.state_dict(), partial / "scheduler.pt")
        torch.save(_rng_state(), partial / "rng.pt")
        if self._run_config:  # what --resume compares a new config with
            (partial / RUN_CONFIG_FILE).write_text(
                json.dumps(self._run_config, indent=2), encoding="utf-8"
            )
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "skipped_steps": self.skipped_steps,
            "loader": self.loader.state_dict(),
            "optimizer": with_optimizer,  # False: saved without (train.save_optimizer)
            "exported_weights": sorted(exported),  # trainable weights read from model/
            "ranks": self.world,  # > 1: weights and AdamW in sharded/ (any number resumes)
        }
        # trainer_state.json is written last and the folder renamed into place: a checkpoint
        # that exists is complete, even if the process died while writing the next one.
        (partial / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        self.last_checkpoint = folder
        self._prune_checkpoints()
        barrier()
        return folder

    def _save_sharded(self, folder: Path, with_optimizer: bool) -> None:
        """Every rank writes its shards of the weights (and AdamW's state) with
        ``torch.distributed.checkpoint``, whose files any number of ranks (or one process)
        reads back, resharded."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        state = {"model": get_model_state_dict(self.model)}
        if with_optimizer:
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        dcp.save(state, checkpoint_id=str(folder))

    def _load_sharded(self, folder: Path, with_optimizer: bool) -> None:
        """Read a sharded checkpoint into this run's model and AdamW, on any number of ranks."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = {"model": get_model_state_dict(self.model)}
        if with_optimizer:  # an empty AdamW's state is materialised first, to be read into
            state["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        try:
            with warnings.catch_warnings():
                # one process reading the shards of several ranks is meant (resharding on load)
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load(
                    state,
                    checkpoint_id=str(folder / SHARDED_FOLDER),
                    no_dist=not torch.distributed.is_initialized(),
                )
        except Exception as error:  # torn files, or shapes that no longer fit the model
            reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
            raise CheckpointDamaged(
                f"{folder / SHARDED_FOLDER}: cannot be read ({reason})"
            ) from None
        set_model_state_dict(self.model, state["model"])
        if with_optimizer:
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])

    def _load_whole_into_shards(
        self, weights: Mapping[str, torch.Tensor], optimizer: dict[str, Any] | None
    ) -> None:
        """A single process's checkpoint (whole tensors) into FSDP2 shards: every rank reads
        the whole files and keeps its part. AdamW's state is keyed by parameter position in a
        single process's file and by name here."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        whole = StateDictOptions(full_state_dict=True, strict=False)
        # each tensor is scattered in a collective: every rank must go in the same order
        set_model_state_dict(self.model, dict(sorted(weights.items())), options=whole)
        if optimizer is None:
            return
        names = [self._names[id(p)] for group in self._param_groups() for p in group["params"]]
        by_name = {
            "state": {names[index]: value for index, value in optimizer["state"].items()},
            "param_groups": [
                {**group, "params": [names[index] for index in group["params"]]}
                for group in optimizer["param_groups"]
            ],
        }
        set_optimizer_state_dict(self.model, self.optimizer, by_name, options=whole)

    def _prune_checkpoints(self) -> None:  # rank 0
        folder = self.out_dir / "checkpoints"
        for old in complete_checkpoints(folder)[self.config.keep_checkpoints :]:
            shutil.rmtree(old, ignore_errors=True)

    def _read_checkpoint(self, folder: Path) -> dict[str, Any]:
        """Every file of ``folder`` read back whole; :class:`CheckpointDamaged` names the first
        one that is not (torn by a crash or a full disk, edited, or holding non-finite weights
        from a run before this check existed)."""

        def read(name: str, reader: Callable[[Path], Any]) -> Any:
            path = folder / name
            try:
                return reader(path)
            except Exception as error:  # any unreadable file is damage, whatever the library
                reason = f"{type(error).__name__}: {error}".strip().splitlines()[0]
                raise CheckpointDamaged(f"{path}: cannot be read ({reason})") from None

        state = read("trainer_state.json", lambda p: json.loads(p.read_text(encoding="utf-8")))
        if not (isinstance(state, dict) and {"step", "loader"} <= state.keys()):
            raise CheckpointDamaged(f"{folder / 'trainer_state.json'}: lacks 'step' or 'loader'")
        rest = {
            "scheduler": read("scheduler.pt", torch.load),
            "rng": read("rng.pt", lambda p: torch.load(p, weights_only=False)),
        }
        if (folder / SHARDED_FOLDER).is_dir():  # weights and AdamW: read by _load_sharded
            return {"state": state, "weights": None, "optimizer": None, **rest}
        weights = read("trainable.safetensors", lambda p: load_file(p, device=str(self.device)))
        exported = state.get("exported_weights") or []
        if exported:
            weights |= read("model", lambda p: _read_exported(p, exported, self.device))
        bad = nonfinite_names(weights.items())
        if bad:
            raise CheckpointDamaged(
                f"{folder / 'trainable.safetensors'}: holds NaN or infinity (in {', '.join(bad)})"
            )
        optimizer = None
        if state.get("optimizer", True):  # checkpoints before train.save_optimizer all have it
            optimizer = read("optimizer.pt", lambda p: torch.load(p, map_location=self.device))
        return {"state": state, "weights": weights, "optimizer": optimizer, **rest}

    def _check_fits(self, folder: Path, weights: Mapping[str, torch.Tensor]) -> None:
        """A ValueError naming the parameters when the checkpoint's weights do not fit the model
        (its shape or its trainable set changed since the run started)."""
        params = {self._names[id(p)]: p for p in self.trainable}
        problems = [f"{name} is not in the model" for name in weights if name not in params]
        problems += [f"{name} is not in the checkpoint" for name in params if name not in weights]
        problems += [
            f"{name} has shape {list(tensor.shape)} in the checkpoint but "
            f"{list(params[name].shape)} in the model"
            for name, tensor in weights.items()
            if name in params and tensor.shape != params[name].shape
        ]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError(
                f"{folder}: the checkpoint does not fit the model, which changed since the run "
                f"started: {'; '.join(problems[:3])}{more}"
            )

    def load_checkpoint(self, folder: Path) -> None:
        """Restore everything :meth:`save_checkpoint` wrote."""
        parts = self._read_checkpoint(folder)
        with_optimizer = parts["state"].get("optimizer", True)
        if parts["weights"] is None:  # sharded: written by data-parallel ranks
            self._load_sharded(folder, with_optimizer)
        elif is_distributed():
            self._check_fits(folder, parts["weights"])
            self._load_whole_into_shards(parts["weights"], parts["optimizer"])
        else:
            self._check_fits(folder, parts["weights"])
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, tensor in parts["weights"].items():
                    params[name].copy_(tensor)
            if parts["optimizer"] is not None:
                self.optimizer.load_state_dict(parts["optimizer"])
        if not with_optimizer:
            logger.warning(
                "%s was saved without the optimiser state (train.save_optimizer): AdamW's "
                "moments restart from zero, so the resumed run is not exactly the one that "
                "stopped",
                folder,
            )
        self.scheduler.load_state_dict(parts["scheduler"])
        if not with_optimizer:  # the learning rate the fresh optimiser steps with
            for group, lr in zip(
                self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
            ):
                if isinstance(group["lr"], torch.Tensor):  # torchao keeps it as a tensor
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr
        _set_rng_state(parts["rng"])
        state = parts["state"]
        self.loader.load_state_dict(state["loader"])
        self.step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        self.last_checkpoint = folder
        logger.info("resumed from %s at step %d", folder, self.step)

    def resume(self, checkpoint: Path) -> None:
        """Restore ``checkpoint``, or, when its files are damaged, the newest older complete
        checkpoint beside it (with a warning naming the damaged file)."""
        step_of = lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX))  # noqa: E731
        older = [
            p for p in complete_checkpoints(checkpoint.parent) if step_of(p) < step_of(checkpoint)
        ]
        damaged = []
        for candidate in [checkpoint, *older]:
            try:
                self.load_checkpoint(candidate)
            except CheckpointDamaged as error:
                damaged.append(str(error))
                logger.warning("cannot resume from %s: %s", candidate.name, error)
                continue
            if damaged:
                logger.warning(
                    "resumed from the previous complete checkpoint, %s; the newer, damaged "
                    "one is left on disk and will be replaced when the run passes its step",
                    candidate,
                )
            return
        raise CheckpointDamaged("no checkpoint can be resumed: " + "; ".join(damaged))

    # ------------------------------------------------------------------ the loop
    def _sinks(self, resumed: bool) -> list[MetricsSink]:
        if not is_main_process():  # rank 0 logs the run's figures (the same on every rank)
            return []
        sinks: list[MetricsSink] = [
            JsonlSink(self.out_dir / "metrics.jsonl", resume_step=self.step if resumed else None)
        ]
        if self._tensorboard:
            sinks.append(TensorBoardSink(self.out_dir / "tensorboard"))
        if self._wandb_project:
            sinks.append(WandbSink(self._wandb_project, self.out_dir.name, self._run_config))
        return sinks

    def _log_data_metrics(self, sinks: Sequence[MetricsSink], resumed: bool) -> None:
        """:attr:`data_metrics` as the ``data`` row of ``metrics.jsonl`` (step 0, before the
        first training row). A resumed run keeps the row its first start wrote, and writes
        one (at the resume step) only when the figures differ from it (the data changed)."""
        if not self.data_metrics:
            return
        if resumed:
            jsonl = next((sink for sink in sinks if isinstance(sink, JsonlSink)), None)
            before = None if jsonl is None else jsonl.kept_rows.get("data")
            if before is not None and all(
                before.get(key) == value for key, value in self.data_metrics.items()
            ):
                return
        for sink in sinks:
            sink.log(self.step, self.data_metrics, prefix="data")

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was saved yet"
        return f"last checkpoint (its weights are finite): {self.last_checkpoint}"

    def _nonfinite_step(self, problem: str, metrics: dict[str, float]) -> dict[str, float]:
        """A step whose loss or gradient is not finite: skipped (within the budget) or the end
        of the run. The gradients are dropped either way, so nothing of it reaches the weights."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.skipped_steps < self.config.skip_nonfinite_steps:
            self.skipped_steps += 1
            logger.warning(
                "step %d: %s; skipped without an update (%d of train.skip_nonfinite_steps=%d)",
                self.step + 1, problem, self.skipped_steps, self.config.skip_nonfinite_steps,
            )  # fmt: skip
            return metrics | {"skipped_steps": float(self.skipped_steps)}
        skipped = f" after skipping {self.skipped_steps} such step(s)" if self.skipped_steps else ""
        raise TrainingDiverged(
            f"step {self.step + 1}: {problem}; the update was not applied{skipped}; "
            f"{self._last_good()}. Lower train.lr or train.max_grad_norm, or set "
            "train.skip_nonfinite_steps to skip rare bad steps"
        )

    def _train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches."""
        with self.precision():  # an online recipe's loader samples and scores rollouts
            micro_batches = [self.loader.next_batch() for _ in range(self.config.grad_accum)]
        # the step's loss units over every rank: each rank's loss sum is divided by these
        units = int(all_reduce_sums({"units": sum(b.loss_units for b in micro_batches)})["units"])
        # FSDP2 averages the ranks' gradients; each rank's loss is scaled by the rank count so
        # that the average is the gradient of the sum over all ranks' units
        scale = float(self.world)
        self.model.train()
        totals: dict[str, float] = {}
        loss_total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            batch = batch.to(self.device)
            with self.precision():
                loss_sum, metrics = self.loss_fn(self.model, batch)
            loss = loss_sum / max(units, 1)
            if loss.requires_grad:
                (loss * scale).backward()
            elif batch.loss_units > 0:
                raise RuntimeError(
                    f"the loss of a micro-batch of {batch.loss_units} loss units has no gradient"
                )
            # else nothing of it enters the loss (e.g. groups an online algorithm dropped):
            # no backward, and a step of such micro-batches only leaves the gradients None,
            # which the optimiser skips (no update, momentum untouched)
            loss_total += loss.detach()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        tokens = sum(batch.num_tokens for batch in micro_batches)
        totals, loss_value, tokens = self._over_ranks(totals, float(loss_total), tokens)
        if units == 0:
            # nothing entered the loss on any rank: the zero gradients that ranks computed to
            # keep FSDP2's collectives in step (rlhf.online.loss.nothing_to_learn) are dropped,
            # so that the step is skipped as in one process (no update, momentum untouched)
            self.optimizer.zero_grad(set_to_none=True)
        # the norm clipping uses, computed first so that a NaN or infinite gradient is caught
        # before it is scaled into every tensor and applied (a finite loss can hide one)
        grads = [p.grad for p in self.trainable if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        full = getattr(grad_norm, "full_tensor", None)  # FSDP2: the norm over every shard
        if callable(full):
            grad_norm = full()
        lr = float(self.scheduler.get_last_lr()[0])  # a tensor under torchao's optimisers
        # the engine's own figures win over same-named metrics a loss function reports
        metrics = totals | {
            "loss": loss_value,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": float(tokens),
            "loss_units": float(units),
        }
        if not math.isfinite(loss_value):
            return self._nonfinite_step(f"the loss is {loss_value}", metrics)
        if not torch.isfinite(grad_norm):
            named = ((self._names[id(p)], p.grad) for p in self.trainable if p.grad is not None)
            return self._nonfinite_step(
                f"the gradient norm is {float(grad_norm)} (NaN or infinity in the gradient of "
                f"{', '.join(nonfinite_names(named))}) while the loss is {loss_value:.4g}",
                metrics,
            )
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(
                self.trainable, self.config.max_grad_norm, grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    def _over_ranks(
        self, totals: dict[str, float], loss: float, tokens: float
    ) -> tuple[dict[str, float], float, float]:
        """A step's figures over every rank: the loss and token counts summed; the loss
        function's metrics summed (sums and counts: offline losses) or averaged (means over
        each rank's rows: online losses), as ``metrics_over_ranks`` says."""
        if self.world == 1:
            return totals, loss, tokens
        # a rank may lack a metric another has (a micro-batch of which nothing entered the
        # loss reports only the rollout's): every key goes in, with how many ranks gave it
        keys = keys_over_ranks(totals)
        given = {f"__given_{key}": float(key in totals) for key in keys}
        values = {key: totals.get(key, 0.0) for key in keys}
        summed = all_reduce_sums({**values, **given, "__loss": loss, "__tokens": tokens})
        loss, tokens = summed.pop("__loss"), summed.pop("__tokens")
        counts = {key: summed.pop(f"__given_{key}") for key in keys}
        if self.metrics_over_ranks == "mean":  # over the ranks that gave it
            summed = {key: value / max(counts[key], 1.0) for key, value in summed.items()}
        return summed, loss, tokens

    def evaluation(self) -> dict[str, float]:
        """The evaluation function's metrics of the model as it is now (eval mode, no
        gradients, the training precision); nothing logged. {} without one."""
        if self.evaluate is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self.precision():
            return dict(self.evaluate(self.model))

    def _run_eval(self, sinks: Sequence[MetricsSink]) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        metrics = self.evaluation()
        for sink in sinks:
            sink.log(self.step, metrics, prefix="eval")
        logger.info("step %d eval: %s", self.step, _format(metrics))
        return metrics

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """The first Ctrl-C asks the loop to stop at the next point it can resume from (after
        the current step; an online recipe: after the current rollout's steps) and save a
        checkpoint there; a second one stops at once. Only the main thread receives signals."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_interrupt(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt  # the second Ctrl-C: at once, without a checkpoint
            self._stop_requested = True
            logger.warning(
                "Ctrl-C: stopping after step %d at the earliest, with a checkpoint; press "
                "Ctrl-C again to stop at once without one",
                self.step + 1,
            )

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    def _diverged(self, error: NonFiniteError, step: int) -> TrainingDiverged:
        """A model output found non-finite (a rollout sampled from the policy in ``step``, the
        evaluation after it) as the run's divergence, with the last checkpoint."""
        return TrainingDiverged(f"step {step}: {error}; {self._last_good()}")

    def train(self, resume_from: Path | None = None) -> TrainResult:
        """Run until ``total_steps``; resume from a checkpoint folder when given.

        Raises :class:`TrainingDiverged` when the run diverges and :class:`TrainingInterrupted`
        after the checkpoint that the first Ctrl-C asks for."""
        if resume_from is not None:
            self.resume(resume_from)
        else:
            seed_everything(self.config.seed)
        sinks = self._sinks(resumed=resume_from is not None)
        self._log_data_metrics(sinks, resumed=resume_from is not None)
        history: list[dict[str, float]] = []
        bar = _progress_bar(self.total_steps, self.step, enabled=self._progress)
        start = time.perf_counter()
        window_tokens, window_start = 0.0, start
        unlogged: dict[str, float] = {}
        try:
            with self._interruptible():
                while self.step < self.total_steps:
                    try:
                        metrics = self._train_step()
                    except NonFiniteError as error:
                        raise self._diverged(error, self.step + 1) from None
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
                        # the first step of each rollout) reaches the next logged row, latest
                        # value
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
                    every = self.config.eval_every
                    if final or (every and self.step % every == 0):
                        try:
                            evaluation = self._run_eval(sinks)
                        except NonFiniteError as error:  # evaluating the step just done
                            raise self._diverged(error, self.step) from None
                        metrics.update({f"eval_{k}": v for k, v in evaluation.items()})
                    every = self.config.save_every
                    saved = final or bool(every and self.step % every == 0)
                    if saved:
                        self.save_checkpoint(final=final)
                    if self._stop_requested and not final and self.loader.can_checkpoint:
                        checkpoint = self.last_checkpoint if saved else self.save_checkpoint()
                        assert checkpoint is not None
                        raise TrainingInterrupted(self.step, checkpoint)
        finally:
            bar.close()
            close_sinks(sinks, SINK_CLOSE_TIMEOUT_S)
        return TrainResult(self.step, self.last_checkpoint, history)


def _held_by_export(folder: Path, params: Mapping[str, torch.Tensor]) -> set[str]:
    """Names of ``params`` that the safetensors files in ``folder`` hold under the same name,
    dtype, shape and bytes (an exported full model holds them all; a merged LoRA model or a
    policy exported without its critic holds none of the trained tensors)."""
    from safetensors import safe_open

    held: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():  # noqa: SIM118 (a reader, not a dict)
                param = params.get(name)
                if param is None or name in held:
                    continue
                tensor = reader.get_tensor(name)
                value = param.detach()
                if (
                    tensor.dtype == value.dtype
                    and tensor.shape == value.shape
                    and torch.equal(tensor, value.cpu())
                ):
                    held.add(name)
    return held


def _read_exported(folder: Path, names: Sequence[str], device: torch.device) -> dict[str, Any]:
    """The tensors ``names`` from the safetensors files in ``folder`` (a KeyError names the
    first one missing)."""
    from safetensors import safe_open

    wanted, found = set(names), {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt", device=str(device)) as reader:
            for name in wanted.intersection(reader.keys()):
                found[name] = reader.get_tensor(name)
    missing = sorted(wanted - found.keys())
    if missing:
        raise KeyError(f"{len(missing)} trainable weight(s) missing, e.g. {missing[0]}")
    return found


def _format(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in metrics.items())


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
