"""GRPO throughput: our ``rlhf grpo`` recipe against TRL's ``GRPOTrainer`` on identical work.

Workload (both sides): the benchmarks' tiny Llama (``bench_sft``: hidden 256, 4 layers, 4
heads, MLP 688, byte-level BPE vocabulary of 2,000) as the policy, fp32 on CPU, dropout off.
Every iteration samples 4 responses (temperature 1, no top-k / top-p) to each of 2 prompts of
exactly 64 tokens, at most 32 new tokens each (stopping at EOS), scores the 8 responses with a
reward model (the same tiny Llama as a one-label sequence classifier with a fresh seeded head),
normalises the rewards within each group of 4 (mean and standard deviation), and takes one
optimiser step on the 8 responses: clipped surrogate (ε = 0.2) with old log-probs, k3 KL to the
frozen initial policy with β = 0.04, the per-token loss averaged over each response then over
the responses, fused AdamW at a constant 1e-5, clipping at 1.0, seed 0.

Metric: episodes per second, an episode being one sampled response trained on, over the
measured iterations (from the end of the last warm-up iteration to the end of the last): the
whole iteration counts, i.e. sampling, scoring, reference log-probs, advantages and the update
(neither side recomputes old log-probs: with one optimiser step per rollout they are the
update's own, detached; TRL's ``num_iterations=1``, our ``needs_old_logps``). Each side runs
in its own process. Our side reads each group's prompt once in every pass (docs/online_rl.md,
"Each prompt read once"); the tokens sampled and trained on are the same work as TRL's.

    python benchmarks/bench_grpo.py                 # 5 warm-up + 30 measured iterations
    python benchmarks/bench_grpo.py --threads 1 --repeats 2   # on a shared machine
    python benchmarks/bench_grpo.py --steps 5 --warmup 1 --skip-trl --json-only

``--threads N`` sets torch's threads in every child; ``--repeats K`` runs each side K times,
alternating, and keeps each side's best run.

Each side also runs a compiled variant and its figure is the best of its variants (as
``bench_dpo``): ours with ``sampling.compile`` (decoding through a ``torch.compile``'d one-token
step over a static KV cache, :func:`rlhf.rollout.compiled.compiled_generate`) and ``train.compile``
(the blocks of the policy, the reference and the reward model compiled, regionally),
TRL with what its API offers for the same, ``cache_implementation="static"`` (its
``generate`` call's cache) and ``torch_compile=True`` (the Trainer compiles the model; TRL's
own ``GenerationConfig`` sets ``disable_compile=True``, so ``generate`` does not compile its
decode step itself). The workload is unchanged. Compiling happens mostly in the first
(warm-up) iterations; the table's ``first s`` column (the first iteration's seconds, from the
start of training) shows it. A recompile for a shape first seen later (a new response length)
falls in the measured iterations and counts against that side. Every child gets a fresh TorchInductor cache
folder, so no run reuses another's compiled code. ``--no-compile`` runs the eager variants
only.

On a CPU with bf16 matrix units (AVX512-BF16 or AMX, where a bf16 matrix product is several
times faster than an fp32 one) every setting also runs in bf16 mixed precision: fp32 weights,
gradients and optimiser state, bf16 autocast; ours ``train.mixed_precision=bf16`` (its
rollout's scoring passes under the same autocast, sampling in fp32), TRL ``bf16=True``
(its default). The MFU column stays against the fp32 peak. ``--no-bf16`` skips them.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import (
    FORWARD_FLOPS_PER_PARAM_TOKEN,
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    BenchmarkError,
    check_trl_settings,
    common_arguments,
    engine_step_metrics,
    engine_train_settings,
    format_table,
    matmul_flops,
    measured_step_seconds,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    synthetic_sentences,
    text_of_exact_length,
    trl_available,
    trl_step_clock,
    trl_train_settings,
    word_stream,
)
from bench_dpo import fresh_compile_cache
from bench_sft import MAX_GRAD_NORM, SEED, TOKENIZER_SENTENCES, VOCAB_SIZE

BENCHMARK = "grpo"
METRIC = "episodes_per_s"
PROMPT_TOKENS = 64
RESPONSE_TOKENS = 32  # max new tokens; sampling stops earlier at EOS
GROUP_SIZE = 4  # responses per prompt
BATCH_RESPONSES = 8  # responses per iteration (and per optimiser step)
PROMPTS_PER_ITERATION = BATCH_RESPONSES // GROUP_SIZE
LEARNING_RATE = 1e-5
BETA = 0.04  # k3 KL coefficient (DeepSeekMath's GRPO default)
CLIP_EPSILON = 0.2
TEMPERATURE = 1.0
NUM_PROMPTS = 256  # the prompt set both sides cycle through (more than any run uses)


# ---------------------------------------------------------------- the shared workload


def build_workload(
    work_dir: Path, num_prompts: int = NUM_PROMPTS, prompt_tokens: int = PROMPT_TOKENS
) -> dict[str, Any]:
    """Tiny policy (``bench_sft``'s), a tiny reward model built from it, and the prompts.

    Prompts are seeded synthetic text of exactly ``prompt_tokens`` tokens, written as a
    ``prompt`` JSONL (our side and TRL's GRPO, which tokenise them themselves) and as the
    token ids of our tokenisation (TRL's PPO takes ``input_ids``). The reward model is
    ``init_reward_model`` on the policy (its LM head dropped, a one-label head N(0, 1/√(d+1))
    from the seed), saved with an identity normalisation (gain 1, bias 0) so every side reads
    the same raw score. It also serves as the PPO value model's starting point.
    """
    from transformers import AutoModelForCausalLM

    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.reward import init_reward_model, set_normalization
    from rlhf.models.tiny import count_parameters, make_tiny_model
    from rlhf.rollout.tokens import prompt_token_ids

    model_dir = make_tiny_model(
        work_dir / "model", synthetic_sentences(TOKENIZER_SENTENCES, SEED), vocab_size=VOCAB_SIZE
    )
    tokenizer = load_tokenizer(model_dir)
    reward_model = init_reward_model(model_dir, tokenizer, seed=SEED)
    set_normalization(reward_model, 1.0, 0.0)
    reward_dir = work_dir / "reward_model"
    save_model(reward_model, tokenizer, reward_dir)

    words = word_stream(SEED + 3)
    bos = 1 if prompt_token_ids(tokenizer, "a")[:1] == [tokenizer.bos_token_id] else 0
    rows, tokenised = [], []
    for index in range(num_prompts):
        prompt = text_of_exact_length(tokenizer, words, prompt_tokens - bos, leading_space=False)
        ids = prompt_token_ids(tokenizer, prompt)
        if len(ids) != prompt_tokens:
            raise RuntimeError(f"prompt {index}: {len(ids)} tokens, expected {prompt_tokens}")
        rows.append({"prompt": prompt})
        tokenised.append({"input_ids": ids})
    prompts_path = work_dir / "prompts.jsonl"
    prompts_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tokens_path = work_dir / "prompts_tokens.jsonl"
    tokens_path.write_text("".join(json.dumps(row) + "\n" for row in tokenised), encoding="utf-8")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {
        "model_dir": str(model_dir),
        "reward_dir": str(reward_dir),
        "prompts_path": str(prompts_path),
        "tokens_path": str(tokens_path),
        # the text of the BOS our prompt tokenisation writes ("" when it writes none)
        "bos_text": tokenizer.bos_token if bos else "",
        "non_embedding_params": count_parameters(model, non_embedding=True),
        "params": count_parameters(model, non_embedding=False),
    }


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
    """Run ``rlhf.recipes.grpo.run_grpo``; each step's end time from metrics.jsonl.
    ``compile``: sampling decodes with the compiled static-cache step (``sampling.compile``)."""
    fresh_compile_cache(out_dir)
    import torch

    if threads:
        torch.set_num_threads(threads)

    from rlhf.recipes.grpo import GRPOConfig, run_grpo

    config = GRPOConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
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
                "prompts_per_iteration": PROMPTS_PER_ITERATION,
                "samples_per_prompt": GROUP_SIZE,
                "ppo_epochs": 1,
                "minibatch_size": BATCH_RESPONSES,
            },
            "kl": {"coef": BETA, "estimator": "k3", "in_reward": False},
            # mean over each response's tokens, then over the responses: TRL's loss_type "grpo"
            "policy": {"clip_eps": CLIP_EPSILON, "aggregation": "sequence"},
            "grpo": {"scale_rewards": True, "eps": 1e-4, "tied_groups": "keep"},
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
    run_grpo(config)
    steps = engine_step_metrics(out_dir)
    return {
        "step_end_times": [r["time"] for r in steps],
        "episodes_per_step": [BATCH_RESPONSES] * len(steps),
        "response_tokens": [r.get("rollout_response_tokens") for r in steps],
        "mean_reward": _mean([r.get("rollout_reward") for r in steps]),
        "threads": torch.get_num_threads(),
    }


def _mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def train_trl(
    model_dir: str,
    reward_dir: str,
    prompts_path: str,
    out_dir: str,
    iterations: int,
    threads: int | None = None,
    compile: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run TRL's ``GRPOTrainer`` configured like our side, timing each step's end.

    One TRL step generates its own batch here (``generation_batch_size`` = the step's 8
    responses, ``num_iterations`` = 1), so a step is a whole iteration as on our side.
    ``compile``: a static KV cache for ``generate`` and ``torch_compile`` (the model compiled
    by the Trainer), the nearest TRL's API comes to our compiled decoding; with ``bf16`` (TRL's
    mixed precision) ``torch_compile`` alone, as the static cache fails under autocast.
    """
    fresh_compile_cache(out_dir)
    import torch

    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in Path(prompts_path).read_text("utf-8").splitlines()]
    args = GRPOConfig(
        output_dir=out_dir,
        max_steps=iterations,
        per_device_train_batch_size=BATCH_RESPONSES,
        gradient_accumulation_steps=1,
        generation_batch_size=BATCH_RESPONSES,
        num_generations=GROUP_SIZE,
        num_iterations=1,
        max_completion_length=RESPONSE_TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=BETA,
        epsilon=CLIP_EPSILON,
        loss_type="grpo",  # mean over each response's tokens, then over responses: ours
        scale_rewards="group",
        mask_truncated_completions=False,
        use_vllm=False,
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED, bf16=bf16),
        disable_dropout=True,
        log_completions=False,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
        # transformers' static cache is allocated in the model's fp32 and cannot take the bf16
        # keys that autocast gives it (index_copy_ dtype error), so compiled bf16 runs without
        cache_implementation="static" if compile and not bf16 else None,
        torch_compile=compile,
    )
    clock = trl_step_clock()
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=reward_dir,  # loaded as a one-label sequence classifier
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[clock],
    )
    trainer.train()
    check_trl_settings(trainer, bf16)
    return {
        "step_end_times": clock.ends,
        "episodes_per_step": [BATCH_RESPONSES] * len(clock.ends),
        "threads": torch.get_num_threads(),
    }


def matmul_peak(threads: int | None = None) -> dict[str, float]:
    """:func:`_harness.matmul_flops` with ``threads`` torch threads (default: torch's), so the
    MFU denominator runs on as many threads as the sides."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return matmul_flops()


# ---------------------------------------------------------------- the run


def episodes_per_second(
    side: dict[str, Any], warmup: int, total: int, name: str, per_step: int
) -> float:
    """Episodes/s of one side over the steps after ``warmup``, after checking it ran them all."""
    times = side["step_end_times"]
    if len(times) != total:
        raise RuntimeError(f"{name}: {len(times)} steps timed, expected {total}")
    if set(side["episodes_per_step"]) != {per_step}:
        raise RuntimeError(f"{name}: steps of {sorted(set(side['episodes_per_step']))} episodes")
    durations = measured_step_seconds(times, warmup)
    return per_step * len(durations) / sum(durations)


def run_sides(
    runs: list[tuple[str, Callable[..., Any], dict[str, Any]]], repeats: int
) -> dict[str, dict[str, Any]]:
    """Run each ``(name, function, kwargs)`` of ``runs`` ``repeats`` times in a fresh child,
    alternating the sides (ours, trl, ours, trl, ...) so a change in the machine's load hits
    both alike; repeat k writes to ``out_dir-k``. Results are keyed ``name`` (first run) or
    ``name #k``; a failed run is reported on stderr and left out."""
    sides: dict[str, dict[str, Any]] = {}
    for repeat in range(1, repeats + 1):
        for name, function, kwargs in runs:
            label = name if repeat == 1 else f"{name} #{repeat}"
            progress(f"{label}: {kwargs['iterations']} iterations")
            out_dir = kwargs["out_dir"] if repeat == 1 else f"{kwargs['out_dir']}-{repeat}"
            try:
                sides[label] = run_in_child(function, **(kwargs | {"out_dir": out_dir}))
            except BenchmarkError as error:  # a side that fails is reported, not fatal
                progress(f"{label} failed: {str(error)[-2000:]}")
    return sides


def summarize(
    sides: dict[str, dict[str, Any]],
    warmup: int,
    total: int,
    per_step: int,
    mfu: Callable[[float], float],
) -> tuple[list[list[Any]], dict[str, tuple[float, dict[str, Any]]]]:
    """The table's rows (one per run) and each side's best run: ``{name: (episodes/s, run)}``.

    The best of a side's repeats, as ``bench_sft`` keeps the best of a side's settings: a
    disturbance on a shared machine can only slow a run down.
    """
    rows, best = [], {}
    for label, side in sides.items():
        eps = episodes_per_second(side, warmup, total, label, per_step)
        steps = measured_step_seconds(side["step_end_times"], warmup)
        rows.append(
            [
                label,
                eps,
                side["peak_rss_mb"],
                mfu(eps),
                1000 * statistics.median(steps),
                1000 * max(steps),
                side["step_end_times"][0],
            ]
        )
        name = label.split()[0]
        if name not in best or eps > best[name][0]:
            best[name] = (eps, side | {"setting": label.split(" #")[0]})
    return rows, best


TABLE_HEADER = [
    "side",
    "episodes/s",
    "peak MB",
    "MFU",
    "median ms/iteration",
    "max ms",
    "first s",  # the first iteration (compiling, for a compiled variant), not measured
]


def add_run_arguments(parser: Any) -> Any:
    """``--threads`` and ``--repeats``, shared with ``bench_ppo``."""
    parser.add_argument(
        "--threads", type=int, help="torch threads in each side's process (default: torch's)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each side, alternating; each side's best counts (default %(default)s)",
    )
    return add_bf16_argument(parser)


def add_bf16_argument(parser: Any) -> Any:
    """``--no-bf16`` (``args.bf16``), which :func:`variants` reads; shared with every benchmark
    that runs the bf16 variants."""
    parser.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="skip the bf16 mixed-precision runs (run on CPUs with AVX512-BF16 or AMX only)",
    )
    return parser


def variants(args: Any) -> list[tuple[str, str, dict[str, bool]]]:
    """Each side's settings as ``(label suffix, folder suffix, train_* keyword arguments)``:
    eager and (unless ``--no-compile``) compiled, each in fp32 and, on a CPU with bf16 matrix
    units and unless ``--no-bf16``, in bf16 mixed precision. Shared with ``bench_ppo``."""
    from rlhf.engine.trainer import cpu_has_bf16_units

    compiled = (False, True) if args.compile else (False,)
    mixed = (False, True) if args.bf16 and cpu_has_bf16_units() else (False,)
    out = []
    for compile in compiled:
        for bf16 in mixed:
            words = [word for word, on in (("compiled", compile), ("bf16", bf16)) if on]
            suffix = "".join(f" {word}" for word in words)
            out.append((suffix, suffix.replace(" ", "-"), {"compile": compile, "bf16": bf16}))
    return out


def episode_flops_tokens(mean_response_tokens: float) -> tuple[float, float]:
    """Token counts behind one GRPO episode of our side for MFU: ``(trained, forward_only)``.

    Our side reads each prompt once per group of ``GROUP_SIZE`` (sampling's prefill, the
    reference, the reward model and the update pack a group's responses after one copy of
    its prompt) and skips the old log-prob pass (one optimiser step per rollout), so an
    episode costs ``PROMPT_TOKENS / GROUP_SIZE`` prompt tokens per pass. Trained: that plus
    its response, forward and backward. Forward-only: sampling, the reference log-probs and
    the reward model's scoring, one such sequence each.
    """
    sequence = PROMPT_TOKENS / GROUP_SIZE + mean_response_tokens
    return sequence, 3 * sequence


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    args = add_run_arguments(common_arguments(__doc__.split("\n", 1)[0])).parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        sys.exit("--steps and --repeats must be at least 1 and --warmup at least 0")
    total = args.warmup + args.steps
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        progress("building the tiny policy, reward model and prompts")
        workload = build_workload(work)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_peak, threads=args.threads)
        common = {
            "model_dir": workload["model_dir"],
            "reward_dir": workload["reward_dir"],
            "prompts_path": workload["prompts_path"],
            "iterations": total,
            "threads": args.threads,
        }
        runs = []
        for suffix, tag, setting in variants(args):
            runs.append(
                (f"ours{suffix}", train_ours, common | setting | {"out_dir": f"{work}/ours{tag}"})
            )
            if run_trl:
                runs.append(
                    (f"trl{suffix}", train_trl, common | setting | {"out_dir": f"{work}/trl{tag}"})
                )
        sides = run_sides(runs, args.repeats)
    if "ours" not in {label.split()[0] for label in sides}:
        sys.exit("our side failed")

    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    response_tokens = _mean([t for side in sides.values() for t in side.get("response_tokens", [])])
    trained, forward_only = episode_flops_tokens(response_tokens or RESPONSE_TOKENS)

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
            f"GRPO, tiny Llama policy ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding) + tiny reward model, fp32 CPU, {ours['threads']} "
            f"threads, {PROMPTS_PER_ITERATION} prompts x {GROUP_SIZE} samples of <= "
            f"{RESPONSE_TOKENS} tokens after {PROMPT_TOKENS}-token prompts per iteration, "
            f"{args.warmup} warm-up + {args.steps} measured iterations"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        print(format_table(TABLE_HEADER, rows))
        if result["ratio"] is not None:
            print(f"ratio ours/trl: {result['ratio']:.3f}")
        for name in ("ours", "trl"):
            first = {
                label: run["step_end_times"][0]
                for label, run in sides.items()
                if label.split()[0] == name
            }
            eager = [seconds for label, seconds in first.items() if "compiled" not in label]
            compiled = [seconds for label, seconds in first.items() if "compiled" in label]
            if eager and compiled:
                print(
                    f"{name}: compiling adds about {min(compiled) - min(eager):.1f} s to the "
                    "first (warm-up) iteration"
                )
    print_result(result, extra_keys=("ours_setting", "trl_setting"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
