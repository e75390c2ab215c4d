"""Shared pieces of the benchmarks: fresh-process runs, peak memory, FLOP/s, the result line.

Every benchmark compares one of our recipes with its TRL counterpart on identical work. Each
side runs in its own Python child (:func:`run_in_child`) so that its peak resident memory is its
own and neither inherits the other's imports, caches or allocator state. The child reports
``ru_maxrss`` (the peak RSS of that process over its whole life, imports included) next to the
function's result.

The benchmark's last stdout line is one JSON object (:func:`result_line`)::

    {"benchmark": "sft", "metric": "tokens_per_s", "ours": 9000.0, "trl": 7000.0,
     "ratio": 1.29, "ours_peak_mb": 700.0, "trl_peak_mb": 900.0, "mfu": 0.12}

``trl``, ``ratio`` and ``trl_peak_mb`` are null when TRL is not installed (or with
``--skip-trl``). ``mfu`` is the model FLOP utilisation of our side: model FLOP/s (6·N per
trained token, 2·N per forward-only token, N = non-embedding parameters, as in Kaplan et al.
2020, "Scaling Laws for Neural Language Models", §2.1) over the FLOP/s of a large fp32 matrix
product timed in the same run (:func:`matmul_flops`): the best this machine does on dense
work, not a datasheet figure.

This file also runs as the child entry point: ``python _harness.py child MODULE FUNCTION`` reads
the keyword arguments as JSON on stdin, calls ``MODULE.FUNCTION(**kwargs)`` and prints its JSON
result after :data:`RESULT_MARKER`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import inspect
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULT_MARKER = "@@bench-result@@ "
RESULT_KEYS = (
    "benchmark",
    "metric",
    "ours",
    "trl",
    "ratio",
    "ours_peak_mb",
    "trl_peak_mb",
    "mfu",
)
# 2·N per token for a forward pass, 3x that for forward + backward (Kaplan et al. 2020, §2.1).
TRAIN_FLOPS_PER_PARAM_TOKEN = 6
FORWARD_FLOPS_PER_PARAM_TOKEN = 2
# The children must never reach the network (no hub downloads, no telemetry) and must not
# compete for the cores with tokenizer threads.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",
}


class BenchmarkError(RuntimeError):
    """A benchmark child failed; the message carries the tail of its stderr."""


# ---------------------------------------------------------------- processes and memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``getrusage(RUSAGE_SELF)``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_description() -> str:
    """The CPU this ran on, and the flags that decide its speed (a ratio or a figure is only
    comparable with one from the same CPU): model name, cores, AVX2 / AVX-512 / AVX512-BF16 /
    AMX."""
    model, flags = "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    shown = " ".join(flag for flag in wanted if flag in flags) or "none of " + " ".join(wanted)
    return f"cpu: {model}, {os.cpu_count()} cores; flags: {shown}"


def run_in_child(
    function: Callable[..., Mapping[str, Any]],
    /,
    timeout: float | None = None,
    python: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ``function(**kwargs)`` in a fresh Python process and return its JSON result.

    ``function`` must be a module-level function of a file in ``benchmarks/`` (or any importable
    module) that returns a JSON-serialisable mapping; ``kwargs`` must be JSON-serialisable. The
    result gains ``peak_rss_mb``: the child's peak RSS over its whole life. ``python`` is the
    interpreter to run it with (default: this one), e.g. another virtual environment's, for a
    library version that cannot share ours; the function's module must then import only the
    standard library at its top.
    """
    source = inspect.getsourcefile(function)
    if source is None or function.__qualname__ != function.__name__:
        raise ValueError(f"{function!r} is not a module-level function of a source file")
    module_dir, module_name = str(Path(source).resolve().parent), Path(source).stem
    env = os.environ | CHILD_ENV
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [module_dir, env.get("PYTHONPATH")]))
    command = [
        python or sys.executable,
        str(Path(__file__).resolve()),
        "child",
        module_name,
        function.__name__,
    ]
    completed = subprocess.run(
        command,
        input=json.dumps(kwargs),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    result = parse_child_output(completed.stdout)
    if completed.returncode != 0 or result is None:
        tail = "\n".join(completed.stderr.strip().splitlines()[-40:])
        raise BenchmarkError(
            f"{module_name}.{function.__name__} failed in its child process "
            f"(exit {completed.returncode}):\n{tail}"
        )
    return result


def parse_child_output(stdout: str) -> dict[str, Any] | None:
    """The result a child printed (the last marked line), or None when it printed none.

    Libraries may print to stdout too, so only the line after :data:`RESULT_MARKER` counts.
    """
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return None


def _child_main(module_name: str, function_name: str) -> None:
    kwargs = json.loads(sys.stdin.read() or "{}")
    function = getattr(importlib.import_module(module_name), function_name)
    result = dict(function(**kwargs))
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.flush()
    print(RESULT_MARKER + json.dumps(result), flush=True)


def trl_available() -> bool:
    """Whether TRL is importable (it is only installed with the ``bench`` extra)."""
    return importlib.util.find_spec("trl") is not None


# ---------------------------------------------------------------- FLOP/s and throughput


def matmul_flops(
    size: int = 2048, seconds: float = 1.5, windows: int = 5, warmup: int = 3
) -> dict[str, float]:
    """FLOP/s of repeated fp32 ``size x size`` matrix products on CPU: the best of ``windows``
    timing windows sharing about ``seconds`` in all.

    Each product costs ``2·size³`` FLOPs. The best window, not the mean, because a disturbance
    (another process, a frequency dip) can only slow a window down. The result is this
    machine's practical dense-fp32 ceiling, the denominator of :func:`model_flops_utilization`.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(windows):
        products, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b, out=out)
            products += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / windows:
                break
        best = max(best, 2 * size**3 * products / elapsed)
    return {"flops": best, "size": size, "threads": torch.get_num_threads()}


def measured_step_seconds(
    step_end_times: Sequence[float], warmup: int, start_time: float = 0.0
) -> list[float]:
    """Durations of the steps after ``warmup``.

    ``step_end_times[i]`` is when step ``i + 1`` ended (seconds on one clock); ``start_time`` is
    when the first step began on that clock, needed only when ``warmup`` is 0. A step runs from
    the end of the one before to its own end, so it covers data loading, forward, backward,
    clipping and the optimiser update.
    """
    if warmup < 0 or len(step_end_times) - warmup < 1:
        raise ValueError(
            f"{len(step_end_times)} steps leave none to measure after {warmup} warm-up"
        )
    begin = step_end_times[warmup - 1] if warmup > 0 else start_time
    ends = list(step_end_times[warmup:])
    durations = [end - start for start, end in zip([begin, *ends[:-1]], ends, strict=True)]
    if any(duration < 0 for duration in durations) or ends[-1] <= begin:
        raise ValueError(f"step end times go backwards: {list(step_end_times)}")
    return durations


def tokens_per_second(
    step_end_times: Sequence[float], tokens_per_step: float, warmup: int, start_time: float = 0.0
) -> float:
    """Throughput over the steps after ``warmup`` (see :func:`measured_step_seconds`): the
    tokens of those steps over the time from the end of the last warm-up step to the end of
    the last step."""
    durations = measured_step_seconds(step_end_times, warmup, start_time)
    return tokens_per_step * len(durations) / sum(durations)


def model_flops_utilization(
    tokens_per_s: float,
    non_embedding_params: int,
    peak_flops: float,
    flops_per_param_token: float = TRAIN_FLOPS_PER_PARAM_TOKEN,
) -> float:
    """Model FLOP/s over the machine's peak: ``flops_per_param_token · N · tokens/s / peak``.

    Use :data:`TRAIN_FLOPS_PER_PARAM_TOKEN` (6) for tokens that go forward and backward,
    :data:`FORWARD_FLOPS_PER_PARAM_TOKEN` (2) for forward-only tokens (generation, scoring).
    Attention's ``T²`` term and the output layer are left out, as in the 6·N rule.
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_param_token * non_embedding_params * tokens_per_s / peak_flops


def engine_train_settings(
    *, batch_size: int, lr: float, seed: int, max_grad_norm: float, **overrides: Any
) -> dict[str, Any]:
    """Our Trainer's ``train`` section as every benchmark runs it: fp32 on the CPU, a constant
    ``lr`` with no warm-up or weight decay, clipping at ``max_grad_norm``, a metrics row every
    step (``engine_step_metrics`` reads its clock) and no evaluation or checkpoints, the same
    as TRL's side is configured. ``overrides`` adds or replaces keys (``max_steps``,
    ``compile``, ...)."""
    return {
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_steps": 0,
        "seed": seed,
        "max_grad_norm": max_grad_norm,
        "log_every": 1,
        "eval_every": 0,
        "save_every": 0,
        "device": "cpu",
        "mixed_precision": "no",
    } | overrides


def trl_train_settings(
    lr: float, max_grad_norm: float, seed: int, *, bf16: bool = False, schedule: str = "constant"
) -> dict[str, Any]:
    """The keys of TRL's ``TrainingArguments`` every benchmark sets alike, matching
    :func:`engine_train_settings`: ``lr`` with no warm-up or weight decay, fused AdamW (ours is
    ``torch.optim.AdamW(fused=True)`` on the CPU), clipping at ``max_grad_norm``, seeded; TRL
    defaults to bf16 mixed precision and gradient checkpointing, so fp32 (unless ``bf16``, a
    variant's own precision) and no checkpointing; no workers, logging, saving, evaluation
    or progress bar. Each benchmark adds its trainer's own keys."""
    return {
        "learning_rate": lr,
        "lr_scheduler_type": schedule,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "optim": "adamw_torch_fused",
        "max_grad_norm": max_grad_norm,
        "seed": seed,
        "data_seed": seed,
        "bf16": bf16,
        "fp16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "report_to": [],
        "logging_strategy": "no",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
    }


def check_trl_settings(trainer: Any, bf16: bool = False) -> None:
    """After TRL trained: it ran in the precision :func:`trl_train_settings` asked for (fp32
    unless ``bf16``) and without gradient checkpointing, which TRL's configs default to; a
    RuntimeError otherwise (the comparison would not be of the same work)."""
    if trainer.args.bf16 != bf16 or trainer.model.is_gradient_checkpointing:
        raise RuntimeError(
            f"TRL must train with bf16={bf16} and without gradient checkpointing here"
        )


def engine_step_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The training rows of our engine's ``metrics.jsonl`` (one per logged optimiser step, with
    ``log_every=1`` every step), in step order; each has ``time``, seconds since the training
    loop began when the step ended."""
    path = Path(out_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sorted(
        (r for r in rows if r.get("split", "train") == "train" and "time" in r),
        key=lambda r: r["step"],
    )


@contextlib.contextmanager
def timed_calls(owner: Any, name: str) -> Iterator[list[float]]:
    """Time every call of ``owner.name`` while the block runs.

    ``owner`` is a module (for one of its functions) or a class (for a plain method); the
    attribute is replaced by a wrapper that appends each call's wall seconds to the list this
    yields, and put back afterwards. Patch the name where the caller looks it up: a function
    imported with ``from module import f`` must be patched in the importing module. Used to
    time a phase inside a library's run (a reference-log-prob precompute) without copying
    the run.
    """
    original = inspect.getattr_static(owner, name)
    function = getattr(owner, name)
    durations: list[float] = []

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(owner, name, timed)
    try:
        yield durations
    finally:
        setattr(owner, name, original)


def trl_step_clock() -> Any:
    """A ``transformers.TrainerCallback`` that records, at the end of every optimiser step, the
    seconds since training began (``.ends``; ``.start`` is the ``perf_counter`` of
    ``on_train_begin``). Imports transformers, so call it only in a TRL child."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter() - self.start)

    return StepClock()


# ---------------------------------------------------------------- the result line and table


def result_line(
    benchmark: str,
    metric: str,
    ours: float,
    trl: float | None,
    ours_peak_mb: float,
    trl_peak_mb: float | None,
    mfu: float,
) -> dict[str, Any]:
    """The benchmark's result as the JSON contract orders it, ``ratio = ours / trl``."""
    ratio = ours / trl if trl else None
    return {
        "benchmark": benchmark,
        "metric": metric,
        "ours": round(ours, 2),
        "trl": None if trl is None else round(trl, 2),
        "ratio": None if ratio is None else round(ratio, 4),
        "ours_peak_mb": round(ours_peak_mb, 1),
        "trl_peak_mb": None if trl_peak_mb is None else round(trl_peak_mb, 1),
        "mfu": round(mfu, 4),
    }


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left/right aligned text table (numbers right-aligned)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            digits = 4 if abs(value) < 1 else 3 if abs(value) < 100 else 1
            return f"{value:,.{digits}f}"
        return str(value)

    cells = [[cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line([str(h) for h in header]), rule, *(line(row) for row in cells)])


def print_result(result: Mapping[str, Any], extra_keys: Sequence[str] = ()) -> None:
    """Print the result as one JSON line; benchmarks call this last.

    The line holds the contract's keys (:data:`RESULT_KEYS`) in order, then ``extra_keys``
    (a benchmark's own additions, e.g. ``accuracy``) when the result has them.
    """
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise ValueError(f"result line is missing {missing}")
    keys = [*RESULT_KEYS, *(key for key in extra_keys if key in result and key not in RESULT_KEYS)]
    print(json.dumps({key: result[key] for key in keys}), flush=True)


def common_arguments(
    description: str, *, steps: int = 30, warmup: int = 5
) -> argparse.ArgumentParser:
    """The flags every benchmark takes: --steps, --warmup, --skip-trl, --json-only."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--steps", type=int, default=steps, help="measured steps (default %(default)s)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=warmup,
        help="untimed warm-up steps first (default %(default)s)",
    )
    parser.add_argument("--skip-trl", action="store_true", help="run our side only")
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON result line on stdout"
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip the compiled runs (each side then runs eager only)",
    )
    return parser


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    """A comma-separated command-line list; with ``allowed``, an argparse error naming any
    item not in it."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if allowed is not None and item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; expected some of {allowed}")
    return items


# the quickstart's model (presets/pipeline_quickstart.yaml): a 2-layer Llama the experiments
# pretrain and fine-tune from scratch
TINY = {
    "vocab_size": 512,
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 344,
    "max_position_embeddings": 128,
}


def progress(message: str) -> None:
    """A progress note on stderr, keeping stdout for the table and the result line."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- synthetic text

# Everyday English words; a tokenizer trained on text built from them learns whole-word tokens
# for most, the way a real tokenizer does for frequent words.
_COMMON_WORDS = """
    the of and to in is was for on that with as it at by from his her they this be are not had
    have one all were we when there can an which their said if do will each about how up out
    them then she many some so these would other into has more two time like him see could no
    make than first been its who now people my made over did down only way find use may water
    long little very after words called just where most know get through back much before go
    good new write our used me man too any day same right look think also around another came
    come work three word must because does part even place well such here take why things help
    put years different away again off went old number great tell men say small every found
    still between name should home big give air line set own under read last never us left end
    along while might next sound below saw something thought both few those always looked show
    large often together asked house world going want school important until form food keep
    children feet land side without boy once animals life enough took sometimes four head above
    kind began almost live page got earth need far hand high year mother light parts country
    father let night following picture being study second eyes soon times story boys since
    white days ever paper hard near sentence better best across during today others however sure
    means knew try told young miles sun ways thing whole hear example heard several change
    answer room sea against top turned learn point city play toward five using himself usually
    river garden winter summer bread morning evening window market teacher doctor village
    mountain forest letter music table question island engine kitchen harbor valley bridge
"""
WORDS = tuple(_COMMON_WORDS.split())
# Syllables of made-up words: a fixed lexicon of them gives the text a long tail of rarer
# words, so a 2,000-token BPE vocabulary fills up with word pieces and some words take
# several tokens, as in real text.
_SYLLABLES = """
    ba be bi bo bu ca ce co cu da de di do fa fe fi fo ga ge go ka ke ki ko la le li lo lu ma
    me mi mo mu na ne ni no nu pa pe pi po ra re ri ro ru sa se si so su ta te ti to tu va ve
    vi wa we ya zo an en in on ar er or al el il ol ast est ist ent ion ing ter ver
"""
SYLLABLES = tuple(_SYLLABLES.split())
LEXICON_SIZE = 3000
MADE_UP_SHARE = 0.25


def made_up_lexicon(size: int = LEXICON_SIZE) -> tuple[str, ...]:
    """A fixed (seed-independent) list of distinct pronounceable made-up words."""
    rng = random.Random(1234)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return tuple(words)


def word_stream(seed: int) -> Iterator[str]:
    """An endless seeded stream of words, mostly common ones, sometimes ending a sentence.

    Made-up words are drawn with Zipf-like frequencies (rank r has weight 1/r), so a few are
    frequent and most are rare.
    """
    rng = random.Random(seed)
    lexicon = made_up_lexicon()
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, len(lexicon) + 1)))
    while True:
        if rng.random() < MADE_UP_SHARE:
            word = rng.choices(lexicon, cum_weights=cumulative)[0]
        else:
            word = rng.choice(WORDS)
        yield word + "." if rng.random() < 0.08 else word


def synthetic_sentences(
    count: int, seed: int, min_words: int = 6, max_words: int = 18
) -> list[str]:
    """``count`` seeded pseudo-English sentences (for training a tiny tokenizer)."""
    rng = random.Random(seed)
    words = word_stream(seed)
    sentences = []
    for _ in range(count):
        length = rng.randint(min_words, max_words)
        text = " ".join(next(words).rstrip(".") for _ in range(length))
        sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def text_of_exact_length(
    tokenizer: Any,
    words: Iterator[str],
    num_tokens: int,
    *,
    leading_space: bool,
    max_skips: int = 10_000,
) -> str:
    """Space-joined words from ``words`` that tokenise to exactly ``num_tokens`` tokens.

    Byte-level BPE pre-tokenises on spaces, so merges never cross a word boundary and a
    text's token count is the sum of its ``" word"`` pieces' counts; a word that would
    overshoot is skipped for a later one that fits. ``leading_space`` starts the text with a
    space, as a continuation of an earlier text does. Callers should still check the joint
    tokenisation of the texts they concatenate.
    """
    pieces: list[str] = []
    used = skips = 0
    while used < num_tokens:
        word = next(words)
        piece = f" {word}" if pieces or leading_space else word
        count = len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if used + count <= num_tokens:
            pieces.append(piece)
            used += count
        else:
            skips += 1
            if skips > max_skips:
                raise ValueError(f"cannot fill exactly {num_tokens} tokens from this word stream")
    return "".join(pieces)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "child":
        sys.exit("usage: python _harness.py child MODULE FUNCTION  (kwargs as JSON on stdin)")
    _child_main(sys.argv[2], sys.argv[3])
