"""Scaling out on one machine with Ray: GRPO with a rollout worker beside the trainer, and SFT
with FSDP2 data parallelism, each against one process using all the cores.

Every run is our ``rlhf`` command (``python -m rlhf.cli``) in a fresh process, strictly one at
a time, and every figure comes from the run's own ``metrics.jsonl``.

**GRPO, episodes/s.** Configurations (``--configs``), on a machine of C cores (2 here):

* ``sync``: one process, torch on all C cores (``OMP_NUM_THREADS=C``), no ``distributed.*``
  keys: sample, score, then train, in turn;
* ``async``: ``distributed.rollout_workers=1 distributed.max_staleness=1
  distributed.cpus_per_worker=C/2``: a Ray actor samples with its copy of the policy while the
  training rank trains (rollout k+1 is sampled by the policy after k − 1 updates while rollout
  k trains: one-step off-policy), each with C/2 threads, weights pushed and verified after
  every update; the driver holds no model and waits;
* ``async-engine``: ``async`` with ``mismatch.old_logps=engine``: π_old in PPO's ratio is the
  log-probs the worker sampled with, so the trainer runs no forward pass of its own over the
  rollout (the worker computes them while sampling anyway);
* ``async-roles``: ``async-engine`` plus ``distributed.reference_workers=1``: π_ref's
  log-probs on a third actor (three processes on C cores here: it shows the cost of a role
  without cores of its own);
* ``sync-worker``: the same two workers with ``distributed.max_staleness=0``: the trainer
  waits for each rollout, so this is what the overlap itself brings (``async`` against it)
  and what the split costs (it against ``sync-1t``);
* ``sync-1t``: one process on one core (``OMP_NUM_THREADS=1``): the reference for how much
  the C threads speed the single process up.

Workloads (``--workloads``), both the GRPO ``tiny`` preset's model (Llama, hidden 128, 2
layers, vocabulary 512) and its RL settings (16 prompts x 8 samples per iteration, two
optimiser steps of 64 episodes, k3 KL in the loss with β = 0.04):

* ``arithmetic``: the preset as it is, 40 iterations: two-digit sums with the 0/1 rule reward;
  responses are about 6 tokens, so sampling is the small part of an iteration;
* ``world``: the embedded world (``rlhf.sim``): the starting policy fine-tuned on
  ``builtin:world-sft`` (4,000 demonstrations, 200 steps), then GRPO on ``builtin:world-prompts``
  (train split) with the continuous gold reward ``world_gold``, temperature 1, at most 48 new
  tokens (responses about 22 tokens), 20 iterations; evaluated on the 72 prompts of the
  held-out split.

The init-SFT phase is run once per workload (``rlhf.recipes.lm.initial_policy``, the function
the recipe calls, in its own process at C threads) and every GRPO run starts from that model
(``init_sft=null model.path=...``), so all configurations and seeds start from the same
weights and no run's timing contains it. ``--seeds`` sets ``train.seed`` (prompt order and
sampling of the RL phase).

Timing: ``metrics.jsonl``'s ``time`` is the seconds since the trainer's loop began, read at
the end of each optimiser step. It leaves out the process start, imports, Ray's start and the
placement of the workers, loading the model, building the rollout worker's engine and the
initial evaluation, and the final evaluation and checkpoint come after the last step: fixed
costs of a run, not of its rate. An iteration ends with the last step before the next
rollout's first step (the row with ``rollout_iteration``). **episodes/s** counts the episodes
(prompts x samples) of iterations ``--warmup`` + 1 … last over the seconds from the end of
iteration ``--warmup`` to the end of the last one: the steady state, with the first rollout
(which nothing overlaps) and the first steps' lazy initialisation left out. The median over the
seeds is the figure; ``whole RL eps/s`` is all iterations over the last step's ``time``. The
**ratio** is ``async`` / ``sync`` (every configuration's own ratio to ``sync`` is in
``ratios``, the best in ``best``); the issue's target is 1.4x.

Where an iteration's time goes (medians over the measured iterations): ``iter s``; for the
worker configurations ``generate s`` (``rollout_engine_generate_seconds``: the worker's
``engine.generate``, its own sampling log-probs included), ``wait s``
(``rollout_wait_seconds``: the trainer's wait for the rollout plus its own log-probs of it,
the forward pass ``RemoteEngine.finish`` runs) and ``sync s`` (``rollout_engine_sync_seconds``:
gathering and putting the weights into Ray's object store; the receipt is checked later).

Learning (so that "equal learning within noise" can be judged), mean over the seeds: the final
evaluation's greedy reward (``arithmetic``: exact-match accuracy on the preset's 32 prompts,
which it trains on; ``world``: the gold reward on the held-out prompts), its sampled reward,
and the mean ``rollout_reward`` over the last quarter of the iterations.

**SFT, tokens/s.** ``rlhf sft --preset tiny`` (the same model on two-digit sums, about 13
tokens a sequence) for ``--warmup`` + ``--steps`` steps, no evaluation or checkpoint in between:
one process with C threads against ``distributed.train_workers=2 distributed.cpus_per_worker=
C/2`` (FSDP2 over gloo, the global batch split over the ranks), at the preset's batch of 32 and
at 256 (``--sft-batches``). tokens/s = the tokens of the steps after the warm-up (every rank's:
the engine sums them) over their seconds; the losses of the two must agree step by step
(``max |Δloss|``).

    .venv/bin/python benchmarks/bench_scale.py                  # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/bench_scale.py --workloads arithmetic --seeds 1 --configs sync,async
    .venv/bin/python benchmarks/bench_scale.py --skip-grpo --steps 10 --json-only

Run it on an idle machine: on 2 cores a second busy process slows whichever run is going by a
large factor (torch's threads spin at their barriers), and the figures say nothing then; the
1-minute load average at the start is printed. Last stdout line: one JSON object
``{"benchmark": "scale", "cpu": ..., "grpo": {...}, "sft": {...}}`` (see the README).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    CHILD_ENV,
    cpu_description,
    format_table,
    parse_list,
    progress,
    run_in_child,
)

BENCHMARK = "scale"
TARGET = 1.4  # issue 18: async ≥ 1.4x the synchronous single process
CORES = os.cpu_count() or 2
HALF = max(1, CORES // 2)
RUN_TIMEOUT_S = 900

# key=value overrides of the GRPO tiny preset: those of its init-SFT phase, and the RL phase's
WORKLOADS: dict[str, dict[str, Any]] = {
    "arithmetic": {"init": [], "rl": [], "iterations": 40},
    "world": {
        "init": [
            "init_sft.data.train=builtin:world-sft?n=4000",
            "init_sft.data.max_length=96",
            "init_sft.train.max_steps=200",
            "init_sft.train.lr=1e-3",
        ],
        "rl": [
            "data.prompts=builtin:world-prompts?n=2000&split=train",
            "data.eval_prompts=builtin:world-prompts?n=80&split=eval",
            "reward.rule=world_gold",
            "sampling.max_new_tokens=48",
            "sampling.temperature=1.0",
            "eval.prompts=80",
        ],
        "iterations": 20,
    },
}
ASYNC_KEYS = ["distributed.rollout_workers=1", f"distributed.cpus_per_worker={HALF}"]
# name -> (torch threads of the process the command starts, overrides, what it is)
CONFIGS: dict[str, tuple[int, list[str], str]] = {
    "sync": (CORES, [], f"1 process, {CORES} threads"),
    "async": (1, [*ASYNC_KEYS, "distributed.max_staleness=1"], "worker + trainer, 1-step off"),
    "async-engine": (
        1,
        [*ASYNC_KEYS, "distributed.max_staleness=1", "mismatch.old_logps=engine"],
        "async, π_old the worker's log-probs",
    ),
    "async-roles": (
        1,
        [
            *ASYNC_KEYS,
            "distributed.max_staleness=1",
            "mismatch.old_logps=engine",
            "distributed.reference_workers=1",
        ],
        "async-engine + a reference worker",
    ),
    "sync-worker": (1, [*ASYNC_KEYS, "distributed.max_staleness=0"], "worker + trainer, sync"),
    "sync-1t": (1, [], "1 process, 1 thread"),
}
QUIET = ["progress=false", "tensorboard=false", "overwrite=true"]


# ---------------------------------------------------------------- runs


def prepare_policy(out: str, overrides: list[str], threads: int) -> dict[str, Any]:
    """The GRPO tiny preset's init-SFT phase with ``overrides``, trained into ``out`` exactly
    as the recipe would (run in a child process); returns the model's folder."""
    import torch

    torch.set_num_threads(threads)
    from rlhf.config import load_config, read_yaml
    from rlhf.recipes.lm import initial_policy
    from rlhf.recipes.registry import recipe

    entry = recipe("grpo")
    config = load_config(
        entry.config_class(),
        None,
        [f"out={out}", "progress=false", "tensorboard=false", *overrides],
        base=read_yaml(entry.preset_file("tiny")),
    )
    return {"path": initial_policy(config, config.init_sft, Path(out), False)}


def run_cli(recipe: str, out: Path, threads: int, overrides: list[str]) -> float:
    """``rlhf <recipe> --preset tiny out=OUT ...`` in a fresh process with ``threads`` torch
    threads; its output goes to ``OUT.log``. Returns the wall seconds; raises on failure."""
    command = [
        sys.executable,
        "-m",
        "rlhf.cli",
        recipe,
        "--preset",
        "tiny",
        f"out={out}",
        *QUIET,
        *overrides,
    ]
    env = os.environ | CHILD_ENV | {"OMP_NUM_THREADS": str(threads)}
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        completed = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=RUN_TIMEOUT_S
        )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-30:])
        sys.exit(f"`{' '.join(command)}` failed (exit {completed.returncode}):\n{tail}")
    return wall


def metric_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's training rows (step order) and evaluation rows."""
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    train = sorted(
        (r for r in rows if r.get("split", "train") == "train" and "time" in r),
        key=lambda r: r["step"],
    )
    return train, [r for r in rows if r.get("split") == "eval"]


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def grpo_figures(out: Path, warmup: int) -> dict[str, Any]:
    """One GRPO run's rate, phase times and learning, from its metrics.jsonl."""
    train, evals = metric_rows(out)
    firsts = [i for i, row in enumerate(train) if "rollout_iteration" in row]
    ends = [train[i - 1]["time"] for i in firsts[1:]] + [train[-1]["time"]]  # iteration ends
    starts = [0.0, *ends[:-1]]
    episodes = [train[i]["rollout_episodes"] for i in firsts]
    iterations = len(firsts)
    if iterations <= warmup:
        sys.exit(f"{out}: {iterations} iterations, not more than --warmup {warmup}")
    measured = [train[i] for i in firsts[warmup:]]
    rewards = [row["rollout_reward"] for row in (train[i] for i in firsts)]
    last = max(1, iterations // 4)
    final = evals[-1] if evals else {}
    return {
        "episodes_per_s": sum(episodes[warmup:]) / (ends[-1] - ends[warmup - 1])
        if warmup
        else sum(episodes) / ends[-1],
        "whole_episodes_per_s": sum(episodes) / ends[-1],
        "rl_seconds": ends[-1],
        "iterations": iterations,
        "iteration_s": statistics.median(
            end - start for start, end in list(zip(starts, ends, strict=True))[warmup:]
        ),
        "generate_s": median_of(measured, "rollout_engine_generate_seconds"),
        "wait_s": median_of(measured, "rollout_wait_seconds"),
        "sync_s": median_of(measured, "rollout_engine_sync_seconds"),
        "staleness": median_of(measured, "rollout_staleness"),
        "eval_greedy_reward": final.get("greedy_reward"),
        "eval_reward": final.get("reward"),
        "eval_kl": final.get("kl"),
        "rollout_reward_last": statistics.fmean(rewards[-last:]),
    }


def sft_figures(out: Path, warmup: int) -> dict[str, Any]:
    train, _ = metric_rows(out)
    if len(train) <= warmup:
        sys.exit(f"{out}: {len(train)} steps, not more than --warmup {warmup}")
    ends = [0.0] + [row["time"] for row in train]
    seconds = [b - a for a, b in itertools.pairwise(ends)]
    begin = ends[warmup]
    return {
        "tokens_per_s": sum(r["tokens"] for r in train[warmup:]) / (ends[-1] - begin),
        "median_step_ms": 1000 * statistics.median(seconds[warmup:]),
        "tokens_per_step": statistics.fmean(r["tokens"] for r in train),
        "final_loss": train[-1]["loss"],
        "losses": [r["loss"] for r in train],
    }


def summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration over its seeds: medians of the rates and times, means of the
    learning figures, and the per-seed values of the main ones."""

    def over(key: str, average: Any) -> float | None:
        values = [run[key] for run in seeds if run[key] is not None]
        return average(values) if values else None

    rates = ("episodes_per_s", "whole_episodes_per_s", "iteration_s", "rl_seconds", "wall_s")
    times = ("generate_s", "wait_s", "sync_s", "staleness")
    learning = ("eval_greedy_reward", "eval_reward", "eval_kl", "rollout_reward_last")
    return {
        **{key: over(key, statistics.median) for key in (*rates, *times)},
        **{key: over(key, statistics.fmean) for key in learning},
        "episodes_per_s_seeds": [run["episodes_per_s"] for run in seeds],
        "eval_greedy_reward_seeds": [run["eval_greedy_reward"] for run in seeds],
        "rollout_reward_last_seeds": [run["rollout_reward_last"] for run in seeds],
    }


# ---------------------------------------------------------------- the two parts


def bench_grpo(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for workload in args.workloads:
        spec = WORKLOADS[workload]
        iterations = args.iterations or spec["iterations"]
        progress(f"{workload}: init SFT (once, {CORES} threads)")
        started = time.perf_counter()
        init = run_in_child(
            prepare_policy,
            timeout=RUN_TIMEOUT_S,
            out=str(root / f"{workload}-init"),
            overrides=spec["init"],
            threads=CORES,
        )
        progress(f"{workload}: init SFT took {time.perf_counter() - started:.1f} s")
        base = [
            "init_sft=null",
            "model.tiny=null",
            f"model.path={init['path']}",
            *spec["rl"],
            f"rollout.iterations={iterations}",
        ]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
        for seed in args.seeds:
            for name in args.configs:  # the configurations alternate within each seed
                threads, keys, _ = CONFIGS[name]
                out = root / f"{workload}-{name}-{seed}"
                wall = run_cli("grpo", out, threads, [*base, f"train.seed={seed}", *keys])
                figures = grpo_figures(out, args.warmup_iterations) | {"wall_s": wall}
                runs[name].append(figures)
                progress(
                    f"{workload} {name} seed {seed}: {figures['episodes_per_s']:.1f} episodes/s, "
                    f"iteration {figures['iteration_s']:.3f} s, eval greedy "
                    f"{figures['eval_greedy_reward']}, wall {wall:.1f} s"
                )
        summary = {name: summarise(seeds) for name, seeds in runs.items()}
        ratio = None
        if "sync" in summary and "async" in summary:
            ratio = summary["async"]["episodes_per_s"] / summary["sync"]["episodes_per_s"]
        ratios = {
            name: figures["episodes_per_s"] / summary["sync"]["episodes_per_s"]
            for name, figures in summary.items()
            if "sync" in summary and name != "sync"
        }
        results[workload] = {
            "iterations": iterations,
            "warmup_iterations": args.warmup_iterations,
            "seeds": args.seeds,
            "configs": summary,
            "ratio": ratio,
            "ratios": ratios,  # every configuration against the synchronous single process
            "meets_target": None if ratio is None else ratio >= TARGET,
            "best": max(ratios.items(), key=lambda item: item[1], default=(None, None)),
        }
    return results


def bench_sft(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    steps = args.warmup + args.steps
    base = [f"train.max_steps={steps}", "train.eval_every=0", "train.save_every=0"]
    for batch in args.sft_batches:
        sides = {}
        for name, threads, keys in (
            ("dp1", CORES, []),
            ("dp2", 1, ["distributed.train_workers=2", f"distributed.cpus_per_worker={HALF}"]),
        ):
            out = root / f"sft-{batch}-{name}"
            wall = run_cli("sft", out, threads, [*base, f"train.batch_size={batch}", *keys])
            sides[name] = sft_figures(out, args.warmup) | {"wall_s": wall}
            progress(f"sft batch {batch} {name}: {sides[name]['tokens_per_s']:.0f} tokens/s")
        gaps = [
            abs(a - b) for a, b in zip(sides["dp1"]["losses"], sides["dp2"]["losses"], strict=True)
        ]
        for side in sides.values():
            del side["losses"]
        results[f"batch_{batch}"] = {
            "batch": batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "dp1": sides["dp1"],
            "dp2": sides["dp2"],
            "ratio": sides["dp2"]["tokens_per_s"] / sides["dp1"]["tokens_per_s"],
            "max_abs_loss_diff": max(gaps),
        }
    return results


# ---------------------------------------------------------------- output


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def print_tables(grpo: dict[str, Any], sft: dict[str, Any]) -> None:
    for workload, result in grpo.items():
        print(
            f"\nGRPO, {workload}: {result['iterations']} iterations x 128 episodes, "
            f"episodes/s over iterations {result['warmup_iterations'] + 1}-"
            f"{result['iterations']} (median of seeds {result['seeds']})"
        )
        sync = result["configs"].get("sync", {}).get("episodes_per_s")
        header = [
            "config",
            "what",
            "eps/s",
            "x sync",
            "whole RL eps/s",
            "iter s",
            "generate s",
            "wait s",
            "sync s",
            "eval greedy",
            "eval reward",
            "rollout reward (last 1/4)",
        ]
        rows = [
            [
                name,
                CONFIGS[name][2],
                c["episodes_per_s"],
                c["episodes_per_s"] / sync if sync else None,
                c["whole_episodes_per_s"],
                c["iteration_s"],
                c["generate_s"],
                c["wait_s"],
                c["sync_s"],
                c["eval_greedy_reward"],
                c["eval_reward"],
                c["rollout_reward_last"],
            ]
            for name, c in result["configs"].items()
        ]
        print(format_table(header, rows))
        if result["ratio"] is not None:
            verdict = "meets" if result["meets_target"] else "does not meet"
            print(f"async / sync = {result['ratio']:.2f}x: {verdict} the {TARGET}x target")
    for result in sft.values():
        print(
            f"\nSFT tiny preset, batch {result['batch']}: tokens/s over {result['steps']} "
            f"steps after {result['warmup']} warm-up"
        )
        header = ["config", "tokens/s", "median ms/step", "tokens/step", "final loss"]
        rows = [
            [
                f"DP=1, 1 process x {CORES} threads",
                *(
                    result["dp1"][k]
                    for k in ("tokens_per_s", "median_step_ms", "tokens_per_step", "final_loss")
                ),
            ],
            [
                f"DP=2, 2 ranks x {HALF} thread(s)",
                *(
                    result["dp2"][k]
                    for k in ("tokens_per_s", "median_step_ms", "tokens_per_step", "final_loss")
                ),
            ],
        ]
        print(format_table(header, rows))
        print(
            f"DP=2 / DP=1 = {result['ratio']:.2f}x; max |Δloss| over the steps "
            f"{result['max_abs_loss_diff']:.2e}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--workloads",
        type=lambda t: parse_list(t, tuple(WORKLOADS)),
        default=list(WORKLOADS),
        help="GRPO workloads (default arithmetic,world)",
    )
    parser.add_argument(
        "--configs",
        type=lambda t: parse_list(t, tuple(CONFIGS)),
        default=list(CONFIGS),
        help="GRPO configurations (default: all of them)",
    )
    parser.add_argument(
        "--seeds",
        type=lambda t: [int(s) for s in parse_list(t)],
        default=[0, 1],
        help="train.seed of the GRPO runs, comma-separated (default 0,1)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="GRPO iterations (default: arithmetic 40, world 20)",
    )
    parser.add_argument(
        "--warmup-iterations",
        type=int,
        default=3,
        help="GRPO iterations left out of episodes/s (default %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=30, help="measured SFT steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="SFT warm-up steps (default 5)")
    parser.add_argument(
        "--sft-batches",
        type=lambda t: [int(s) for s in parse_list(t)],
        default=[32, 256],
        help="SFT batch sizes (default 32,256)",
    )
    parser.add_argument("--skip-grpo", action="store_true")
    parser.add_argument("--skip-sft", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON result line on stdout"
    )
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ray") is None:
        sys.exit("bench_scale.py needs Ray: pip install -e '.[distributed]'")
    if args.warmup_iterations < 0 or args.warmup < 0 or args.steps < 1:
        sys.exit("--warmup-iterations and --warmup must be at least 0, --steps at least 1")

    load = os.getloadavg()[0]
    progress(f"{cpu_description()}; 1-minute load average at the start {load:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        grpo = {} if args.skip_grpo else bench_grpo(args, root)
        sft = {} if args.skip_sft else bench_sft(args, root)
    result = rounded(
        {
            "benchmark": BENCHMARK,
            "cpu": cpu_description(),
            "load_at_start": load,
            "grpo": grpo,
            "sft": sft,
        }
    )
    if not args.json_only:
        print(cpu_description())
        print(f"1-minute load average at the start: {load:.2f}")
        print_tables(result["grpo"], result["sft"])
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
