"""bench_scale.py on CUDA GPUs: GRPO with a rollout worker beside the trainer against one
process, and FSDP2 data-parallel SFT on N GPUs against one.

GPU only (it stops with one line where torch sees no CUDA device, or Ray is missing). Every
run is our ``rlhf`` command in a fresh process, one at a time, and every figure comes from the
run's ``metrics.jsonl``, read by ``benchmarks/bench_scale.py``'s functions (the same timing
window and learning figures; its docstring explains them).

Model: a Llama built in code with seeded random weights (``rlhf.models.tiny.make_tiny_model``:
hidden 1024, 12 layers, 16 heads, MLP 2816, 512 positions, a byte-level BPE vocabulary trained
on ``builtin:world-text``, about 700 entries: the world's language is small; about 156M
parameters), fp32 weights. It is
fine-tuned once on ``builtin:world-sft`` (``rlhf sft``, 300 steps of 32 on the GPU), and every
GRPO run starts from that model: ``builtin:world-prompts`` (train split) with the world's gold
reward ``world_gold``, 32 prompts x 8 samples per iteration at temperature 1, at most 96 new
tokens, HF ``generate`` (``sampling.engine=hf``), two optimiser steps of 128 episodes, k3 KL
with β = 0.04, lr 1e-5, ``--iterations`` iterations (the first ``--warmup-iterations`` left out
of episodes/s). Configurations:

* ``sync``: one process on GPU 0 (``train.device=cuda``);
* ``async``: ``distributed.rollout_workers=1 distributed.max_staleness=1``: the rollout
  worker samples rollout k+1 while the training rank trains on rollout k. With one GPU both
  share it (``distributed.gpus_per_worker=0.5``: Ray shows it to both; their kernels
  time-slice the GPU, so the overlap is of one side's GPU work with the other's host-side
  work); with two or more each has its own (``gpus_per_worker=1``);
* ``sync-worker``: the same with ``max_staleness=0`` (what the overlap alone brings).

``--bf16`` trains with ``train.mixed_precision=bf16`` (the single process then also samples
under bf16 autocast, while a rollout worker always samples in float32: ``RolloutWorker.setup``
loads its copy in float32), so the default is float32 everywhere.

SFT, when N ≥ 2 GPUs are visible: the built model on ``builtin:world-sft`` (sequences up to
128 tokens), a global batch of ``--sft-batch-per-gpu`` x N, ``--warmup`` + ``--steps`` steps:
one process on one GPU against ``distributed.train_workers=N distributed.gpus_per_worker=1``
(FSDP2 over NCCL, the batch split over the ranks); tokens/s after the warm-up and the largest
step-by-step loss difference. With one GPU this part is skipped (NCCL does not run two ranks
on one device).

    pip install -e '.[distributed]'     # in the GPU environment (a CUDA build of torch)
    python benchmarks/gpu/bench_scale_gpu.py
    python benchmarks/gpu/bench_scale_gpu.py --iterations 6 --seeds 0 --json-only

Last stdout line: one JSON object ``{"benchmark": "scale_gpu", "gpus": [...], "grpo": {...},
"sft": {...}}`` in bench_scale.py's shapes; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_scale

from bench_scale import (
    format_table,
    grpo_figures,
    progress,
    rounded,
    run_cli,
    sft_figures,
    summarise,
)

MODEL = {
    "vocab_size": 4000,
    "hidden_size": 1024,
    "num_layers": 12,
    "num_heads": 16,
    "intermediate_size": 2816,
    "max_position_embeddings": 512,
}
CPUS_PER_WORKER = 4
HOST_THREADS = 8  # torch CPU threads of a single process (its GPU does the work)


def require_gpus() -> list[str]:
    """The visible GPUs' names, or exit with one line saying what is missing."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_scale_gpu.py needs a CUDA GPU and torch sees none: run it on one")
    if importlib.util.find_spec("ray") is None:
        sys.exit("bench_scale_gpu.py needs Ray: pip install -e '.[distributed]'")
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def build_model(folder: Path) -> str:
    from rlhf.models.tiny import make_tiny_model
    from rlhf.sim.builtin import load_builtin

    texts = [record.text for record in load_builtin("builtin:world-text?n=20000")]  # type: ignore[attr-defined]
    return str(make_tiny_model(folder, texts, **MODEL))


def sft_keys(path: str, batch: int, steps: int) -> list[str]:
    return [
        "model.tiny=null",
        f"model.path={path}",
        "data.train=builtin:world-sft?n=8000",
        "data.max_length=128",
        f"train.batch_size={batch}",
        f"train.max_steps={steps}",
        "train.lr=3e-4",
        "train.eval_every=0",
        "train.save_every=0",
        "train.device=cuda",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=12, help="GRPO iterations")
    parser.add_argument("--warmup-iterations", type=int, default=2)
    parser.add_argument("--seeds", type=lambda t: [int(s) for s in t.split(",")], default=[0])
    parser.add_argument("--configs", default="sync,async,sync-worker")
    parser.add_argument("--bf16", action="store_true", help="train.mixed_precision=bf16")
    parser.add_argument("--steps", type=int, default=30, help="measured SFT steps")
    parser.add_argument("--warmup", type=int, default=5, help="SFT warm-up steps")
    parser.add_argument("--sft-batch-per-gpu", type=int, default=32)
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    gpus = require_gpus()
    n = len(gpus)
    share = 0.5 if n == 1 else 1
    worker = [
        "distributed.rollout_workers=1",
        f"distributed.gpus_per_worker={share}",
        f"distributed.cpus_per_worker={CPUS_PER_WORKER}",
    ]
    configs = {
        "sync": (HOST_THREADS, []),
        "async": (1, [*worker, "distributed.max_staleness=1"]),
        "sync-worker": (1, [*worker, "distributed.max_staleness=0"]),
    }
    precision = "bf16" if args.bf16 else "no"
    with tempfile.TemporaryDirectory(prefix="bench-scale-gpu-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        progress(f"{n} x {gpus[0]}: building the model and its init SFT")
        built = build_model(root / "built")
        run_cli("sft", root / "init", HOST_THREADS, sft_keys(built, 32, 300))
        base = [
            "init_sft=null",
            "model.tiny=null",
            f"model.path={root / 'init' / 'model'}",
            "data.prompts=builtin:world-prompts?n=4000&split=train",
            "data.eval_prompts=builtin:world-prompts?n=256&split=eval",
            "eval.prompts=256",
            "reward.rule=world_gold",
            "sampling.max_new_tokens=96",
            "sampling.temperature=1.0",
            "rollout.prompts_per_iteration=32",
            "rollout.samples_per_prompt=8",
            "rollout.minibatch_size=128",
            "train.batch_size=64",
            "train.lr=1e-5",
            "train.device=cuda",
            f"train.mixed_precision='{precision}'",
            f"rollout.iterations={args.iterations}",
        ]
        runs: dict[str, list[dict[str, Any]]] = {}
        for seed in args.seeds:
            for name in args.configs.split(","):
                threads, keys = configs[name]
                out = root / f"grpo-{name}-{seed}"
                wall = run_cli("grpo", out, threads, [*base, f"train.seed={seed}", *keys])
                figures = grpo_figures(out, args.warmup_iterations) | {"wall_s": wall}
                runs.setdefault(name, []).append(figures)
                progress(f"grpo {name} seed {seed}: {figures['episodes_per_s']:.1f} episodes/s")
        grpo = {name: summarise(seeds) for name, seeds in runs.items()}
        ratio = None
        if "sync" in grpo and "async" in grpo:
            ratio = grpo["async"]["episodes_per_s"] / grpo["sync"]["episodes_per_s"]
        sft: dict[str, Any] = {}
        if n >= 2:
            batch, steps = args.sft_batch_per_gpu * n, args.warmup + args.steps
            dp = ["distributed.gpus_per_worker=1", f"distributed.cpus_per_worker={CPUS_PER_WORKER}"]
            sides = {}
            for name, threads, keys in (
                ("dp1", HOST_THREADS, []),
                (f"dp{n}", 1, [f"distributed.train_workers={n}", *dp]),
            ):
                out = root / f"sft-{name}"
                run_cli(
                    "sft",
                    out,
                    threads,
                    [*sft_keys(built, batch, steps), f"train.mixed_precision='{precision}'", *keys],
                )
                sides[name] = sft_figures(out, args.warmup)
                progress(f"sft {name}: {sides[name]['tokens_per_s']:.0f} tokens/s")
            losses = [side.pop("losses") for side in sides.values()]
            sft = {
                "batch": batch,
                "ranks": n,
                **sides,
                "ratio": sides[f"dp{n}"]["tokens_per_s"] / sides["dp1"]["tokens_per_s"],
                "max_abs_loss_diff": max(abs(a - b) for a, b in zip(*losses, strict=True)),
            }
    result = rounded(
        {
            "benchmark": "scale_gpu",
            "gpus": gpus,
            "cpus": os.cpu_count(),
            "mixed_precision": precision,
            "grpo": {"configs": grpo, "ratio": ratio},
            "sft": sft,
        }
    )
    if not args.json_only:
        print(
            f"{n} x {gpus[0]}; GRPO {args.iterations} iterations x 256 episodes, seeds "
            f"{args.seeds}, episodes/s after {args.warmup_iterations} warm-up iterations"
        )
        header = [
            "config",
            "eps/s",
            "iter s",
            "generate s",
            "wait s",
            "sync s",
            "eval greedy",
            "rollout reward (last 1/4)",
        ]
        rows = [
            [
                name,
                c["episodes_per_s"],
                c["iteration_s"],
                c["generate_s"],
                c["wait_s"],
                c["sync_s"],
                c["eval_greedy_reward"],
                c["rollout_reward_last"],
            ]
            for name, c in result["grpo"]["configs"].items()
        ]
        print(format_table(header, rows))
        if ratio is not None:
            print(f"async / sync = {ratio:.2f}x")
        if sft:
            print(
                f"SFT, global batch {sft['batch']}: DP=1 {sft['dp1']['tokens_per_s']:,.0f} "
                f"tokens/s, DP={n} {sft[f'dp{n}']['tokens_per_s']:,.0f} tokens/s "
                f"({sft['ratio']:.2f}x), max |Δloss| {sft['max_abs_loss_diff']:.2e}"
            )
        else:
            print("SFT data parallelism: skipped (one GPU visible)")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
