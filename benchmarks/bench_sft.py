"""SFT training throughput: our ``run_sft`` against TRL's ``SFTTrainer`` on identical work.

Workload (both sides): the benchmarks' tiny Llama (hidden 256, 4 layers, 4 heads, MLP 688,
byte-level BPE vocabulary of 2,000: about 4.2M parameters, 3.2M of them non-embedding), fp32 on
CPU, batch 8, every example exactly 64 prompt + 64 completion tokens (so no padding on either
side), loss on the completion tokens only, AdamW (fused) at a constant learning rate 1e-4,
gradient clipping at norm 1.0, seed 0, no logging sinks, no checkpoints during training.

Both sides see the very same token ids: our side reads a prompt/completion JSONL and tokenises
it itself (prompt + completion + EOS), and TRL gets the ids and loss mask of that same
tokenisation pre-tokenised (``input_ids`` + ``completion_mask``: with
``completion_only_loss=True`` TRL builds its labels from the mask and adds no token).

Metric: tokens per second (all 8 x 128 tokens of a step) over the measured steps, i.e. from the
end of the last warm-up step to the end of the last step. Each side runs in its own process.

    python benchmarks/bench_sft.py                 # 5 warm-up + 30 measured steps
    python benchmarks/bench_sft.py --steps 10 --warmup 2 --skip-trl --json-only
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    BenchmarkError,
    check_trl_settings,
    common_arguments,
    engine_train_settings,
    format_table,
    matmul_flops,
    measured_step_seconds,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    synthetic_sentences,
    text_of_exact_length,
    tokens_per_second,
    trl_available,
    trl_train_settings,
    word_stream,
)

BENCHMARK = "sft"
METRIC = "tokens_per_s"
PROMPT_TOKENS = 64
COMPLETION_TOKENS = 64  # including the EOS that ends every completion
SEQUENCE_TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
BATCH_SIZE = 8
LEARNING_RATE = 1e-4
MAX_GRAD_NORM = 1.0
SEED = 0
VOCAB_SIZE = 2000
TOKENIZER_SENTENCES = 4000


# ---------------------------------------------------------------- the shared workload


def build_workload(work_dir: Path, num_examples: int) -> dict[str, Any]:
    """Tiny model, prompt/completion JSONL (ours) and the same examples pre-tokenised (TRL).

    The pre-tokenised ids are our own tokenisation of each row, so TRL trains on exactly the
    tokens and loss mask we do. Returns the paths and the model's parameter counts.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.data.records import CompletionRecord
    from rlhf.data.tokenize import adds_bos, tokenize_record
    from rlhf.models.tiny import count_parameters, make_tiny_model

    model_dir = make_tiny_model(
        work_dir / "model", synthetic_sentences(TOKENIZER_SENTENCES, SEED), vocab_size=VOCAB_SIZE
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_text_tokens = PROMPT_TOKENS - adds_bos(tokenizer)
    words = word_stream(SEED + 1)
    rows, tokenised = [], []
    for index in range(num_examples):
        prompt = text_of_exact_length(tokenizer, words, prompt_text_tokens, leading_space=False)
        # one token short: our tokenisation appends EOS to a plain-text completion
        completion = text_of_exact_length(
            tokenizer, words, COMPLETION_TOKENS - 1, leading_space=True
        )
        example = tokenize_record(tokenizer, CompletionRecord(prompt, completion))
        if len(example) != SEQUENCE_TOKENS or example.num_loss_tokens != COMPLETION_TOKENS:
            raise RuntimeError(
                f"example {index}: {len(example)} tokens, {example.num_loss_tokens} in the "
                f"completion; expected {PROMPT_TOKENS} + {COMPLETION_TOKENS}"
            )
        rows.append({"prompt": prompt, "completion": completion})
        tokenised.append(
            {
                "input_ids": example.input_ids,
                "completion_mask": [int(target) for target in example.loss_mask],
            }
        )
    data_path = work_dir / "train.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tokens_path = work_dir / "train_tokens.jsonl"
    tokens_path.write_text("".join(json.dumps(row) + "\n" for row in tokenised), encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {
        "model_dir": str(model_dir),
        "data_path": str(data_path),
        "tokens_path": str(tokens_path),
        "non_embedding_params": count_parameters(model, non_embedding=True),
        "params": count_parameters(model, non_embedding=False),
    }


# ---------------------------------------------------------------- the two sides (children)


def train_ours(
    model_dir: str, data_path: str, out_dir: str, total_steps: int, compile: bool
) -> dict[str, Any]:
    """Run ``rlhf.recipes.sft.run_sft`` and read each step's end time from metrics.jsonl."""
    import torch

    from rlhf.recipes.sft import SFTConfig, run_sft

    config = SFTConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            "data": {
                "train": data_path,
                "max_length": SEQUENCE_TOKENS,
                "packing": False,
                "eval_fraction": 0.0,  # train on every row, as TRL does
            },
            "train": engine_train_settings(
                batch_size=BATCH_SIZE,
                lr=LEARNING_RATE,
                seed=SEED,
                max_grad_norm=MAX_GRAD_NORM,
                grad_accum=1,
                max_steps=total_steps,
                compile=compile,
            ),
            "out": out_dir,
            "tensorboard": False,
            "progress": False,
        }
    )
    run_sft(config)
    rows = [
        json.loads(line)
        for line in (Path(out_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    steps = sorted(
        (r for r in rows if r.get("split", "train") == "train" and "time" in r),
        key=lambda r: r["step"],
    )
    return {
        "step_end_times": [r["time"] for r in steps],
        "tokens_per_step": [r["tokens"] for r in steps],
        "mean_loss": statistics.fmean(r["loss"] for r in steps) if steps else None,
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_dir: str, tokens_path: str, out_dir: str, total_steps: int, compile: bool
) -> dict[str, Any]:
    """Run TRL's ``SFTTrainer`` configured like our side, timing each step's end."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepClock(TrainerCallback):
        """Seconds since training began at the end of each optimiser step."""

        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter() - self.start)

    examples = [
        json.loads(line) for line in Path(tokens_path).read_text(encoding="utf-8").splitlines()
    ]
    dataset = Dataset.from_list(examples)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = SFTConfig(
        output_dir=out_dir,
        max_steps=total_steps,
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED),
        max_length=SEQUENCE_TOKENS,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        torch_compile=compile,
    )
    clock = StepClock()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    output = trainer.train()
    check_trl_settings(trainer)
    return {
        "mean_loss": output.training_loss,
        "step_end_times": clock.ends,
        # every batch is full: the data hold exactly total_steps x BATCH_SIZE examples, each
        # of SEQUENCE_TOKENS tokens, and the collator pads nothing
        "tokens_per_step": [BATCH_SIZE * SEQUENCE_TOKENS] * len(clock.ends),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def measure(side: dict[str, Any], warmup: int, total_steps: int, name: str) -> float:
    """Tokens/s of one side, after checking it ran every step on full batches."""
    times, tokens = side["step_end_times"], side["tokens_per_step"]
    if len(times) != total_steps:
        raise RuntimeError(f"{name}: {len(times)} steps timed, expected {total_steps}")
    expected = BATCH_SIZE * SEQUENCE_TOKENS
    if any(count != expected for count in tokens):
        raise RuntimeError(
            f"{name}: steps of {sorted(set(tokens))} tokens, expected {expected} "
            f"({BATCH_SIZE} x {SEQUENCE_TOKENS}, every token of the batch)"
        )
    return tokens_per_second(times, expected, warmup)


def table_row(
    name: str, side: dict[str, Any], tokens_per_s: float, warmup: int, n: int, peak_flops: float
) -> list[Any]:
    """One side's line: throughput, peak memory, MFU, the median step (robust to a busy
    machine, where the mean over the window is not) and the mean training loss (close on both
    sides when they do the same work)."""
    steps = measured_step_seconds(side["step_end_times"], warmup)
    return [
        name,
        tokens_per_s,
        side["peak_rss_mb"],
        model_flops_utilization(tokens_per_s, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN),
        1000 * statistics.median(steps),
        side["mean_loss"],
    ]


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    args = common_arguments(__doc__.split("\n", 1)[0]).parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be at least 1 and --warmup at least 0")
    total_steps = args.warmup + args.steps
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        progress("building the tiny model and data")
        workload = build_workload(work, num_examples=total_steps * BATCH_SIZE)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_flops)
        # Each side runs eager and compiled (ours: `train.compile`, regional; TRL:
        # `torch_compile`, the whole model); each side's figure is its faster setting, and
        # compilation happens inside the warm-up steps.
        sides: dict[str, dict[str, Any]] = {}
        runs = [("ours", train_ours, "data_path")]
        if run_trl:
            runs.append(("trl", train_trl, "tokens_path"))
        for name, train, data_key in runs:
            for compiled in (False, True) if args.compile else (False,):
                label = f"{name}{' compiled' if compiled else ''}"
                progress(f"{label}: {total_steps} steps")
                try:
                    sides[label] = run_in_child(
                        train,
                        model_dir=workload["model_dir"],
                        **{data_key: workload[data_key]},
                        out_dir=str(work / label.replace(" ", "-")),
                        total_steps=total_steps,
                        compile=compiled,
                    )
                except BenchmarkError as error:  # a setting that fails is reported, not fatal
                    progress(f"{label} failed: {str(error)[-300:]}")

    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    rows, best = [], {}
    for label, side in sides.items():
        tps = measure(side, args.warmup, total_steps, label)
        rows.append(table_row(label, side, tps, args.warmup, n, peak_flops))
        name = label.split()[0]
        if name not in best or tps > best[name][0]:
            best[name] = (tps, side)
    ours_tps, ours = best["ours"]
    trl_tps, trl = best.get("trl", (None, None))
    ours_mfu = model_flops_utilization(ours_tps, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN)
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_tps,
        trl_tps,
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        ours_mfu,
    )
    if not args.json_only:
        print(
            f"SFT, tiny Llama ({workload['params'] / 1e6:.2f}M params, N = {n / 1e6:.2f}M "
            f"non-embedding), fp32 CPU, {ours['threads']} threads, batch {BATCH_SIZE} x "
            f"{SEQUENCE_TOKENS} tokens, {args.warmup} warm-up + {args.steps} measured steps"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(
            format_table(
                ["side", "tokens/s", "peak MB", "MFU", "median ms/step", "mean loss"], rows
            )
        )
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f}")
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
