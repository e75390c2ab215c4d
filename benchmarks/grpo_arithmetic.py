"""GRPO, RLOO, REINFORCE and ReMax raise a tiny model's arithmetic accuracy.

An experiment, not a timing benchmark. One starting policy, then each algorithm from it:

1. A 2-layer Llama built from scratch is fine-tuned briefly (150 steps) on 256 built-in
   two-digit sums and differences (the ``init_sft`` phase of the recipes' ``tiny`` preset):
   it has half-memorised them and does not generalise (fresh problems: ~1% right).
2. Each algorithm (``rlhf grpo|rloo|reinforce|remax`` through its ``run_*`` function) trains
   that same policy online on ``--train-prompts`` of those problems with the arithmetic rule
   reward (1 for the right number, else 0): K = 8 samples per prompt at temperature 0.7, the
   same iterations, steps and learning rate for all.
3. Before and after, greedy exact-match accuracy on the prompts trained on, and on 64
   held-out prompts (other problems of the SFT set, never trained on by RL), and the sampled
   KL(π‖π_ref).

What it shows: every algorithm raises the accuracy on the prompts it trains on. On held-out
prompts accuracy *falls*: a tiny model that has memorised answers rather than learned to add
has nothing to transfer, and the updates disturb the other memorised answers (forgetting).
Arithmetic that generalises needs far more SFT first (about 1,500 steps on 20,000 problems:
then SFT alone reaches ~99% on fresh problems, and RL from a 75% policy moved held-out
accuracy by less than its noise in 16,000 episodes).

    python benchmarks/grpo_arithmetic.py                  # about a minute on 2 cores
    python benchmarks/grpo_arithmetic.py --algorithms grpo --iterations 10 --json-only

Last stdout line: one JSON object (per algorithm ``train_before``/``train_after``,
``heldout_before``/``heldout_after``, ``kl``, ``steps``, ``wall_s``); progress notes go to
stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import format_table, progress

ALGORITHMS = ("grpo", "rloo", "reinforce", "remax")


def recipe(name: str) -> tuple[Any, Any]:
    """(config class, run function) of the recipe ``name``."""
    import importlib

    module = importlib.import_module(f"rlhf.recipes.{name}")
    classes = {
        "grpo": "GRPOConfig",
        "rloo": "RLOOConfig",
        "reinforce": "ReinforceConfig",
        "remax": "ReMaxConfig",
    }
    return getattr(module, classes[name]), getattr(module, f"run_{name}")


def greedy_accuracy(model: Any, prompts: list[str]) -> float:
    """Exact-match accuracy of greedy decoding (the arithmetic rule) on ``prompts``."""
    from rlhf.rewards.rules import ArithmeticCorrectness
    from rlhf.rollout.hf import HFGenerationEngine
    from rlhf.rollout.types import SamplingParams

    if not isinstance(model, HFGenerationEngine):
        model = HFGenerationEngine.from_pretrained(str(model), batch_size=256)
    batch = model.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0))
    return float(ArithmeticCorrectness()(prompts, batch.response_texts).mean())


def run(
    name: str, out: Path, overrides: list[str], init: Path | None, heldout: list[str]
) -> dict[str, float]:
    """Train with recipe ``name`` (preset tiny + overrides); before/after accuracies."""
    from rlhf.config import load_config, preset_path, read_yaml

    cls, run_fn = recipe(name)
    base = read_yaml(preset_path(name, "tiny"))
    if init is not None:  # start from the shared initial policy
        base.pop("init_sft", None)
        base["model"] = {"path": str(init)}
    settings = [f"out={out}", "overwrite=true", "progress=false", "tensorboard=false"]
    config = load_config(cls, None, settings + overrides, base=base)
    start = time.perf_counter()
    result = run_fn(config)
    wall = time.perf_counter() - start
    # the preset evaluates on the prompts it trains on (data.eval_prompts = data.prompts)
    before = json.loads((out / "eval_initial.json").read_text())
    after = {k.removeprefix("eval_"): v for k, v in result.metrics[-1].items() if "eval_" in k}
    start_policy = init if init is not None else out / "init-sft" / "model"
    return {
        "train_before": before["greedy_reward"],
        "train_after": after["greedy_reward"],
        "heldout_before": greedy_accuracy(start_policy, heldout),
        "heldout_after": greedy_accuracy(result.model_dir, heldout),
        "kl": after.get("kl", float("nan")),
        "steps": float(result.final_step),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--iterations", type=int, default=None, help="rollout.iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument(
        "--init", type=Path, default=None, help="start from this policy (skip the init SFT)"
    )
    parser.add_argument(
        "--heldout", default="builtin:arithmetic?n=256", help="held-out prompts: 32..95 of these"
    )
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value for every recipe")
    args = parser.parse_args(argv)

    overrides = [f"train.seed={args.seed}", *args.overrides]
    if args.iterations is not None:
        overrides.append(f"rollout.iterations={args.iterations}")
    root = args.out or Path(tempfile.mkdtemp(prefix="grpo-arithmetic-"))
    start = time.perf_counter()
    results: dict[str, dict[str, float]] = {}
    from rlhf.rollout.candidates import load_prompts

    # other problems of the SFT set (the preset trains on its first 32 problems)
    heldout = [p for p in load_prompts(args.heldout) if isinstance(p, str)][32:96]
    init: Path | None = args.init
    for name in args.algorithms:
        progress(f"{name}: training")
        results[name] = run(name, root / name, overrides, init, heldout)
        if init is None:  # later algorithms start from the first one's SFT policy
            init = root / name / "init-sft" / "model"
        row = results[name]
        progress(
            f"{name}: trained prompts {row['train_before']:.3f} → {row['train_after']:.3f}, "
            f"held-out {row['heldout_before']:.3f} → {row['heldout_after']:.3f}"
        )

    summary = {
        "task": "builtin:arithmetic, greedy exact match (trained prompts and held-out prompts)",
        **{name: {k: round(v, 4) for k, v in row.items()} for name, row in results.items()},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if not args.json_only:
        header = ["algorithm", "trained before", "after", "held-out before", "after", "KL", "s"]
        rows = [
            [n, r["train_before"], r["train_after"], r["heldout_before"], r["heldout_after"],
             r["kl"], r["wall_s"]]
            for n, r in results.items()
        ]  # fmt: skip
        print(format_table(header, rows))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
