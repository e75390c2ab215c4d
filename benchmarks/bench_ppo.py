"""PPO throughput: our ``rlhf ppo`` recipe against TRL 1.12's ``PPOTrainer`` on identical work.

Workload (both sides): ``bench_grpo``'s tiny Llama policy, tiny reward model and 64-token
prompts, fp32 on CPU, dropout off. Every iteration samples one response (temperature 1, no
top-k / top-p, at most 32 new tokens, stopping at EOS) to each of 8 prompts; scores them with
the reward model; computes old log-probs, the frozen reference's log-probs and the critic's
values; puts the per-token k1 KL penalty (coefficient 0.05, fixed) into the rewards, the score
on the last token; GAE (γ = 1, λ = 0.95) and advantage whitening over the response tokens; then
4 PPO epochs over the 8 responses as one minibatch (4 optimiser steps per iteration): clipped
surrogate (ε = 0.2) plus 0.1 x the clipped value loss (ε_v = 0.2), fused AdamW at a constant
1e-5 over policy and critic together, clipping at 1.0, seed 0. The critic starts as the reward
model (backbone + scalar head, read at every position), as in TRL's examples.

TRL removed ``PPOTrainer`` after 1.12, and 1.12 cannot share our environment with the TRL 1.16
the other benchmarks use, so its side runs in ``.venv-trl-ppo`` (``make bench`` builds it:
torch pinned as in ``.venv``, then ``trl==1.12.0``), or the interpreter given by
``--trl-python`` / ``$RLHF_TRL_PPO_PYTHON``.

Metric: episodes per second (an episode is one sampled response trained on, 8 per iteration,
however many epochs pass over it) over the measured iterations, from the end of the last
warm-up iteration to the end of the last: sampling, scoring, the forward passes for old /
reference log-probs and values, GAE and the 4 updates all count. Each side runs in its own
process.

    python benchmarks/bench_ppo.py                  # 2 warm-up + 10 measured iterations
    python benchmarks/bench_ppo.py --threads 1 --repeats 2    # on a shared machine
    python benchmarks/bench_ppo.py --steps 3 --warmup 1 --skip-trl --json-only

Each side also runs a compiled variant and its figure is the best of its variants, as in
``bench_grpo``: ours with ``sampling.compile`` and ``train.compile`` (the blocks of the policy,
the critic, the reference and the reward model compiled regionally), TRL 1.12 with
``torch_compile=True`` (accelerate compiles the policy-and-value module it trains; its PPO
loop has no option for a static generation cache). Every child gets a fresh TorchInductor
cache folder. ``--no-compile`` runs the eager variants only. On a CPU with bf16 matrix units
each setting also runs in bf16 mixed precision, as in ``bench_grpo`` (ours
``train.mixed_precision=bf16``, TRL 1.12 ``bf16=True``); ``--no-bf16`` skips those runs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import (
    FORWARD_FLOPS_PER_PARAM_TOKEN,
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    common_arguments,
    engine_step_metrics,
    engine_train_settings,
    format_table,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    trl_step_clock,
    trl_train_settings,
)
from bench_dpo import fresh_compile_cache
from bench_grpo import (
    PROMPT_TOKENS,
    RESPONSE_TOKENS,
    TABLE_HEADER,
    TEMPERATURE,
    add_run_arguments,
    build_workload,
    matmul_peak,
    run_sides,
    summarize,
    variants,
)
from bench_sft import MAX_GRAD_NORM, SEED

BENCHMARK = "ppo"
METRIC = "episodes_per_s"
BATCH_RESPONSES = 8  # prompts (one response each) per iteration = the minibatch
PPO_EPOCHS = 4  # optimiser steps per iteration (one minibatch per epoch)
LEARNING_RATE = 1e-5
KL_COEF = 0.05  # TRL's default
CLIP_EPSILON = 0.2
VALUE_CLIP = 0.2
VF_COEF = 0.1
GAMMA = 1.0
LAMBDA = 0.95
TRL_PPO_VENV = Path(__file__).resolve().parent.parent / ".venv-trl-ppo"


# ---------------------------------------------------------------- the two sides (children)


def train_ours(
    model_dir: str,
    reward_dir: str,
    prompts_path: str,
    out_dir: str,
    iterations: int,
    threads: int | None = None,
    compile: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run ``rlhf.recipes.ppo.run_ppo``; each optimiser step's end time from metrics.jsonl.
    ``compile``: ``sampling.compile`` and ``train.compile``."""
    fresh_compile_cache(out_dir)
    import torch

    if threads:
        torch.set_num_threads(threads)

    from rlhf.recipes.ppo import PPOConfig, run_ppo

    config = PPOConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            "value": {"path": reward_dir},  # the critic starts as the reward model, as TRL's
            "data": {"prompts": prompts_path},
            "reward": {"model": reward_dir, "device": "cpu", "batch_size": BATCH_RESPONSES},
            "sampling": {
                "max_new_tokens": RESPONSE_TOKENS,
                "temperature": TEMPERATURE,
                "top_p": 1.0,
                "top_k": 0,
                "batch_size": BATCH_RESPONSES,
                "compile": compile,
            },
            "rollout": {
                "iterations": iterations,
                "prompts_per_iteration": BATCH_RESPONSES,
                "samples_per_prompt": 1,
                "ppo_epochs": PPO_EPOCHS,
                "minibatch_size": BATCH_RESPONSES,
            },
            "kl": {"coef": KL_COEF, "estimator": "k1", "in_reward": True},
            # TRL's masked means: the policy loss over the minibatch's response tokens
            "policy": {"clip_eps": CLIP_EPSILON, "aggregation": "token"},
            "ppo": {
                "gamma": GAMMA,
                "lam": LAMBDA,
                "vf_coef": VF_COEF,
                "value_clip_eps": VALUE_CLIP,
                "entropy_coef": 0.0,
                "whiten_advantages": True,
                "reward_norm": "none",
            },
            "train": engine_train_settings(
                batch_size=BATCH_RESPONSES,
                lr=LEARNING_RATE,
                seed=SEED,
                max_grad_norm=MAX_GRAD_NORM,
                compile=compile,
                mixed_precision="bf16" if bf16 else "no",
            ),
            "eval": {"prompts": 0},
            "out": out_dir,
            "tensorboard": False,
            "progress": False,
        }
    )
    run_ppo(config)
    steps = engine_step_metrics(out_dir)
    # one iteration = PPO_EPOCHS optimiser steps; it ends with its last step
    ends = [r["time"] for r in steps][PPO_EPOCHS - 1 :: PPO_EPOCHS]
    return {
        "step_end_times": ends,
        "episodes_per_step": [BATCH_RESPONSES] * len(ends),
        "optimizer_steps": len(steps),
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_dir: str,
    reward_dir: str,
    tokens_path: str,
    out_dir: str,
    iterations: int,
    threads: int | None = None,
    compile: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run TRL 1.12's ``PPOTrainer`` configured like our side (in ``.venv-trl-ppo``).

    TRL's loop calls ``on_step_end`` once per iteration (after its PPO epochs), so the step
    clock gives iteration ends directly. The prompts are our tokenisation's ids.
    ``compile``: ``torch_compile=True``.
    """
    fresh_compile_cache(out_dir)
    import warnings

    import torch

    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    warnings.filterwarnings("ignore")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = [json.loads(line) for line in Path(tokens_path).read_text("utf-8").splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    load = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    policy = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, **load)
    reward = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, **load)
    value = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, **load)
    args = PPOConfig(
        output_dir=out_dir,
        total_episodes=iterations * BATCH_RESPONSES,
        per_device_train_batch_size=BATCH_RESPONSES,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=PPO_EPOCHS,
        local_rollout_forward_batch_size=BATCH_RESPONSES,
        response_length=RESPONSE_TOKENS,
        stop_token="eos",
        temperature=TEMPERATURE,
        kl_coef=KL_COEF,
        kl_estimator="k1",
        cliprange=CLIP_EPSILON,
        cliprange_value=VALUE_CLIP,
        vf_coef=VF_COEF,
        gamma=GAMMA,
        lam=LAMBDA,
        whiten_rewards=False,
        missing_eos_penalty=None,
        num_sample_generations=0,  # no sample tables during training
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED, bf16=bf16),
        torch_compile=compile,
    )
    clock = trl_step_clock()
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(BATCH_RESPONSES)),
        callbacks=[clock],
    )
    trainer.train()
    return {
        "step_end_times": clock.ends,
        "episodes_per_step": [BATCH_RESPONSES] * len(clock.ends),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def trl_python(explicit: str | None) -> str | None:
    """The interpreter of the TRL 1.12 environment, or None when there is none."""
    for candidate in (
        explicit,
        os.environ.get("RLHF_TRL_PPO_PYTHON"),
        str(TRL_PPO_VENV / "bin" / "python"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def episode_flops_tokens(response_tokens: float) -> tuple[float, float]:
    """Token counts behind one PPO episode for MFU: ``(trained, forward_only)``.

    Trained: prompt + response forward and backward once per epoch through the policy and
    once through the critic (same size). Forward-only: sampling (prompt once, the response
    token by token), then reference log-probs, values and the reward (three forwards of
    prompt + response), plus our teacher-forced old log-probs (one more; TRL reads them from
    the sampling scores, so the same count flatters TRL's MFU, not ours).
    """
    sequence = PROMPT_TOKENS + response_tokens
    return 2 * PPO_EPOCHS * sequence, PROMPT_TOKENS + response_tokens + 4 * sequence


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    parser = add_run_arguments(common_arguments(__doc__.split("\n", 1)[0], steps=10, warmup=2))
    parser.add_argument(
        "--trl-python",
        help="Python of an environment with trl==1.12.0 (default: .venv-trl-ppo/bin/python)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        sys.exit("--steps and --repeats must be at least 1 and --warmup at least 0")
    total = args.warmup + args.steps
    python = None if args.skip_trl else trl_python(args.trl_python)
    if not args.skip_trl and python is None:
        progress("no TRL 1.12 environment (make bench builds .venv-trl-ppo); our side only")

    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = Path(tmp)
        progress("building the tiny policy, reward model and prompts")
        workload = build_workload(work)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_peak, threads=args.threads)
        common = {
            "model_dir": workload["model_dir"],
            "reward_dir": workload["reward_dir"],
            "iterations": total,
            "threads": args.threads,
        }
        if python is not None:
            progress(f"TRL 1.12 side runs with {python}")
        runs = []
        for suffix, tag, setting in variants(args):
            ours_kwargs = {"prompts_path": workload["prompts_path"], "out_dir": f"{work}/ours{tag}"}
            runs.append((f"ours{suffix}", train_ours, common | setting | ours_kwargs))
            if python is not None:
                trl_kwargs = {"tokens_path": workload["tokens_path"], "python": python}
                trl_kwargs |= {"out_dir": f"{work}/trl{tag}"}
                runs.append((f"trl{suffix}", train_trl, common | setting | trl_kwargs))
        sides = run_sides(runs, args.repeats)
    if "ours" not in {label.split()[0] for label in sides}:
        sys.exit("our side failed")

    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    trained, forward_only = episode_flops_tokens(RESPONSE_TOKENS)

    def mfu(eps: float) -> float:
        return model_flops_utilization(
            eps * trained, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        ) + model_flops_utilization(
            eps * forward_only, n, peak_flops, FORWARD_FLOPS_PER_PARAM_TOKEN
        )

    rows, best = summarize(sides, args.warmup, total, BATCH_RESPONSES, mfu)
    ours_eps, ours = best["ours"]
    trl_eps, trl = best.get("trl", (None, None))
    result = result_line(
        BENCHMARK,
        METRIC,
        ours_eps,
        trl_eps,
        ours["peak_rss_mb"],
        None if trl is None else trl["peak_rss_mb"],
        mfu(ours_eps),
    )
    result["ours_setting"] = ours["setting"]
    result["trl_setting"] = None if trl is None else trl["setting"]
    if not args.json_only:
        print(
            f"PPO, tiny Llama policy ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding) + critic + reward model + reference, fp32 CPU, "
            f"{ours['threads']} threads, {BATCH_RESPONSES} prompts x 1 sample of <= "
            f"{RESPONSE_TOKENS} tokens after {PROMPT_TOKENS}-token prompts per iteration, "
            f"{PPO_EPOCHS} epochs, {args.warmup} warm-up + {args.steps} measured iterations"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(format_table(TABLE_HEADER, rows))
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f}")
    print_result(result, extra_keys=("ours_setting", "trl_setting"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
