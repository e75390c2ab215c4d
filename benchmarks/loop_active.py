"""Active against random selection in ``rlhf loop``: what the same number of labels buys.

An experiment, not a timing benchmark. Every loop runs in the embedded world from one initial
policy (pretrained and fine-tuned once, seeded): each round samples 4 replies to
``--pool`` × ``--labels-per-round`` prompts from the current policy, picks
``--labels-per-round`` pairs to label — by the reward-model ensemble's disagreement (BALD,
``uncertainty``), by the policy's divergence from the initial policy (``divergence``) or at
random — and an annotator bot labels them through the feedback app's HTTP API
(Bradley–Terry noise on the world's gold, 10 % careless; one bot, so that which bot labels
which item does not vary with thread timing and a seed gives the same labels each run). An ensemble of reward models
(warm-started each round, trained on every label so far) and DPO on the round's pairs (or,
``--policy grpo``, GRPO against the round's reward model) follow.
Round 1 has no reward model yet: every arm picks it at random, with the same seed, so the arms
part from round 2.

After each round, measured against the world's gold:

* ``rm_gold_accuracy``: how often the ensemble orders a fixed set of 2 samples of the initial
  policy per evaluation prompt as gold does;
* ``best_of_n_gold``: the gold of the ensemble's pick among the current policy's 4 samples per
  evaluation prompt (what the reward model is worth on what the policy now writes);
* ``gold``: the current policy's mean gold reward (the same prompts and seed every round).

    python benchmarks/loop_active.py                  # 3 seeds × 3 arms, about 20 min on 2 cores
    python benchmarks/loop_active.py --seeds 0 --rounds 4 --strategies uncertainty random
    python benchmarks/loop_active.py --out runs/loop-active    # keep the runs and the plot

Each seed pretrains and fine-tunes its own initial policy, shared by that seed's arms. Prints
each arm's rounds for the first seed, then each measure's mean over the seeds at every label
count and, paired by seed, each active arm's difference from random with its standard error.
Writes (under ``--out``, a temporary folder by default) every loop's folder and the first
seed's ``label_efficiency.png``. Last stdout line: one JSON object, every seed's arms' rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import TINY, cpu_description, format_table, progress

# each round's policy update: DPO on the round's pairs, or GRPO against the round's reward
# model (the quickstart's GRPO, fewer iterations a round)
POLICY_SETTINGS: dict[str, dict[str, Any]] = {
    "dpo": {
        "data": {"max_length": 96},
        "loss": {"beta": 0.1},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2.0e-4, "warmup_steps": 2},
        "eval": {"kl_prompts": 8, "max_new_tokens": 48},
    },
    "grpo": {
        "sampling": {"max_new_tokens": 48, "batch_size": 256},
        "rollout": {"iterations": 15, "prompts_per_iteration": 16, "samples_per_prompt": 4},
        "kl": {"coef": 0.05, "estimator": "k3", "in_reward": False},
        "train": {"batch_size": 64, "lr": 5.0e-4, "warmup_steps": 0, "schedule": "constant",
                  "eval_every": 0},
        "eval": {"prompts": 64, "samples_per_prompt": 1},
    },
}  # fmt: skip


def loop_settings(args: argparse.Namespace, strategy: str, out: Path) -> dict[str, Any]:
    return {
        "out": str(out),
        "overwrite": True,
        "progress": False,
        "prompts": "builtin:world-prompts?n=3000&seed=1&split=train",
        "rounds": args.rounds,
        "labels_per_round": args.labels_per_round,
        "sampling": {"samples_per_prompt": 4, "max_new_tokens": 48, "batch_size": 256},
        "selection": {"strategy": strategy, "pool": args.pool},
        "bots": {"count": 1, "temperature": 0.05, "careless": 0.1},
        "reward_model": {
            "data": {"max_length": 96},
            "train": {"epochs": 2, "batch_size": 32, "lr": 3.0e-4, "warmup_steps": 5},
        },
        "reward_model_ensemble": args.ensemble,
        "policy_algorithm": args.policy,
        "policy": POLICY_SETTINGS[args.policy],
        "eval": {
            "prompts": "builtin:world-prompts?n=400&seed=99&split=eval",
            "count": args.eval_prompts,
            "samples_per_prompt": 4,
        },
    }


def initial_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Pretraining and SFT as the quickstart does them: the first arm runs them."""
    return {
        "model": {"tiny": TINY},
        "pretrain": {
            "data": {"train": "builtin:world-text?n=20000", "max_length": 128, "packing": True,
                     "eval_fraction": 0.02},
            "train": {"max_steps": 400, "batch_size": 16, "lr": 3.0e-3, "warmup_steps": 20,
                      "min_lr_ratio": 0.1},
        },
        "sft": {
            "data": {"train": "builtin:world-sft?n=4000", "max_length": 96, "eval_fraction": 0.05},
            "train": {"max_steps": 150, "batch_size": 32, "lr": 1.0e-3, "warmup_steps": 10,
                      "min_lr_ratio": 0.1},
        },
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Keep the runs here.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--labels-per-round", type=int, default=64)
    parser.add_argument("--pool", type=int, default=4, help="Prompts sampled per label.")
    parser.add_argument("--ensemble", type=int, default=3, help="Reward models per round.")
    parser.add_argument("--eval-prompts", type=int, default=256)
    parser.add_argument("--strategies", nargs="+", default=["uncertainty", "divergence", "random"])
    parser.add_argument(
        "--policy", choices=sorted(POLICY_SETTINGS), default="dpo",
        help="Each round's policy update: DPO on the pairs, or GRPO against the reward model.",
    )  # fmt: skip
    args = parser.parse_args()

    from rlhf.cli.common import setup_logging
    from rlhf.config import validate_config
    from rlhf.eval.loop_report import plot_label_efficiency
    from rlhf.recipes.loop import LoopConfig, run_loop

    setup_logging()
    root = args.out or Path(tempfile.mkdtemp(prefix="loop-active-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"cpu: {cpu_description()}")
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for seed in args.seeds:
        results[seed] = {}
        initial: str | None = None
        for strategy in args.strategies:
            started = time.perf_counter()
            out = root / f"seed-{seed}" / strategy
            settings = loop_settings(args, strategy, out) | {"seed": seed}
            if initial is None:
                settings |= initial_settings(args)
            else:  # the same starting policy for every arm of a seed
                settings["model"] = {"path": initial}
            config = validate_config(LoopConfig, settings, f"the {strategy} arm")
            progress(f"seed {seed}, {strategy}: {args.rounds} rounds of {args.labels_per_round}")
            results[seed][strategy] = run_loop(config).rounds
            if initial is None:
                initial = str(out / "init" / "sft" / "model")
            progress(f"{strategy}: done in {(time.perf_counter() - started) / 60:.1f} min")

    first = args.seeds[0]
    header = ["arm", "round", "labels", "RM acc. vs gold", "best-of-4 gold", "policy gold",
              "RM acc. on fresh labels"]  # fmt: skip
    rows = []
    for strategy, rounds in results[first].items():
        rows.append([strategy, 0, 0, None, None, rounds[0].get("gold_initial"), None])
        for r in rounds:
            rows.append([
                strategy, r["round"], r["labels_total"], r.get("rm_gold_accuracy"),
                r.get("best_of_n_gold"), r.get("gold"), r.get("rm_accuracy_fresh"),
            ])  # fmt: skip
    print(f"seed {first}:")
    print(format_table(header, rows))
    if len(args.seeds) > 1:
        print(f"mean over seeds {args.seeds}; active − random paired by seed (± standard error):")
        print(format_table(*seed_summary(results, args.strategies)))
    plot = plot_label_efficiency(
        results[first], root / "label_efficiency.png",
        f"active against random selection, seed {first}",
    )  # fmt: skip
    print(f"plot: {plot}")
    print(json.dumps({"seeds": args.seeds, "results": results}))
    sys.stdout.flush()


MEASURES = ("rm_gold_accuracy", "best_of_n_gold", "gold")


def seed_summary(
    results: dict[int, dict[str, list[dict[str, Any]]]], strategies: list[str]
) -> tuple[list[str], list[list[Any]]]:
    """Per round: each measure's mean over seeds for every arm, and each active arm's paired
    difference from random (mean ± standard error over seeds)."""
    from rlhf.eval.stats import mean_and_se

    seeds = list(results)
    rounds = min(len(results[s][a]) for s in seeds for a in strategies)
    header = ["round", "labels", "measure", *strategies]
    active = [a for a in strategies if a != "random"] if "random" in strategies else []
    header += [f"{a} − random" for a in active]
    rows = []
    for index in range(rounds):
        labels = results[seeds[0]][strategies[0]][index]["labels_total"]
        for measure in MEASURES:
            values = {a: [results[s][a][index][measure] for s in seeds] for a in strategies}
            row: list[Any] = [index + 1, labels, measure]
            row += [mean_and_se(values[a])[0] for a in strategies]
            for a in active:
                mean, se = mean_and_se(
                    [x - y for x, y in zip(values[a], values["random"], strict=True)]
                )
                row.append(f"{mean:+.4f} ± {se:.4f}")
            rows.append(row)
    return header, rows


if __name__ == "__main__":
    main()
