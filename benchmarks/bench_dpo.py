"""DPO training throughput: our ``run_dpo`` against TRL's ``DPOTrainer``, reference included.

Workload (both sides): the tiny Llama of ``bench_sft`` (hidden 256, 4 layers, 4 heads, MLP 688,
byte-level BPE vocabulary of 2,000) as a causal LM, fp32 on CPU, batch 8 preference pairs, every
sequence exactly 64 prompt + 64 response tokens (so no padding and no truncation on either
side), the sigmoid DPO loss (Rafailov et al. 2023, eq. 7) with beta 0.1 against the policy's own
initial weights as the reference, AdamW (fused) at a constant learning rate 1e-5, gradient
clipping at norm 1.0, dropout off, seed 0, no logging sinks, no checkpoints during training.

The pairs are ``bench_rm``'s (seeded synthetic text): our side reads them as
prompt/chosen/rejected JSONL and tokenises them itself; TRL's ``DPOTrainer`` only takes text, so
it gets the same JSONL rows and tokenises them its own way, and its child checks that this gives
exactly our token ids (64 prompt tokens, 63 response tokens + EOS).

Metric: preference pairs per second over **the reference pass plus the measured steps**. A DPO
run first needs log π_ref of every pair: we compute it once before training (with the policy
itself, in a fresh cache folder, so never a cache hit); TRL either does the same
(``precompute_ref_log_probs=True``) or runs a second, frozen model in every step (``False``),
and its figure is the faster of the two. The data hold exactly the measured steps' pairs, so the
reference pass covers exactly the pairs counted; the warm-up steps (one-off compilation,
allocator growth) come after it and are not timed, the epoch simply restarting for them. Each
side runs in its own process, eager and compiled; each side's figure is its best setting.

    python benchmarks/bench_dpo.py                 # 5 warm-up + 30 measured steps
    python benchmarks/bench_dpo.py --steps 10 --warmup 2 --skip-trl --json-only
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    FORWARD_FLOPS_PER_PARAM_TOKEN,
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    BenchmarkError,
    check_trl_settings,
    common_arguments,
    engine_step_metrics,
    engine_train_settings,
    format_table,
    matmul_flops,
    measured_step_seconds,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    timed_calls,
    trl_available,
    trl_step_clock,
    trl_train_settings,
)
from bench_rm import BATCH_PAIRS, PROMPT_TOKENS, SEQUENCE_TOKENS, build_workload
from bench_sft import MAX_GRAD_NORM, SEED

BENCHMARK = "dpo"
METRIC = "pairs_per_s"
LEARNING_RATE = 1e-5
BETA = 0.1
# our recipe's reference phase: fingerprint (parameter hash), cache lookup, the forward pass
# over every pair, the cache write
REFERENCE_PASS = "precompute_reference"
# extra keys of the JSON line: each side's reference-pass seconds and TRL's winning setting
EXTRA_KEYS = ("ours_ref_s", "trl_ref_s", "trl_setting")
# model FLOPs per token of a pair: forward and backward of the policy (6·N) plus the
# reference's forward (2·N), whether precomputed or run in the step
FLOPS_PER_PARAM_TOKEN = TRAIN_FLOPS_PER_PARAM_TOKEN + FORWARD_FLOPS_PER_PARAM_TOKEN


# ---------------------------------------------------------------- the two sides (children)


def fresh_compile_cache(out_dir: str) -> None:
    """Point TorchInductor's on-disk cache at a new folder in ``out_dir`` (before torch compiles
    anything). The reference pass is timed, and a compiled model may compile there (a no-grad
    graph); with the default cache, shared across processes, that would cost what earlier runs
    left cached. Every child starts cold, as a user's first run does."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(out_dir) / "inductor-cache")


def train_ours(
    model_dir: str, data_path: str, out_dir: str, total_steps: int, compile: bool
) -> dict[str, Any]:
    """Run ``rlhf.recipes.dpo.run_dpo`` with a fresh reference cache; time its reference pass.

    The step end times come from ``metrics.jsonl``; the reference pass is every call of the
    recipe's reference computation (see :func:`timed_calls`), the cache write included.
    ``wall_s`` runs from before the imports to the exported model.
    """
    fresh_compile_cache(out_dir)
    start = time.perf_counter()
    import torch

    import rlhf.recipes.dpo as dpo
    import rlhf.recipes.offline_common as offline

    config = dpo.DPOConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            # the policy's own initial weights, computed before the first update; a fresh
            # folder so the pass really runs
            "reference": {"cache_dir": str(Path(out_dir) / "reference-cache"), "precompute": True},
            "data": {
                "train": data_path,
                "max_length": SEQUENCE_TOKENS,
                "truncation": "truncate",
                "eval_fraction": 0.0,  # train on every pair, as TRL does
            },
            "loss": {"name": "dpo", "beta": BETA, "label_smoothing": 0.0},
            "eval": {"kl_prompts": 0},  # one model in memory: no frozen copy for the KL
            "train": engine_train_settings(
                batch_size=BATCH_PAIRS,
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
    with timed_calls(offline, REFERENCE_PASS) as reference_calls:
        dpo.run_dpo(config)
    wall = time.perf_counter() - start
    if not reference_calls:
        raise RuntimeError(f"rlhf.recipes.offline_common.{REFERENCE_PASS} was never called")
    steps = engine_step_metrics(out_dir)
    return {
        "ref_s": sum(reference_calls),
        "wall_s": wall,
        "step_end_times": [r["time"] for r in steps],
        "pairs_per_step": [r["loss_units"] for r in steps],
        "mean_loss": statistics.fmean(r["loss"] for r in steps) if steps else None,
        "threads": torch.get_num_threads(),
    }


def trl_dpo_config(out_dir: str, total_steps: int, compile: bool, precompute: bool) -> Any:
    """TRL's ``DPOConfig`` set up like our side (see the module docstring)."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir,
        max_steps=total_steps,
        per_device_train_batch_size=BATCH_PAIRS,
        gradient_accumulation_steps=1,
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED),
        max_length=SEQUENCE_TOKENS,  # every pair fits: nothing is cut
        pad_to_multiple_of=None,
        loss_type=["sigmoid"],
        beta=BETA,
        label_smoothing=0.0,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=BATCH_PAIRS,  # as ours: the reference pass uses the batch size
        disable_dropout=True,
        torch_compile=compile,
        # TRL loads the policy (and, without precompute, the reference) itself: fp32, SDPA
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )


def train_trl(
    model_dir: str,
    data_path: str,
    tokens_path: str,
    out_dir: str,
    total_steps: int,
    compile: bool,
    precompute: bool,
) -> dict[str, Any]:
    """Run TRL's ``DPOTrainer`` configured like our side, timing its reference pass (when it
    precomputes) and each step's end. ``wall_s`` runs from before the imports to the end of
    training (nothing saved)."""
    os.environ["TQDM_DISABLE"] = "1"  # the precompute's progress bar reads this
    fresh_compile_cache(out_dir)
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    rows = [json.loads(line) for line in Path(data_path).read_text("utf-8").splitlines()]
    expected = [json.loads(line) for line in Path(tokens_path).read_text("utf-8").splitlines()]
    args = trl_dpo_config(out_dir, total_steps, compile, precompute)
    clock = trl_step_clock()
    with timed_calls(DPOTrainer, "_precompute_ref_logps") as reference_calls:
        trainer = DPOTrainer(
            model=model_dir,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            callbacks=[clock],
        )
    check_trl_tokens(trainer.train_dataset, expected)
    if precompute != bool(reference_calls) or precompute != (trainer.ref_model is None):
        raise RuntimeError(
            f"TRL precompute={precompute}: {len(reference_calls)} reference passes, "
            f"separate reference model: {trainer.ref_model is not None}"
        )
    output = trainer.train()
    wall = time.perf_counter() - start
    check_trl_settings(trainer)
    # every batch is full: the data hold a whole number of batches
    return {
        "ref_s": sum(reference_calls),
        "wall_s": wall,
        "step_end_times": clock.ends,
        "pairs_per_step": [BATCH_PAIRS] * len(clock.ends),
        "mean_loss": output.training_loss,
        "threads": torch.get_num_threads(),
    }


def check_trl_tokens(dataset: Any, expected: list[dict[str, list[int]]]) -> None:
    """Check that TRL's own tokenisation gave our ids: 64 prompt tokens, then each response.

    ``expected`` holds our full ``chosen_ids`` / ``rejected_ids`` sequences (prompt included).
    """
    if len(dataset) != len(expected):
        raise RuntimeError(f"TRL kept {len(dataset)} of {len(expected)} pairs")
    for index, (row, ours) in enumerate(zip(dataset, expected, strict=True)):
        prompt = row["prompt_ids"]
        same = (
            len(prompt) == PROMPT_TOKENS
            and prompt + row["chosen_ids"] == ours["chosen_ids"]
            and prompt + row["rejected_ids"] == ours["rejected_ids"]
        )
        if not same:
            raise RuntimeError(
                f"pair {index}: TRL tokenised {len(prompt)} prompt + {len(row['chosen_ids'])} "
                f"/ {len(row['rejected_ids'])} response tokens, not our ids"
            )


# ---------------------------------------------------------------- the run


def measure(side: dict[str, Any], warmup: int, total_steps: int, pairs: int, name: str) -> float:
    """Pairs/s of one side: the ``pairs`` of the measured steps over the reference pass plus
    those steps, after checking it ran every step on full batches."""
    times = side["step_end_times"]
    if len(times) != total_steps:
        raise RuntimeError(f"{name}: {len(times)} steps timed, expected {total_steps}")
    if set(side["pairs_per_step"]) != {BATCH_PAIRS}:
        raise RuntimeError(
            f"{name}: steps of {sorted(set(side['pairs_per_step']))} pairs, expected {BATCH_PAIRS}"
        )
    steps = measured_step_seconds(times, warmup)
    if len(steps) * BATCH_PAIRS != pairs:
        raise RuntimeError(f"{name}: {len(steps)} measured steps do not cover {pairs} pairs")
    return pairs / (side["ref_s"] + sum(steps))


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    args = common_arguments(__doc__.split("\n", 1)[0]).parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be at least 1 and --warmup at least 0")
    total_steps = args.warmup + args.steps
    num_pairs = args.steps * BATCH_PAIRS  # the reference pass covers the measured pairs
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")

    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        progress("building the tiny model and pairs")
        workload = build_workload(work, num_pairs=num_pairs)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_flops)
        # (label, child function, its own keyword arguments); eager and compiled for each
        # (ours: `train.compile`, regional; TRL: `torch_compile`, the whole model)
        runs: list[tuple[str, Any, dict[str, Any]]] = []
        for compiled in (False, True) if args.compile else (False,):
            suffix = " compiled" if compiled else ""
            runs.append((f"ours{suffix}", train_ours, {"compile": compiled}))
            if run_trl:
                for precompute in (True, False):
                    label = f"trl {'precompute' if precompute else 'ref model'}{suffix}"
                    runs.append(
                        (
                            label,
                            train_trl,
                            {
                                "compile": compiled,
                                "precompute": precompute,
                                "tokens_path": workload["tokens_path"],
                            },
                        )
                    )
        sides: dict[str, dict[str, Any]] = {}
        for label, train, extra in runs:
            progress(f"{label}: reference pass + {total_steps} steps")
            try:
                sides[label] = run_in_child(
                    train,
                    model_dir=workload["model_dir"],
                    data_path=workload["data_path"],
                    out_dir=str(work / label.replace(" ", "-")),
                    total_steps=total_steps,
                    **extra,
                )
            except BenchmarkError as error:  # a setting that fails is reported, not fatal
                progress(f"{label} failed: {str(error)[-600:]}")
    if "ours" not in {label.split()[0] for label in sides}:
        sys.exit("our side failed in every setting")

    # 8·N per token of both sequences of every pair: the policy's forward and backward plus
    # the reference's forward
    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    tokens_per_pair = 2 * SEQUENCE_TOKENS
    rows, best = [], {}
    for label, side in sides.items():
        pps = measure(side, args.warmup, total_steps, num_pairs, label)
        steps = measured_step_seconds(side["step_end_times"], args.warmup)
        mfu = model_flops_utilization(pps * tokens_per_pair, n, peak_flops, FLOPS_PER_PARAM_TOKEN)
        rows.append(
            [
                label,
                pps,
                side["ref_s"],
                sum(steps),
                side["peak_rss_mb"],
                mfu,
                1000 * statistics.median(steps),
                side["wall_s"],
                side["mean_loss"],
            ]
        )
        name = label.split()[0]
        if name not in best or pps > best[name][0]:
            best[name] = (pps, side, label)
    ours_pps, ours, _ = best["ours"]
    trl_pps, trl, trl_label = best.get("trl", (None, None, None))
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_pps,
        trl_pps,
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        model_flops_utilization(ours_pps * tokens_per_pair, n, peak_flops, FLOPS_PER_PARAM_TOKEN),
    )
    result["ours_ref_s"] = round(ours["ref_s"], 2)
    result["trl_ref_s"] = None if trl is None else round(trl["ref_s"], 2)
    result["trl_setting"] = trl_label
    if not args.json_only:
        print(
            f"DPO, tiny Llama ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding), fp32 CPU, {ours['threads']} threads, batch "
            f"{BATCH_PAIRS} pairs x 2 x {SEQUENCE_TOKENS} tokens, reference pass over "
            f"{num_pairs} pairs, {args.warmup} warm-up + {args.steps} measured steps"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(
            format_table(
                [
                    "side",
                    "pairs/s",
                    "ref s",
                    "steps s",
                    "peak MB",
                    "MFU",
                    "median ms/step",
                    "run s",
                    "mean loss",
                ],
                rows,
            )
        )
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f} (TRL's best: {trl_label})")
    print_result(result, EXTRA_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
