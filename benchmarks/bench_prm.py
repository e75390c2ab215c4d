"""Process-reward-model training throughput: our ``run_prm`` against TRL 1.12's ``PRMTrainer``.

Workload (both sides): the tiny Llama of ``bench_sft`` (hidden 256, 4 layers, 4 heads, MLP 688,
byte-level BPE vocabulary of 2,000) as an ``AutoModelForTokenClassification``, fp32 on CPU,
dropout off, trained on step-labelled solutions of our embedded step world
(``builtin:step-solutions?n=...&seed=0&error_rate=0.3``: multi-step arithmetic, each step
labelled +1 / −1 by a checker), batch 8 solutions, one epoch in which every solution is read
once, AdamW (fused) at a constant learning rate 1e-5, gradient clipping at norm 1.0, seed 0, no
evaluation, logging sinks or checkpoints.

Each solution is one sequence: the prompt, the step separator ``"\\n"``, then every step
followed by the separator; a step's label is read at the last token of the separator after
it, and the loss is averaged over the labelled steps of the batch. Both sides see the same
token ids and the same batches: our side reads the builtin source and tokenises it itself
(:mod:`rlhf.data.step_tokens`), TRL gets ``{"prompt", "completions", "labels"}`` rows and
tokenises them itself (its ``tokenize_row``), with the separator appended to a prompt that does
not end with it already (TRL writes none after it; ours does, once) and its tokenizer's BOS
unset (TRL prepends BOS whenever the tokenizer has one; this tokenizer's convention, which ours
follows, writes none). TRL reads the rows in the order our loader served them
(``train_sampling_strategy="sequential"``), so every batch holds the same solutions, padded to
the same length. The TRL child returns its tokenisation
and the run checks it against ours, id for id and label for label.

What cannot be matched: TRL's head has 2 outputs (cross-entropy over wrong / correct), ours 1
(binary cross-entropy on σ(ℓ)); the difference is 256 multiply-adds per token.

TRL removed ``PRMTrainer`` after 1.12 (``trl.experimental.prm``), so its side runs in
``.venv-trl-ppo``, the TRL 1.12 environment ``bench_ppo`` uses (``make bench`` builds it, or
``make .venv-trl-ppo/.installed`` alone), or the interpreter given by ``--trl-python`` /
``$RLHF_TRL_PPO_PYTHON``. Without one, our side runs alone.

Metric: ``steps_per_s``, labelled solution steps (not optimiser steps) trained on per second
over the measured optimiser steps, from the end of the last warm-up step to the end of the
last. Each side runs in its own process, eager and compiled, each in fp32 and, on a CPU with
bf16 matrix units (AVX512-BF16 or AMX), in bf16 mixed precision (ours
``train.mixed_precision=bf16``, TRL ``bf16=True``; ``--no-bf16`` skips them); each side's figure
is its fastest setting.

    python benchmarks/bench_prm.py                  # 5 warm-up + 30 measured steps
    python benchmarks/bench_prm.py --threads 1      # on a shared machine
    python benchmarks/bench_prm.py --steps 3 --warmup 1 --no-compile
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
    cpu_description,
    engine_step_metrics,
    engine_train_settings,
    format_table,
    measured_step_seconds,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    synthetic_sentences,
    trl_step_clock,
    trl_train_settings,
)
from bench_dpo import fresh_compile_cache
from bench_grpo import add_bf16_argument, matmul_peak, variants
from bench_ppo import trl_python
from bench_sft import MAX_GRAD_NORM, SEED, TOKENIZER_SENTENCES, VOCAB_SIZE

BENCHMARK = "prm"
METRIC = "steps_per_s"
BATCH_SOLUTIONS = 8
LEARNING_RATE = 1e-5  # both recipes' default for a process reward model
SEPARATOR = "\n"
ERROR_RATE = 0.3
MAX_LENGTH = 512  # the tiny Llama's positions; the solutions are far shorter, nothing is cut

# A solution as each child reports it: [input ids, positions of the labelled steps' ends,
# their targets (1.0 correct, 0.0 wrong)].
Solution = list[list[Any]]


def step_source(num_solutions: int) -> str:
    """The builtin source of the step-labelled solutions both sides train on."""
    return f"builtin:step-solutions?n={num_solutions}&seed={SEED}&error_rate={ERROR_RATE}"


# ---------------------------------------------------------------- the shared workload


def build_workload(work_dir: Path, num_solutions: int) -> dict[str, Any]:
    """The tiny model (``bench_sft``'s, as ``bench_rm`` builds it), the step records and their
    TRL rows. Returns the model folder, the builtin source our side reads, TRL's rows (in the
    records' order) and the model's parameter counts."""
    from transformers import AutoModelForCausalLM

    from rlhf.models.tiny import count_parameters, make_tiny_model
    from rlhf.sim.builtin import load_builtin

    model_dir = make_tiny_model(
        work_dir / "model", synthetic_sentences(TOKENIZER_SENTENCES, SEED), vocab_size=VOCAB_SIZE
    )
    source = step_source(num_solutions)
    trl_rows = []
    for index, record in enumerate(load_builtin(source)):
        if any(label not in (1, -1) for label in record.labels):
            raise RuntimeError(f"solution {index}: labels {record.labels}; expected only +1 / -1")
        if not isinstance(record.prompt, str):
            raise RuntimeError(f"solution {index}: a message-list prompt; expected text")
        trl_rows.append(
            {
                # ours ends the prompt with the separator as every step (rlhf.data.step_tokens:
                # unless the prompt already ends with it, as the step world's do)
                "prompt": record.prompt + ("" if record.prompt.endswith(SEPARATOR) else SEPARATOR),
                "completions": list(record.steps),
                "labels": [label == 1 for label in record.labels],
            }
        )
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {
        "model_dir": str(model_dir),
        "source": source,
        "trl_rows": trl_rows,
        "non_embedding_params": count_parameters(model, non_embedding=True),
        "params": count_parameters(model, non_embedding=False),
    }


def trl_rows_in_served_order(
    model_dir: str, source: str, trl_rows: list[dict[str, Any]], batches: list[list[Solution]]
) -> list[dict[str, Any]]:
    """TRL's rows reordered to the batches our loader served (each solution found by our own
    tokenisation of its record), so that TRL, reading them in order, trains on the same
    batches."""
    from rlhf.data.step_tokens import tokenize_solution
    from rlhf.models.load import load_tokenizer
    from rlhf.sim.builtin import load_builtin

    tokenizer = load_tokenizer(model_dir)
    by_ids: dict[tuple[int, ...], list[int]] = {}
    for index, record in enumerate(load_builtin(source)):
        tokenized = tokenize_solution(tokenizer, record, SEPARATOR, MAX_LENGTH)
        if tokenized is None:
            raise RuntimeError(f"solution {index} does not fit {MAX_LENGTH} tokens")
        by_ids.setdefault(tokenized[0].input_ids, []).append(index)
    ordered = []
    for batch in batches:
        for ids, _, _ in batch:
            candidates = by_ids.get(tuple(ids))
            if not candidates:
                raise RuntimeError("our loader served a solution that is not in the records")
            ordered.append(trl_rows[candidates.pop()])
    return ordered


# ---------------------------------------------------------------- the two sides (children)


def train_ours(
    model_dir: str,
    source: str,
    out_dir: str,
    total_steps: int,
    compile: bool,
    threads: int | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run ``rlhf.recipes.prm.run_prm``; step end times from metrics.jsonl. ``bf16``:
    ``train.mixed_precision=bf16``.

    The solutions of every batch are recorded as the recipe's collate function receives them
    (a reference kept per step; read after training), for TRL to read in the same order.
    """
    fresh_compile_cache(out_dir)
    import torch

    if threads:
        torch.set_num_threads(threads)

    import rlhf.recipes.prm as prm

    config = prm.PRMConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            "data": {
                "train": source,
                "max_length": MAX_LENGTH,
                "truncation": "truncate",
                "eval_fraction": 0.0,
                "step_separator": SEPARATOR,
            },
            "train": engine_train_settings(
                batch_size=BATCH_SOLUTIONS,
                lr=LEARNING_RATE,
                seed=SEED,
                max_grad_norm=MAX_GRAD_NORM,
                grad_accum=1,
                max_steps=total_steps,
                epochs=1.0,
                compile=compile,
                mixed_precision="bf16" if bf16 else "no",
            ),
            "out": out_dir,
            "tensorboard": False,
            "progress": False,
        }
    )
    served: list[list[Any]] = []
    collate = prm.collate_steps

    def recording_collate(examples: Any, pad_token_id: int) -> Any:
        served.append(examples)
        return collate(examples, pad_token_id=pad_token_id)

    prm.collate_steps = recording_collate  # run_prm binds it when it builds its loader
    try:
        prm.run_prm(config)
    finally:
        prm.collate_steps = collate
    steps = engine_step_metrics(out_dir)
    return {
        "step_end_times": [r["time"] for r in steps],
        "labelled_per_step": [r["loss_units"] for r in steps],
        "tokens_per_step": [r["tokens"] for r in steps],
        "batches": [
            [[list(e.input_ids), list(e.ends), list(e.targets)] for e in batch]
            for batch in served[: len(steps)]
        ],
        "mean_loss": statistics.fmean(r["loss"] for r in steps) if steps else None,
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_dir: str,
    rows_path: str,
    out_dir: str,
    total_steps: int,
    compile: bool,
    threads: int | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run TRL 1.12's ``PRMTrainer`` configured like our side (in ``.venv-trl-ppo``), reading
    the rows in order; returns its tokenisation next to the step end times. ``bf16``: TRL's
    ``bf16=True`` (its default)."""
    fresh_compile_cache(out_dir)
    import warnings

    import torch

    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer, set_seed

    warnings.filterwarnings("ignore")
    from trl.experimental.prm import PRMConfig, PRMTrainer

    rows = [json.loads(line) for line in Path(rows_path).read_text("utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.bos_token = None  # TRL prepends BOS when there is one; the convention has none
    set_seed(SEED)
    # PRMTrainer takes a built model: the token classifier TRL's docs use, two labels
    model = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=2, dtype=torch.float32, attn_implementation="sdpa"
    )
    args = PRMConfig(
        output_dir=out_dir,
        max_steps=total_steps,
        per_device_train_batch_size=BATCH_SOLUTIONS,
        gradient_accumulation_steps=1,
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED, bf16=bf16),
        train_sampling_strategy="sequential",  # the rows come in our loader's batch order
        max_length=MAX_LENGTH,
        max_completion_length=None,
        step_separator=SEPARATOR,
        train_on_last_step_only=False,
        disable_dropout=True,
        torch_compile=compile,
    )
    clock = trl_step_clock()
    trainer = PRMTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    output = trainer.train()
    check_trl_settings(trainer, bf16)
    solutions = [
        [
            ids,
            [i for i, label in enumerate(labels) if label != -100],
            [float(label) for label in labels if label != -100],
        ]
        for ids, labels in zip(
            trainer.train_dataset["input_ids"], trainer.train_dataset["labels"], strict=True
        )
    ]
    batches = [
        solutions[start : start + BATCH_SOLUTIONS]
        for start in range(0, len(solutions), BATCH_SOLUTIONS)
    ]
    return {
        "step_end_times": clock.ends,
        "batches": batches[: len(clock.ends)],
        "mean_loss": output.training_loss,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def batch_counts(batches: list[list[Solution]]) -> dict[str, list[int]]:
    """Per batch: labelled steps, real tokens and token positions (rows x the longest)."""
    return {
        "labelled": [sum(len(ends) for _, ends, _ in batch) for batch in batches],
        "tokens": [sum(len(ids) for ids, _, _ in batch) for batch in batches],
        "positions": [len(batch) * max(len(ids) for ids, _, _ in batch) for batch in batches],
    }


def measure(side: dict[str, Any], warmup: int, total_steps: int, name: str) -> dict[str, float]:
    """Labelled steps/s and real tokens/s of one side after ``warmup``, after checking that it
    ran every step on full batches; and its mean tokens and positions per batch."""
    times, batches = side["step_end_times"], side["batches"]
    if len(times) != total_steps or len(batches) != total_steps:
        raise RuntimeError(
            f"{name}: {len(times)} steps timed, {len(batches)} batches, expected {total_steps}"
        )
    if {len(batch) for batch in batches} != {BATCH_SOLUTIONS}:
        raise RuntimeError(f"{name}: batches of {sorted({len(b) for b in batches})} solutions")
    counts = batch_counts(batches)
    # our engine's own counts must agree with what its collate function received
    for key, engine_key in (("labelled", "labelled_per_step"), ("tokens", "tokens_per_step")):
        if engine_key in side and [int(v) for v in side[engine_key]] != counts[key]:
            raise RuntimeError(f"{name}: the engine's {key} per step differ from its batches")
    durations = measured_step_seconds(times, warmup)
    seconds = sum(durations)
    return {
        "steps_per_s": sum(counts["labelled"][warmup:]) / seconds,
        "tokens_per_s": sum(counts["tokens"][warmup:]) / seconds,
        "tokens_per_batch": statistics.fmean(counts["tokens"]),
        "positions_per_batch": statistics.fmean(counts["positions"]),
        "median_ms": 1000 * statistics.median(durations),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    parser = common_arguments(__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--threads", type=int, help="torch threads in each side's process (default: torch's)"
    )
    parser.add_argument(
        "--trl-python",
        help="Python of an environment with trl==1.12.0 (default: .venv-trl-ppo/bin/python)",
    )
    args = add_bf16_argument(parser).parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be at least 1 and --warmup at least 0")
    total_steps = args.warmup + args.steps
    python = None if args.skip_trl else trl_python(args.trl_python)
    if not args.skip_trl and python is None:
        progress(
            "no TRL 1.12 environment for trl.experimental.prm (`make bench` builds "
            ".venv-trl-ppo, or `make .venv-trl-ppo/.installed` alone); running our side only"
        )

    with tempfile.TemporaryDirectory(prefix="bench-prm-") as tmp:
        work = Path(tmp)
        progress("building the tiny model and step-labelled solutions")
        workload = build_workload(work, num_solutions=total_steps * BATCH_SOLUTIONS)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_peak, threads=args.threads)
        # Each side runs eager and compiled (ours: `train.compile`, regional; TRL:
        # `torch_compile`, the whole model), each in fp32 and, on a CPU with bf16 matrix units,
        # bf16 mixed precision; each side's figure is its fastest setting.
        settings = variants(args)
        common = {"model_dir": workload["model_dir"], "total_steps": total_steps}
        common |= {"threads": args.threads}
        sides: dict[str, dict[str, Any]] = {}
        for suffix, tag, setting in settings:
            label = f"ours{suffix}"
            progress(f"{label}: {total_steps} steps")
            try:
                sides[label] = run_in_child(
                    train_ours,
                    source=workload["source"],
                    out_dir=str(work / f"ours{tag}"),
                    **setting,
                    **common,
                )
            except BenchmarkError as error:  # a setting that fails is reported, not fatal
                progress(f"{label} failed: {str(error)[-2000:]}")
        if not sides:
            sys.exit("our side failed in every setting")
        if python is not None:
            progress(f"TRL 1.12 side runs with {python}")
            served = next(iter(sides.values()))["batches"]
            rows_path = work / "trl_rows.jsonl"
            rows = trl_rows_in_served_order(
                workload["model_dir"], workload["source"], workload["trl_rows"], served
            )
            rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            for suffix, tag, setting in settings:
                label = f"trl{suffix}"
                progress(f"{label}: {total_steps} steps")
                try:
                    sides[label] = run_in_child(
                        train_trl,
                        python=python,
                        rows_path=str(rows_path),
                        out_dir=str(work / f"trl{tag}"),
                        **setting,
                        **common,
                    )
                except BenchmarkError as error:
                    progress(f"{label} failed: {str(error)[-2000:]}")

    # 6·N per real token (forward and backward); padding is not counted
    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    rows, best, figures = [], {}, {}
    for label, side in sides.items():
        figures[label] = measured = measure(side, args.warmup, total_steps, label)
        mfu = model_flops_utilization(
            measured["tokens_per_s"], n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        )
        rows.append(
            [
                label,
                measured["steps_per_s"],
                measured["tokens_per_s"],
                side["peak_rss_mb"],
                mfu,
                measured["median_ms"],
                side["mean_loss"],
            ]
        )
        name = label.split()[0]
        if name not in best or measured["steps_per_s"] > figures[best[name]]["steps_per_s"]:
            best[name] = label
    ours_label, trl_label = best["ours"], best.get("trl")
    ours, trl = sides[ours_label], None if trl_label is None else sides[trl_label]
    ours_fig = figures[ours_label]
    trl_fig = None if trl_label is None else figures[trl_label]
    same_batches = None if trl is None else trl["batches"] == ours["batches"]
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_fig["steps_per_s"],
        None if trl_fig is None else trl_fig["steps_per_s"],
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        model_flops_utilization(
            ours_fig["tokens_per_s"], n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        ),
    )
    result |= {
        "ours_setting": ours_label,
        "trl_setting": trl_label,
        "ours_tokens_per_batch": round(ours_fig["tokens_per_batch"], 1),
        "trl_tokens_per_batch": None if trl_fig is None else round(trl_fig["tokens_per_batch"], 1),
        "same_batches": same_batches,
    }
    if not args.json_only:
        print(cpu_description())
        print(
            f"Process reward model, tiny Llama ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding) token classifier, fp32 CPU, {ours['threads']} "
            f"threads, batch {BATCH_SOLUTIONS} solutions of the step world "
            f"(error_rate {ERROR_RATE}), separator {SEPARATOR!r}, {args.warmup} warm-up + "
            f"{args.steps} measured steps"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(
            format_table(
                [
                    "side",
                    "labelled steps/s",
                    "tokens/s",
                    "peak MB",
                    "MFU",
                    "median ms/step",
                    "mean loss",
                ],
                rows,
            )
        )
        for label in sorted({ours_label, trl_label} - {None}):
            figure = figures[label]
            print(
                f"{label}: {figure['tokens_per_batch']:.1f} tokens per batch "
                f"({figure['positions_per_batch']:.1f} positions with padding)"
            )
        if trl is not None:
            print(
                "same solutions, token ids, label positions and batches on both sides: "
                f"{'yes' if same_batches else 'NO (the ratio compares different work)'}"
            )
            print(
                "not matched: the head, ours 1 logit (binary cross-entropy on sigmoid), "
                "TRL's 2 (cross-entropy over wrong / correct)"
            )
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f}")
    print_result(
        result,
        extra_keys=(
            "ours_setting",
            "trl_setting",
            "ours_tokens_per_batch",
            "trl_tokens_per_batch",
            "same_batches",
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
