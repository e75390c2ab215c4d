"""Pieces every recipe composes: model and data config sections, output folders, loaders."""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import torch
from pydantic import Field, field_validator, model_validator

from rlhf.config import ConfigError, StrictModel, config_changes, config_text, read_yaml
from rlhf.data.records import Record, Text
from rlhf.data.tokenize import (
    TokenizedExample,
    TooLongError,
    Truncation,
    TruncationReport,
    tokenize_record,
)
from rlhf.distributed.config import DistributedConfig
from rlhf.engine.trainer import RUN_CONFIG_FILE, latest_checkpoint
from rlhf.sim.builtin import is_builtin, load_builtin

if TYPE_CHECKING:
    from rlhf.models.reference import ReferenceModel

logger = logging.getLogger("rlhf")

Item = TypeVar("Item")


class TinyModelSpec(StrictModel):
    """A fresh Llama-architecture model with a byte-level BPE tokenizer trained on the data."""

    vocab_size: int = Field(2000, ge=300, description="Tokenizer vocabulary size.")
    hidden_size: int = Field(256, ge=8, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(688, ge=8, description="MLP width.")
    max_position_embeddings: int = Field(
        1024, ge=16, description="Longest sequence (data.max_length must fit in it)."
    )


class LoraConfig(StrictModel):
    r: int = Field(8, ge=1, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear'."
    )


class ModelConfig(StrictModel):
    """Which model to train. Exactly one of `path` and `tiny`."""

    path: str | None = Field(
        None, description="Hugging Face hub name or local folder of a causal LM."
    )
    tiny: TinyModelSpec | None = Field(
        None, description="Build a tiny model from scratch instead (tokenizer trained on the data)."
    )
    gguf_file: str | None = Field(None, description="Load weights from this GGUF file in `path`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights' dtype (train in float32 or bfloat16)."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        "sdpa", description="Attention kernel."
    )
    lora: LoraConfig | None = Field(None, description="Train LoRA adapters instead of all weights.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("set exactly one of model.path and model.tiny")
        return self


# the dtypes a frozen reference may be held in (reference.dtype of dpo, kto and the online
# recipes)
ReferenceDtype = Literal["float32", "bfloat16", "float16"]


def reference_dtype_field() -> Any:
    """``reference.dtype``: one description for every recipe that holds a reference."""
    return Field(
        None,
        description="Weights' dtype of a reference held as a model of its own (reference.path, "
        "or the frozen copy of the initial policy kept for per-step log-probs or the sampled "
        "KL); null: model.dtype. bfloat16 halves its memory (≈ 270 MB instead of 540 for a "
        "135M model); its log-probs are still accumulated in float32, and differ from the "
        "float32 reference's by bf16 rounding (≈ 1e-2 per token). No effect where the reference "
        "is the policy itself (LoRA's disabled adapter; DPO's default precomputed pass). On "
        "CPUs without bf16 units (AVX512-BF16 / AMX) its forward passes are slower.",
    )


class DataConfig(StrictModel):
    train: str = Field(
        description="Training data: a .jsonl/.json/.parquet/.csv file, a datasets folder, a hub "
        "dataset name, or builtin:NAME."
    )
    eval: str | None = Field(
        None, description="Held-out data (default: split off the training data)."
    )
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="Share of the training data held out when `eval` is not set."
    )
    eval_max_examples: int = Field(256, ge=1, description="Cap on the held-out examples evaluated.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map our field names to the file's columns, e.g. {prompt: question}.",
    )
    skip_bad_rows: bool = Field(
        False, description="Skip (and count) invalid rows instead of stopping."
    )
    max_length: int = Field(1024, ge=2, description="Longest training sequence in tokens.")
    truncation: Truncation = Field(
        "truncate", description="Over-long examples: 'truncate' (prompt start first) or 'drop'."
    )
    packing: bool = Field(
        False, description="Pack several examples per row, no attention across them."
    )


class AnnotatorsConfig(StrictModel):
    """The simulated annotators of the embedded world (rlhf.sim.annotators)."""

    count: int = Field(5, ge=1, description="Annotators in the pool; each label is one's.")
    temperature: float = Field(
        0.05, gt=0, description="Bradley-Terry temperature on the gold reward (noise)."
    )
    careless: float = Field(0.1, ge=0, le=1, description="Share of labels that are coin flips.")
    bias: float = Field(
        0.0, ge=0, description="Spread of the annotators' personal length biases (0: none)."
    )
    nontransitive: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Strength λ of the world's rock-paper-scissors taste in their pairwise "
        "choices, in gold units (0: none; docs/preference-model.md).",
    )

    def pool(self, seed: int) -> Any:
        """The :class:`rlhf.sim.annotators.AnnotatorPool` of these settings, seeded."""
        from rlhf.sim.annotators import AnnotatorPool

        return AnnotatorPool.build(
            self.count,
            self.temperature,
            careless=self.careless,
            bias=self.bias,
            seed=seed,
            nontransitive=self.nontransitive,
        )


class LabellerConfig(StrictModel):
    """Who orders the two responses of a pair."""

    kind: Literal["reward", "annotators"] = Field(
        "reward",
        description="reward: the run's reward scores the K samples, best vs worst make the "
        "pair; annotators: the embedded world's simulated people compare (K = 2) or rank them.",
    )
    annotators: AnnotatorsConfig = Field(
        default_factory=AnnotatorsConfig, description="The simulated annotators (kind annotators)."
    )

    def pairs(
        self,
        prompts: Sequence[Text],
        responses: Sequence[str],
        scores: torch.Tensor,
        k: int,
        seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[P] chosen and rejected rows of each prompt's K ``responses`` (prompt-major):
        best and worst by ``scores`` [P·K], or as the annotators (seeded by ``seed``) order
        them; chosen == rejected where a group gives no preference."""
        from rlhf.online.pairs import annotated_pairs, best_and_worst

        if self.kind == "reward":
            return best_and_worst(scores, k)
        return annotated_pairs(prompts, responses, k, self.annotators.pool(seed))


class ResumeConfig(StrictModel):
    allow_changes: bool = Field(
        False,
        description="On --resume, continue even when keys that change what the run computes "
        "(model, data, batch size, seed, schedule, ...) differ from the config saved with its "
        "checkpoint; the run is then no longer the one that was checkpointed.",
    )


class RecipeConfig(StrictModel):
    """Fields shared by every recipe's config."""

    out: str = Field("runs/run", description="Output folder (checkpoints, metrics, final model).")
    overwrite: bool = Field(
        False, description="Allow starting afresh in a folder that has checkpoints."
    )
    tensorboard: bool = Field(True, description="Write TensorBoard logs under <out>/tensorboard.")
    wandb_project: str | None = Field(None, description="Log to this W&B project (needs wandb).")
    progress: bool = Field(True, description="Show a progress bar.")
    resume: ResumeConfig = Field(default_factory=ResumeConfig, description="--resume checks.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Ray workers and FSDP2 data parallelism (default: this process alone).",
    )

    # whether the recipe samples from the policy it trains (OnlineConfig: True), which is what
    # distributed.rollout_workers serve
    samples_from_policy: ClassVar[bool] = False

    @model_validator(mode="after")
    def _distributed_fits_the_recipe(self) -> RecipeConfig:
        workers = self.distributed
        for key in ("rollout_workers", "reward_workers", "reference_workers"):
            if getattr(workers, key) and not self.samples_from_policy:
                raise ValueError(
                    f"distributed.{key}: this recipe does not sample from the policy it "
                    "trains (only the online recipes do); leave it at 0"
                )
        if workers.train_workers > 1 and self.samples_from_policy and not workers.rollout_workers:
            raise ValueError(
                "distributed.train_workers > 1 in an online recipe: sampling is not sharded over "
                "the training ranks; set distributed.rollout_workers ≥ 1 to sample there"
            )
        model = getattr(self, "model", None)
        if workers.train_workers > 1 and getattr(model, "lora", None) is not None:
            raise ValueError(
                "distributed.train_workers > 1 with model.lora: LoRA adapters are not sharded "
                "with FSDP2 yet; train them with one training worker"
            )
        return self

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, out: str) -> str:
        if Path(out).exists() and not Path(out).is_dir():
            raise ValueError(f"{out!r} is an existing file; out names the run's output folder")
        return out


@dataclass
class RunResult:
    out_dir: Path
    final_step: int
    model_dir: Path
    metrics: list[dict[str, float]] = field(default_factory=list)


def prepare_out_dir(config: RecipeConfig, resume: bool) -> tuple[Path, Path | None]:
    """Create the output folder, refuse to clobber a previous run, find the checkpoint to resume."""
    out = Path(config.out)
    checkpoint = latest_checkpoint(out)
    if resume and checkpoint is None:
        raise ValueError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    if not resume and checkpoint is not None and not config.overwrite:
        raise ValueError(
            f"{out} already holds a run (checkpoint {checkpoint.name}); pass --resume to continue "
            "it, overwrite=true to start again there, or choose another out="
        )
    out.mkdir(parents=True, exist_ok=True)
    record_config(config, out, checkpoint if resume else None)
    return out, checkpoint if resume else None


# Keys whose change cannot alter what a resumed run computes: where and how often it logs,
# evaluates and saves. Every other key (model, data, batch size, seed, schedule, device, ...)
# can, and --resume refuses a change to one unless resume.allow_changes is set.
RESUME_HARMLESS_KEYS = (
    "out",
    "overwrite",
    "tensorboard",
    "wandb_project",
    "progress",
    "resume",
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.save_optimizer",
    # recomputes the same activations: memory and time change, not the numbers
    "train.gradient_checkpointing",
    # the same global batch split over more or fewer ranks, placed anywhere: the same losses
    "distributed.train_workers",
    "distributed.address",
    "distributed.cpus_per_worker",
    "distributed.gpus_per_worker",
    "distributed.placement",
    "distributed.backend",
    "distributed.start_timeout_s",
)
# the run's length: harmless too under a schedule that does not depend on it (constant), so a
# finished run can be extended; under warm-up + decay it changes the learning rate of every step
RUN_LENGTH_KEYS = ("train.max_steps", "train.epochs")


def _harmless_on_resume(key: str, config: RecipeConfig) -> bool:
    if any(key == k or key.startswith(f"{k}.") for k in RESUME_HARMLESS_KEYS):
        return True
    train = getattr(config, "train", None)
    return key in RUN_LENGTH_KEYS and getattr(train, "schedule", None) == "constant"


def _show(value: Any) -> str:
    text = "(unset)" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def record_config(config: RecipeConfig, out: Path, resuming: Path | bool | None) -> None:
    """Write the resolved config to ``<out>/config.yaml`` (a different one already there is
    kept as ``config.N.yaml``). When ``resuming`` (the checkpoint, or True for a run that
    resumes without one: RAFT), first compare it with the config the run had: the one saved
    in the checkpoint, else ``<out>/config.yaml``. A :class:`ConfigError` lists the keys that
    would make the resumed run another run; harmless changes pass with a note."""
    saved = out / "config.yaml"
    previous = None
    if isinstance(resuming, Path) and (resuming / RUN_CONFIG_FILE).is_file():
        previous = resuming / RUN_CONFIG_FILE
    elif resuming and saved.is_file():
        previous = saved
    if previous is not None:
        before = read_yaml(previous)  # JSON is YAML
        # fill the defaults of keys an older version did not write; a config that no longer
        # validates is compared as written (a key it lacks or no longer has shows as a change)
        with contextlib.suppress(ValueError):
            before = type(config).model_validate(before).model_dump(mode="json")
        changes = [
            change
            for change in config_changes(before, config.model_dump(mode="json"))
            if not change[0].startswith("resume.")
        ]
        harmless = [change for change in changes if _harmless_on_resume(change[0], config)]
        breaking = [change for change in changes if change not in harmless]
        listed = "\n".join(f"  {key}: {_show(old)} -> {_show(new)}" for key, old, new in breaking)
        if breaking and not config.resume.allow_changes:
            raise ConfigError(
                f"--resume: the config differs from the run's ({previous}) in keys that change "
                f"what it computes:\n{listed}\nUndo them, start a new run in "
                "another out=, or set resume.allow_changes=true to continue anyway."
            )
        if breaking:
            logger.warning(
                "--resume with changes (resume.allow_changes=true); the run is no longer the "
                "one that was checkpointed:\n%s",
                listed,
            )
        for key, old, new in harmless:
            logger.info(
                "--resume: %s %s -> %s (no effect on training)", key, _show(old), _show(new)
            )
    from rlhf.models.parallel import is_main_process

    if not is_main_process():  # every rank checks; rank 0 alone writes (no race on the rename)
        return
    text = config_text(config)
    if saved.is_file() and saved.read_text(encoding="utf-8", errors="replace") != text:
        number = next(n for n in itertools.count(1) if not (out / f"config.{n}.yaml").exists())
        saved.replace(out / f"config.{number}.yaml")
    saved.write_text(text, encoding="utf-8")


def load_records(source: str, data: DataConfig) -> list[Record]:
    if is_builtin(source):
        return load_builtin(source)
    from rlhf.data.readers import read_records

    result = read_records(source, columns=data.columns or None, skip_bad=data.skip_bad_rows)
    if result.skipped:
        logger.warning(
            "%s: skipped %d bad rows %s", source, sum(result.skipped.values()), dict(result.skipped)
        )
    return result.records


def split_train_eval(
    records: Sequence[Record], data: DataConfig, seed: int
) -> tuple[list[Record], list[Record]]:
    """Training records and held-out records (the `eval` file, or a seeded split)."""
    if data.eval is not None:
        return list(records), load_records(data.eval, data)[: data.eval_max_examples]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[: int(len(records) * data.eval_fraction)])
    train = [record for index, record in enumerate(records) if index not in held]
    held_out = [records[index] for index in sorted(held)]
    return train, held_out[: data.eval_max_examples]


def round_prompts(items: Sequence[Item], count: int, offset: int, seed: int) -> list[Item]:
    """``count`` items from position ``offset`` of a seeded shuffle of ``items``, wrapping
    around: round r of a run that reads ``count`` prompts a round takes ``offset = r * count``,
    so every prompt is read once before any is read twice (RAFT's rounds, the online recipes'
    iterations, their fixed evaluation set)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[order[(offset + i) % len(order)]] for i in range(count)]


def tokenize_records(
    tokenizer: Any,
    records: Iterable[Record],
    data: DataConfig,
    convert: Callable[[Record], Iterable[Record]],
    report: TruncationReport | None = None,
) -> list[TokenizedExample]:
    """Tokenise records for next-token training, counting (not hiding) what is dropped and
    truncated in ``report`` (the caller logs it with :func:`report_truncation`); without one,
    drops are warned about here."""
    examples = []
    own_report = report is None
    if report is None:
        report = TruncationReport(data.max_length)
    for record in records:
        for item in convert(record):
            try:
                example = tokenize_record(tokenizer, item, data.max_length, data.truncation)
            except TooLongError:
                report.drop("longer than max_length")
                continue
            if example.num_loss_tokens == 0:
                report.drop("no target tokens left")
                continue
            report.add(example.cut)
            examples.append(example)
    if own_report and report.dropped:
        logger.warning(
            "dropped %d examples: %s", sum(report.dropped.values()), dict(report.dropped)
        )
    return examples


def report_truncation(reports: dict[str, TruncationReport]) -> dict[str, float]:
    """Log one line per split (``train: 54 of 200 examples truncated to data.max_length=512
    (prompt start cut; median 37 tokens, max 410 cut); 0 dropped``; a warning when rows were
    truncated or dropped) and return the counts as ``data_<split>_*`` metrics for the run's
    ``metrics.jsonl`` (:class:`~rlhf.engine.trainer.Trainer`'s ``data_metrics``)."""
    metrics: dict[str, float] = {}
    for split, report in reports.items():
        if not report.rows:  # no such split (no held-out data)
            continue
        level = logging.WARNING if report.truncated or report.dropped else logging.INFO
        logger.log(level, "%s", report.log_line(split))
        metrics |= report.metrics(split)
    return metrics


# A tokenizer learns its merges from word frequencies, which a text's first few thousand
# characters sample as well as the whole; one 50 MB row otherwise costs about 100 MB of the BPE
# trainer's memory per MB (benchmarks/bench_long_rows.py).
TOKENIZER_TEXT_CHARS = 10_000


def training_texts(records: Iterable[Record]) -> list[str]:
    """Every string inside records (the first :data:`TOKENIZER_TEXT_CHARS` characters of
    each), to train a tiny model's tokenizer on."""
    texts = []
    for record in records:
        for value in record.to_dict().values():
            if isinstance(value, str):
                texts.append(value[:TOKENIZER_TEXT_CHARS])
            elif isinstance(value, list):
                texts.extend(
                    (item["content"] if isinstance(item, dict) else str(item))[
                        :TOKENIZER_TEXT_CHARS
                    ]
                    for item in value
                )
    return texts


def model_source(
    model_config: ModelConfig, out: Path, texts: Callable[[], list[str]], seed: int
) -> str:
    """Where the configured model loads from: ``model.path``, or a tiny model built (tokenizer
    trained on ``texts()``) and saved to ``<out>/init``."""
    if model_config.tiny is None:
        assert model_config.path is not None  # ModelConfig holds exactly one of the two
        return model_config.path
    from rlhf.models.parallel import barrier
    from rlhf.models.tiny import make_tiny_model

    spec = model_config.tiny
    # every data-parallel rank builds the same model (the same seed); rank 0 writes it, and the
    # others load it once it is there
    path = str(
        make_tiny_model(
            out / "init",
            texts(),
            vocab_size=spec.vocab_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            num_heads=spec.num_heads,
            intermediate_size=spec.intermediate_size,
            max_position_embeddings=spec.max_position_embeddings,
            seed=seed,
        )
    )
    barrier()
    return path


def check_fits_positions(model: torch.nn.Module, length: int, key: str = "data.max_length") -> None:
    """A :class:`ConfigError` when sequences of ``length`` tokens (the config's ``key``) would
    run past the model's position table: transformers only warns, and the positions beyond it
    are garbage (or an index error)."""
    from rlhf.models.forward import position_limit

    positions = position_limit(model)
    if positions is not None and length > positions:
        raise ConfigError(
            f"{key}={length} is longer than the model's {positions} positions "
            f"(max_position_embeddings); set {key} to {positions} or less"
        )


def build_model_and_tokenizer(
    model_config: ModelConfig, out: Path, texts: Callable[[], list[str]], seed: int
) -> tuple[torch.nn.Module, Any]:
    """Load the configured model and tokenizer (or build a tiny one) ready for training."""
    from rlhf.models.load import LoraSpec, load_model, load_tokenizer

    path = model_source(model_config, out, texts, seed)
    tokenizer = load_tokenizer(path, gguf_file=model_config.gguf_file)
    lora = None
    if model_config.lora is not None:
        lora = LoraSpec(**model_config.lora.model_dump())
    model = load_model(
        path,
        dtype=model_config.dtype,
        attn_implementation=model_config.attn_implementation,
        gguf_file=model_config.gguf_file,
        lora=lora,
        tokenizer=tokenizer,
    )
    return model, tokenizer


class ReferenceSettings(Protocol):
    """Where π_ref comes from: ``reference.path`` and ``reference.dtype``."""

    @property
    def path(self) -> str | None: ...
    @property
    def dtype(self) -> str | None: ...


def kept_reference(
    reference: ReferenceSettings, model_config: ModelConfig, model: torch.nn.Module, tokenizer: Any
) -> ReferenceModel:
    """π_ref kept for the whole run (reference computed in every step, the online recipes'
    KL, the sampled KL): :func:`rlhf.models.reference.live_reference` with the config's keys
    (``reference.path``, ``reference.dtype``, and the policy's ``model.dtype`` and attention)."""
    from rlhf.models.reference import live_reference

    return live_reference(
        model,
        tokenizer,
        path=reference.path,
        dtype=reference.dtype,
        model_dtype=model_config.dtype,
        attn_implementation=model_config.attn_implementation,
    )
