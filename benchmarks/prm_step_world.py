"""Process reward models on the embedded step world, end to end: choosing one of N solutions,
and RL with the PRM against RL with the outcome reward.

An experiment, not a timing benchmark; every number it prints is measured against the step
world's gold checker (``rlhf.sim.steps``). Seeded; one run from nothing:

1. **Policy.** A 2-layer Llama from scratch, fine-tuned 300 steps on 4,000 canonical step-by-step
   solutions (``builtin:step-sft``).
2. **PRM.** Initialised from that policy, 2,000 steps on 16,000 noisy solutions whose every step
   the checker labelled (``builtin:step-solutions``, ``rlhf prm``); held-out step and
   first-error accuracy. With ``--prm-data policy`` the 16,000 solutions are the policy's own
   samples (temperature 1) on other training problems, each step labelled by the checker: the
   mistakes the PRM learns are then the ones the policy makes.
3. **ORM.** The same start and budget on outcome labels of the same kind of noisy solutions
   (``builtin:step-outcomes``: thumbs up when the final answer is right, ``rlhf rm``).
4. **Choosing one of N.** ``--max-n`` solutions sampled per held-out problem once, then the
   accuracy of the solution each selector chooses among N = 1, 2, 4, ...
   (:mod:`rlhf.eval.step_selection`: PRM by product / min / last step, ORM, majority and
   PRM-weighted voting, and the oracle), as ``rlhf best-of-n --prm`` computes it.
5. **RL.** From the policy, on the same training problems, each for ``--iterations`` rollouts of
   32 problems × 8 samples: PPO with the outcome reward (the checker's 0/1), with the PRM's
   product as the outcome reward, and with the PRM dense (``reward.prm_dense``: each step's
   reward on its last token); GRPO with the outcome reward and with process supervision
   (``grpo.process``). Held-out accuracy (sampled at temperature 1 and greedy) and KL along
   training.

    python benchmarks/prm_step_world.py                       # about 25 minutes on 2 cores
    python benchmarks/prm_step_world.py --runs ppo-outcome ppo-prm-dense --iterations 40
    python benchmarks/prm_step_world.py --out runs/prm-world  # keep the models, samples, plots

Writes (under ``--out``, a temporary folder by default) every run's folder, ``selection.png``
and ``report.md`` of the best-of-N comparison, and ``rl_curves.png``. Last stdout line: one
JSON object (``prm`` step and first-error accuracy, ``orm`` pair accuracy, ``selection``: each
selector's accuracy at each N, ``rl``: each run's held-out accuracies along training and its
last KL); progress notes go to stderr.
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

TRAIN_PROBLEMS = "builtin:step-problems?n=4000&seed=0&split=train"
HELD_OUT = "builtin:step-problems?n=128&seed=7&split=eval"
QUIET = {"overwrite": True, "progress": False, "tensorboard": False}
SFT = {
    "model": {"tiny": TINY},
    "data": {"train": "builtin:step-sft?n=4000&split=train", "max_length": 96},
    "train": {"max_steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20,
              "min_lr_ratio": 0.1, "eval_every": 0, "save_every": 0},
}  # fmt: skip
PRM = {
    "data": {"train": "builtin:step-solutions?n=16000&seed=0&error_rate=0.3&split=train",
             "eval_fraction": 0.1, "max_length": 128},
    "train": {"max_steps": 2000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 20,
              "min_lr_ratio": 0.1, "eval_every": 500, "save_every": 0},
}  # fmt: skip
ORM = {
    "data": {"train": "builtin:step-outcomes?n=4000&seed=0&error_rate=0.3&split=train",
             "eval_fraction": 0.1, "max_length": 96},
    "train": {"max_steps": 2000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 20,
              "min_lr_ratio": 0.1, "eval_every": 500, "save_every": 0},
}  # fmt: skip
RL = {
    "data": {"prompts": TRAIN_PROBLEMS, "eval_prompts": HELD_OUT},
    "sampling": {"max_new_tokens": 80, "temperature": 1.0, "batch_size": 256},
    "rollout": {"prompts_per_iteration": 32, "samples_per_prompt": 8, "ppo_epochs": 1,
                "minibatch_size": 128},
    "train": {"batch_size": 64, "lr": 5e-5, "warmup_steps": 0, "schedule": "constant"},
    "eval": {"prompts": 128, "samples_per_prompt": 2, "gold_reward": {"rule": "step_world"}},
}  # fmt: skip
PPO = {"kl": {"coef": 0.05, "estimator": "k1", "in_reward": True},
       "ppo": {"gamma": 1.0, "lam": 1.0, "vf_coef": 0.5, "value_clip_eps": 0.2}}  # fmt: skip
OUTCOME = {"rule": "step_world"}
RUNS = {  # name: (recipe, reward (PRM path filled in), recipe's own settings)
    "ppo-outcome": ("ppo", OUTCOME, PPO),
    "ppo-prm": ("ppo", {"prm": None}, PPO),
    "ppo-prm-dense": ("ppo", {"prm": None, "prm_dense": True}, PPO),
    "grpo-outcome": ("grpo", OUTCOME, {}),
    "grpo-process": ("grpo", {"prm": None}, {"grpo": {"process": True}}),
}


def train(name: str, out: Path, base: dict[str, Any], overrides: list[str]) -> Any:
    """Run recipe ``name`` (the registry's) on ``base`` + ``overrides`` into ``out``."""
    from rlhf.config import load_config
    from rlhf.recipes.registry import recipe

    entry = recipe(name)
    config = load_config(entry.config_class(), None, [f"out={out}", *overrides], base=base)
    return entry.run_function()(config)


def policy_solutions(root: Path, policy: Path, count: int, seed: int) -> Path:
    """``count`` solutions the policy samples (temperature 1) for training problems, each step
    labelled by the checker, as step records (JSON Lines) for ``rlhf prm``."""
    from rlhf.rollout.candidates import load_prompts_and_answers
    from rlhf.rollout.factory import load_engine
    from rlhf.rollout.types import SamplingParams
    from rlhf.sim.steps import check_steps, parse_problem, split_steps

    source = f"builtin:step-problems?n={count}&seed={seed + 1}&split=train"
    prompts, _ = load_prompts_and_answers(source, None)
    params = SamplingParams(max_new_tokens=80, temperature=1.0, num_samples=1, seed=seed)
    batch = load_engine(policy, batch_size=256).generate(prompts, params)
    path = root / "policy-solutions.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for prompt, text in zip(prompts, batch.response_texts, strict=True):
            steps = split_steps(text)
            if steps:  # an empty sample has no step to label
                labels = check_steps(parse_problem(prompt), steps)
                file.write(json.dumps({"prompt": prompt, "steps": steps, "labels": labels}) + "\n")
    return path


def last_eval(out: Path) -> dict[str, Any]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("split") == "eval"][-1]


def choose_one_of_n(root: Path, policy: Path, prm: Path, orm: Path, max_n: int, seed: int):
    """``rlhf best-of-n --prm`` on the held-out problems: the selection points."""
    from rlhf.eval.best_of_n import best_of_n_sizes, evaluate_best_of_n
    from rlhf.eval.step_selection import comparison, scored_candidates, selection_points
    from rlhf.recipes.best_of_n import write_markdown, write_report, write_selection
    from rlhf.rewards import RewardSpec, build_reward
    from rlhf.rewards.prm import ProcessReward
    from rlhf.rollout.candidates import load_prompts_and_answers
    from rlhf.rollout.factory import load_engine
    from rlhf.rollout.types import SamplingParams

    prompts, metadata = load_prompts_and_answers(HELD_OUT, None)
    engine = load_engine(policy, batch_size=256)
    params = SamplingParams(max_new_tokens=80, temperature=1.0, num_samples=max_n, seed=seed)
    report = evaluate_best_of_n(
        engine, prompts, params, build_reward(RewardSpec(model=str(orm))),
        build_reward(RewardSpec(rule="step_world")), prompt_metadata=metadata,
    )  # fmt: skip
    points = selection_points(
        scored_candidates(report.samples, ProcessReward(prm)),
        best_of_n_sizes(max_n),
        comparison(with_outcome=True),
    )
    out = root / "best-of-n"
    write_report(report, out)
    write_selection(points, out)
    write_markdown(report, points, out, f"{policy} on {HELD_OUT}, ORM {orm}, PRM {prm}")
    return points


def rl_run(name: str, root: Path, policy: Path, prm: Path, iterations: int, seed: int):
    """One RL run: its held-out evaluations along training (step 0 = the start policy)."""
    recipe, reward, own = RUNS[name]
    reward = {key: (str(prm) if value is None else value) for key, value in reward.items()}
    base = {**QUIET, **RL, **own, "model": {"path": str(policy)}, "reward": reward}
    base["rollout"] = {**RL["rollout"], "iterations": iterations}
    steps_per_iteration = 256 // 128  # episodes / minibatch, one epoch
    base["train"] = {**RL["train"], "seed": seed, "eval_every": 5 * steps_per_iteration}
    out = root / name
    started = time.perf_counter()
    train(recipe, out, base, [])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    initial = json.loads((out / "eval_initial.json").read_text())
    curve = [{"iteration": 0, **initial}] + [
        {"iteration": row["step"] // steps_per_iteration, **row}
        for row in rows
        if row.get("split") == "eval"
    ]
    return {
        "curve": [
            {"iteration": point["iteration"], "accuracy": round(point["gold_reward"], 4),
             "greedy": round(point["greedy_gold_reward"], 4), "kl": round(point.get("kl", 0), 4)}
            for point in curve
        ],
        "wall_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def plot_curves(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib is not installed: no rl_curves.png")
        return
    figure, (sampled, greedy) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for name, result in results.items():
        iterations = [point["iteration"] for point in result["curve"]]
        style = "--" if name.startswith("grpo") else "-"
        sampled.plot(iterations, [p["accuracy"] for p in result["curve"]], style, label=name)
        greedy.plot(iterations, [p["greedy"] for p in result["curve"]], style, label=name)
    sampled.set_title("held-out accuracy, sampled (T = 1)")
    greedy.set_title("held-out accuracy, greedy")
    for axes in (sampled, greedy):
        axes.set_xlabel("rollout iteration (32 problems × 8 samples)")
    sampled.set_ylabel("share of problems solved")
    sampled.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--iterations", type=int, default=100, help="RL rollout iterations")
    parser.add_argument("--max-n", type=int, default=64, help="largest N of the selection")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep everything here")
    parser.add_argument(
        "--prm-data",
        choices=("noisy", "policy"),
        default="noisy",
        help="the PRM's solutions: the noisy solver's (builtin) or the policy's own samples",
    )
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)

    root = args.out or Path(tempfile.mkdtemp(prefix="prm-step-world-"))
    seed = [f"train.seed={args.seed}"]
    started = time.perf_counter()
    progress(f"{cpu_description()}; writing under {root}")
    progress("policy: SFT on canonical step-by-step solutions")
    policy = Path(train("sft", root / "sft", {**QUIET, **SFT}, seed).model_dir)
    start = {**QUIET, "model": {"path": str(policy)}}
    prm_config = {**start, **PRM}
    if args.prm_data == "policy":
        progress("the policy's own solutions, each step labelled by the checker")
        solutions = policy_solutions(root, policy, 16000, args.seed)
        prm_config["data"] = {**PRM["data"], "train": str(solutions)}
    progress(f"PRM on checker-labelled solutions ({args.prm_data})")
    prm = Path(train("prm", root / "prm", prm_config, seed).model_dir)
    progress("ORM on outcome labels")
    orm = Path(train("rm", root / "orm", {**start, **ORM}, seed).model_dir)
    prm_eval, orm_eval = last_eval(root / "prm"), last_eval(root / "orm")
    progress(f"choosing one of N = 1 … {args.max_n}")
    points = choose_one_of_n(root, policy, prm, orm, args.max_n, args.seed)
    results = {}
    for name in args.runs:
        progress(f"RL: {name}, {args.iterations} iterations")
        results[name] = rl_run(name, root, policy, prm, args.iterations, args.seed)
    plot_curves(results, root / "rl_curves.png")

    selection: dict[str, dict[int, float]] = {}
    for point in points:
        selection.setdefault(point.selector, {})[point.n] = round(point.accuracy, 4)
    summary = {
        "prm": {key: round(prm_eval[key], 4) for key in ("step_accuracy", "first_error_accuracy")}
        | {"data": args.prm_data},
        "orm": {"accuracy": round(orm_eval["accuracy"], 4)},
        "selection": selection,
        "rl": results,
        "out": str(root),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if not args.json_only:
        ns = sorted({point.n for point in points})
        print(f"PRM held-out: step accuracy {prm_eval['step_accuracy']:.3f}, first-error "
              f"accuracy {prm_eval['first_error_accuracy']:.3f}; ORM pair accuracy "
              f"{orm_eval['accuracy']:.3f}")  # fmt: skip
        rows = [[name, *(f"{by_n[n]:.3f}" for n in ns)] for name, by_n in selection.items()]
        print(format_table(["selector", *(f"N={n}" for n in ns)], rows))
        header = ["run", "accuracy start", "end", "greedy start", "end", "KL", "s"]
        rows = [
            [name, r["curve"][0]["accuracy"], r["curve"][-1]["accuracy"], r["curve"][0]["greedy"],
             r["curve"][-1]["greedy"], r["curve"][-1]["kl"], r["wall_s"]]
            for name, r in results.items()
        ]  # fmt: skip
        print(format_table(header, rows))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
