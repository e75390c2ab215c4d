"""Reward-model training throughput: our ``run_reward_model`` against TRL's ``RewardTrainer``.

Workload (both sides): the tiny Llama of ``bench_sft`` (hidden 256, 4 layers, 4 heads, MLP 688,
byte-level BPE vocabulary of 2,000) as a one-label ``LlamaForSequenceClassification``, fp32 on
CPU, batch 8 preference pairs (16 sequences), every sequence exactly 64 prompt + 64 response
tokens (so no padding on either side), Bradley–Terry loss averaged over the pairs, AdamW (fused)
at a constant learning rate 1e-4, gradient clipping at norm 1.0, seed 0, no logging sinks, no
checkpoints during training.

Both sides see the very same token ids: our side reads a prompt/chosen/rejected JSONL and
tokenises it itself (prompt + response + EOS, :func:`rlhf.data.pairs.tokenize_for_reward`), and
TRL gets the ids of that same tokenisation pre-tokenised (``chosen_ids`` / ``rejected_ids``:
TRL then adds, strips and re-tokenises nothing).

Metric: preference pairs per second over the measured steps, i.e. from the end of the last
warm-up step to the end of the last step. Each side runs in its own process, eager and
compiled; each side's figure is its faster setting.

    python benchmarks/bench_rm.py                  # 5 warm-up + 30 measured steps
    python benchmarks/bench_rm.py --steps 10 --warmup 2 --skip-trl --json-only
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import (
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
    synthetic_sentences,
    text_of_exact_length,
    tokens_per_second,
    trl_available,
    trl_step_clock,
    trl_train_settings,
    word_stream,
)
from bench_sft import MAX_GRAD_NORM, SEED, TOKENIZER_SENTENCES, VOCAB_SIZE

BENCHMARK = "rm"
METRIC = "pairs_per_s"
PROMPT_TOKENS = 64
RESPONSE_TOKENS = 64  # including the EOS that ends every response
SEQUENCE_TOKENS = PROMPT_TOKENS + RESPONSE_TOKENS
BATCH_PAIRS = 8
LEARNING_RATE = 1e-4


# ---------------------------------------------------------------- the shared workload


def build_workload(work_dir: Path, num_pairs: int) -> dict[str, Any]:
    """Tiny model (``bench_sft``'s), prompt/chosen/rejected JSONL (ours) and the same pairs
    pre-tokenised (TRL). Returns the paths and the model's parameter counts."""
    from transformers import AutoModelForCausalLM

    from rlhf.data.pairs import tokenize_for_reward
    from rlhf.data.tokenize import adds_bos
    from rlhf.models.load import load_tokenizer
    from rlhf.models.tiny import count_parameters, make_tiny_model

    model_dir = make_tiny_model(
        work_dir / "model", synthetic_sentences(TOKENIZER_SENTENCES, SEED), vocab_size=VOCAB_SIZE
    )
    tokenizer = load_tokenizer(model_dir)
    prompt_text_tokens = PROMPT_TOKENS - adds_bos(tokenizer)
    words = word_stream(SEED + 2)
    rows, tokenised = [], []
    for index in range(num_pairs):
        prompt = text_of_exact_length(tokenizer, words, prompt_text_tokens, leading_space=False)
        # one token short: the tokenisation appends EOS to a plain-text response
        chosen, rejected = (
            text_of_exact_length(tokenizer, words, RESPONSE_TOKENS - 1, leading_space=True)
            for _ in range(2)
        )
        ids = [
            tokenize_for_reward(tokenizer, prompt, r, SEQUENCE_TOKENS) for r in (chosen, rejected)
        ]
        if any(len(sequence) != SEQUENCE_TOKENS for sequence in ids) or ids[0] == ids[1]:
            raise RuntimeError(
                f"pair {index}: sequences of {[len(s) for s in ids]} tokens; expected two "
                f"different sequences of {PROMPT_TOKENS} + {RESPONSE_TOKENS}"
            )
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        tokenised.append({"chosen_ids": ids[0], "rejected_ids": ids[1]})
    data_path = work_dir / "pairs.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tokens_path = work_dir / "pairs_tokens.jsonl"
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


def reward_model_config(
    model_dir: str,
    data_path: str,
    out_dir: str,
    *,
    max_length: int,
    batch_size: int,
    lr: float,
    compile: bool,
    max_steps: int | None = None,
    epochs: float = 1.0,
    schedule: str = "constant",
) -> Any:
    """Our ``RewardModelConfig`` for a benchmark run: every pair trained on (no held-out split),
    fp32 on CPU, no sinks but ``metrics.jsonl``, no normalisation pass after training (TRL has
    none; the rewards' order, hence accuracy, does not depend on it)."""
    from rlhf.recipes.reward_model import RewardModelConfig

    return RewardModelConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            "data": {
                "train": data_path,
                "max_length": max_length,
                "truncation": "truncate",
                "eval_fraction": 0.0,
            },
            "train": engine_train_settings(
                batch_size=batch_size,
                lr=lr,
                seed=SEED,
                max_grad_norm=MAX_GRAD_NORM,
                grad_accum=1,
                max_steps=max_steps,
                epochs=epochs,
                schedule=schedule,
                compile=compile,
            ),
            "normalize": {"enabled": False},
            "out": out_dir,
            "tensorboard": False,
            "progress": False,
        }
    )


def trl_reward_config(
    out_dir: str,
    *,
    max_length: int,
    batch_size: int,
    lr: float,
    compile: bool,
    max_steps: int = -1,
    epochs: float = 1.0,
    schedule: str = "constant",
) -> Any:
    """TRL's ``RewardConfig`` set up like :func:`reward_model_config`."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=out_dir,
        max_steps=max_steps,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        **trl_train_settings(lr, MAX_GRAD_NORM, SEED, schedule=schedule),
        max_length=max_length,  # TRL drops longer pairs; the pre-tokenised ones all fit
        disable_dropout=True,  # as our init_reward_model does
        center_rewards_coefficient=None,
        torch_compile=compile,
        # TRL loads the model itself (AutoModelForSequenceClassification, num_labels=1, after
        # seeding), fp32 with SDPA attention as ours
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
    )


def read_pretokenised(tokens_path: str) -> Any:
    """A ``datasets.Dataset`` of ``chosen_ids`` / ``rejected_ids`` rows."""
    from datasets import Dataset

    rows = [json.loads(line) for line in Path(tokens_path).read_text("utf-8").splitlines()]
    return Dataset.from_list(rows)


def train_ours(
    model_dir: str, data_path: str, out_dir: str, total_steps: int, compile: bool
) -> dict[str, Any]:
    """Run ``rlhf.recipes.reward_model.run_reward_model``; step end times from metrics.jsonl."""
    import torch

    from rlhf.recipes.reward_model import run_reward_model

    config = reward_model_config(
        model_dir,
        data_path,
        out_dir,
        max_length=SEQUENCE_TOKENS,
        batch_size=BATCH_PAIRS,
        lr=LEARNING_RATE,
        compile=compile,
        max_steps=total_steps,
    )
    run_reward_model(config)
    steps = engine_step_metrics(out_dir)
    return {
        "step_end_times": [r["time"] for r in steps],
        "pairs_per_step": [r["loss_units"] for r in steps],
        "mean_loss": statistics.fmean(r["loss"] for r in steps) if steps else None,
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_dir: str, tokens_path: str, out_dir: str, total_steps: int, compile: bool
) -> dict[str, Any]:
    """Run TRL's ``RewardTrainer`` configured like our side, timing each step's end."""
    import torch
    from transformers import AutoTokenizer
    from trl import RewardTrainer

    args = trl_reward_config(
        out_dir,
        max_length=SEQUENCE_TOKENS,
        batch_size=BATCH_PAIRS,
        lr=LEARNING_RATE,
        compile=compile,
        max_steps=total_steps,
    )
    clock = trl_step_clock()
    dataset = read_pretokenised(tokens_path)
    trainer = RewardTrainer(
        model=model_dir,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[clock],
    )
    if len(trainer.train_dataset) != len(dataset):
        raise RuntimeError(f"TRL kept {len(trainer.train_dataset)} of {len(dataset)} pairs")
    output = trainer.train()
    check_trl_settings(trainer)
    # every batch is full: the data hold exactly total_steps x BATCH_PAIRS pairs
    return {
        "step_end_times": clock.ends,
        "pairs_per_step": [BATCH_PAIRS] * len(clock.ends),
        "mean_loss": output.training_loss,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def measure(side: dict[str, Any], warmup: int, total_steps: int, name: str) -> float:
    """Pairs/s of one side, after checking it ran every step on full batches.

    Only the pairs are checked: how many token positions a side computes for them is its own
    business (our engine counts the real tokens of what it forwards, TRL the sequences'), and
    throughput counts the pairs' 2 x 128 tokens on both sides.
    """
    times = side["step_end_times"]
    if len(times) != total_steps:
        raise RuntimeError(f"{name}: {len(times)} steps timed, expected {total_steps}")
    if set(side["pairs_per_step"]) != {BATCH_PAIRS}:
        raise RuntimeError(
            f"{name}: steps of {sorted(set(side['pairs_per_step']))} pairs, expected {BATCH_PAIRS}"
        )
    return tokens_per_second(times, BATCH_PAIRS, warmup)


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    args = common_arguments(__doc__.split("\n", 1)[0]).parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be at least 1 and --warmup at least 0")
    total_steps = args.warmup + args.steps
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")

    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        work = Path(tmp)
        progress("building the tiny model and pairs")
        workload = build_workload(work, num_pairs=total_steps * BATCH_PAIRS)
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
    if "ours" not in {label.split()[0] for label in sides}:
        sys.exit("our side failed in every setting")

    # 6·N per token for both sequences of every pair (forward and backward)
    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    tokens_per_pair = 2 * SEQUENCE_TOKENS
    rows, best = [], {}
    for label, side in sides.items():
        pps = measure(side, args.warmup, total_steps, label)
        steps = measured_step_seconds(side["step_end_times"], args.warmup)
        mfu = model_flops_utilization(
            pps * tokens_per_pair, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        )
        rows.append(
            [
                label,
                pps,
                pps * tokens_per_pair,
                side["peak_rss_mb"],
                mfu,
                1000 * statistics.median(steps),
                side["mean_loss"],
            ]
        )
        name = label.split()[0]
        if name not in best or pps > best[name][0]:
            best[name] = (pps, side)
    ours_pps, ours = best["ours"]
    trl_pps, trl = best.get("trl", (None, None))
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_pps,
        trl_pps,
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        model_flops_utilization(
            ours_pps * tokens_per_pair, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        ),
    )
    if not args.json_only:
        print(
            f"Reward model, tiny Llama ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding), fp32 CPU, {ours['threads']} threads, batch "
            f"{BATCH_PAIRS} pairs x 2 x {SEQUENCE_TOKENS} tokens, {args.warmup} warm-up + "
            f"{args.steps} measured steps"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(
            format_table(
                ["side", "pairs/s", "tokens/s", "peak MB", "MFU", "median ms/step", "mean loss"],
                rows,
            )
        )
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f}")
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
