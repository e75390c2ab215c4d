"""PPO on a real pretrained model: teach stories260K to mention a word, at a bounded KL.

An experiment, not a timing benchmark (the DPO counterpart is ``dpo_stories.py``, whose
prompts and word matching this script reuses):

1. Prompts are story openings ("Once upon a time, there was a little girl named Lily. She"),
   split into training prompts and held-out prompts (disjoint).
2. The reward is a rule: 1 when the story contains the target word as a whole word in any
   case (``reward.regex`` ``(?i)\\bplay\\b``), else 0. "play" is the word the DPO experiment
   picks (base rate about 14 % on held-out prompts).
3. :func:`rlhf.recipes.ppo.run_ppo` trains the policy and a critic (the base model with a
   fresh value head) from ``../shared/models/stories260K``: K stories per prompt per
   rollout at temperature 1, β·k1 per token in the reward (adaptive β with ``--kl-target``),
   GAE, whitened advantages, ``ppo_epochs`` passes of clipped updates.
4. The recipe's held-out evaluation, before training and after: the word's rate in
   ``eval_samples`` stories per held-out prompt (the reward's mean) and the sampled
   KL(π‖π_ref) on those same stories (k1 summed over the response, averaged: unbiased).

Responses are cut at ``--max-new-tokens`` (stories this short rarely end), so the rate and the
KL are those of the first ``max_new_tokens`` tokens of a story.

    python benchmarks/ppo_stories.py               # about 2 minutes on 2 cores
    python benchmarks/ppo_stories.py --json-only

Last stdout line: one JSON object (``word``, ``base_rate``, ``rate``, ``kl``, ``kl_coef``,
``iterations``, ``wall_s``); progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _harness import format_table, progress
from dpo_stories import STORIES, story_prompts, write_jsonl


@dataclass(frozen=True)
class Settings:
    """The experiment's size; the test uses a smaller one than the script."""

    word: str = "play"
    train_prompts: int = 104
    held_out_prompts: int = 40
    iterations: int = 12
    prompts_per_iteration: int = 32
    samples_per_prompt: int = 4
    ppo_epochs: int = 2
    minibatch_size: int = 64
    eval_samples: int = 8  # stories per held-out prompt for the rate and the KL
    max_new_tokens: int = 32
    lr: float = 3e-4
    kl_coef: float = 0.05
    kl_target: float | None = None  # adaptive β towards this sequence KL (nats)
    kl_horizon: int = 1000  # episodes over which the adaptive β moves (Ziegler et al.)
    seed: int = 0


def ppo_config(settings: Settings, work_dir: Path, model_path: Path) -> Any:
    from rlhf.recipes.ppo import PPOConfig

    prompts = story_prompts(settings.train_prompts + settings.held_out_prompts, settings.seed)
    train_file = write_jsonl(
        [{"prompt": p} for p in prompts[: settings.train_prompts]], work_dir / "train.jsonl"
    )
    eval_file = write_jsonl(
        [{"prompt": p} for p in prompts[settings.train_prompts :]], work_dir / "eval.jsonl"
    )
    return PPOConfig.model_validate(
        {
            "out": str(work_dir / "ppo"),
            "overwrite": True,
            "progress": False,
            "tensorboard": False,
            "model": {"path": str(model_path)},
            "data": {"prompts": str(train_file), "eval_prompts": str(eval_file)},
            "reward": {"regex": rf"(?i)\b{settings.word}\b"},
            "sampling": {
                "max_new_tokens": settings.max_new_tokens,
                "temperature": 1.0,
                "batch_size": 256,
            },
            "rollout": {
                "iterations": settings.iterations,
                "prompts_per_iteration": settings.prompts_per_iteration,
                "samples_per_prompt": settings.samples_per_prompt,
                "ppo_epochs": settings.ppo_epochs,
                "minibatch_size": settings.minibatch_size,
            },
            "kl": {
                "coef": settings.kl_coef,
                "target": settings.kl_target,
                "horizon": settings.kl_horizon,
            },
            "train": {
                "batch_size": settings.minibatch_size,
                "lr": settings.lr,
                "schedule": "constant",
                "seed": settings.seed,
            },
            "eval": {
                "prompts": settings.held_out_prompts,
                "samples_per_prompt": settings.eval_samples,
                "greedy": False,
            },
        }
    )


def run_experiment(settings: Settings, work_dir: Path, model_path: Path = STORIES) -> dict:
    """Train with PPO and return the held-out figures before and after."""
    from rlhf.recipes.ppo import run_ppo

    start = time.perf_counter()
    config = ppo_config(settings, work_dir, model_path)
    progress(
        f"PPO on {model_path.name}: reward = 'contains {settings.word!r}', "
        f"{settings.iterations} iterations of {config.episodes_per_iteration} stories"
    )
    result = run_ppo(config)
    before = json.loads((work_dir / "ppo" / "eval_initial.json").read_text(encoding="utf-8"))
    after = next(
        {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_")}
        for row in reversed(result.metrics)
        if "eval_reward" in row
    )
    rollouts = [row for row in result.metrics if "rollout_reward" in row]
    return {
        "settings": asdict(settings),
        "word": settings.word,
        "base_rate": before["reward"],
        "rate": after["reward"],
        "kl": after["kl"],
        "kl_coef": rollouts[-1]["rollout_kl_coef"],
        "rollout_rates": [row["rollout_reward"] for row in rollouts],
        "rollout_kls": [row.get("rollout_kl", 0.0) for row in rollouts],
        "steps": result.final_step,
        "wall_s": time.perf_counter() - start,
    }


def report(figures: dict, *, json_only: bool = False) -> dict[str, Any]:
    """Print the table (unless ``json_only``) and the final JSON line; returns that line."""
    line = {
        "experiment": "ppo_stories",
        "word": figures["word"],
        "base_rate": round(figures["base_rate"], 4),
        "rate": round(figures["rate"], 4),
        "kl": round(figures["kl"], 4),
        "kl_coef": round(figures["kl_coef"], 5),
        "iterations": figures["settings"]["iterations"],
        "wall_s": round(figures["wall_s"], 1),
    }
    if not json_only:
        rows = [
            ["base", f"{figures['base_rate']:.3f}", "0"],
            ["ppo", f"{figures['rate']:.3f}", f"{figures['kl']:.2f}"],
        ]
        print(format_table(["policy", f"rate of {figures['word']!r}", "KL (nats)"], rows))
        rates = ", ".join(f"{rate:.2f}" for rate in figures["rollout_rates"])
        print(f"rollout rates by iteration: {rates}")
    print(json.dumps(line))
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    parser.add_argument("--word", default=defaults.word)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--kl-coef", type=float, default=defaults.kl_coef)
    parser.add_argument("--kl-target", type=float, default=None)
    parser.add_argument("--kl-horizon", type=int, default=defaults.kl_horizon)
    parser.add_argument("--ppo-epochs", type=int, default=defaults.ppo_epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", type=Path, default=STORIES)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.model.exists():
        sys.exit(f"{args.model} is absent (the ../shared assets are not beside this checkout)")
    settings = Settings(
        word=args.word,
        iterations=args.iterations,
        lr=args.lr,
        kl_coef=args.kl_coef,
        kl_target=args.kl_target,
        kl_horizon=args.kl_horizon,
        ppo_epochs=args.ppo_epochs,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as work:
        report(run_experiment(settings, Path(work), args.model), json_only=args.json_only)


if __name__ == "__main__":
    main()
