"""Online DPO throughput: ``rlhf online-dpo`` against TRL's ``OnlineDPOTrainer``, identical work.

TRL 1.16 keeps its online DPO trainer under ``trl.experimental``:
``from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer``.

Workload (both sides): the benchmarks' tiny Llama (``bench_sft``: hidden 256, 4 layers, 4
heads, MLP 688, byte-level BPE vocabulary of 2,000), built once in code, saved, and loaded by
both sides as the policy, and a frozen copy of its initial weights as π_ref; fp32 on CPU,
dropout off, one torch thread (``--threads``). Every step, on both sides:

1. sample K = 2 responses (temperature 1, no top-k / top-p) to each of ``--prompts-per-step``
   prompts (default 4, so 8 responses a step) of exactly ``--prompt-tokens`` tokens (default
   64), at most ``--max-new-tokens`` new tokens each (default 32), stopping at EOS;
2. label each prompt's two responses with the same labeller, the higher reward chosen;
3. one optimiser step of the sigmoid DPO loss (Rafailov et al. 2023, eq. 7; β = 0.1) on the
   pairs: sums of the response tokens' log-probs under the policy (with gradients) and under
   π_ref, the loss averaged over the pairs; fused AdamW at a constant 1e-5, no weight decay,
   clipping at 1.0, seed 0.

The labeller (``--labeller``) is the same on both sides:

* ``rule`` (default): a cheap deterministic function of the response text,
  :func:`vowel_share` (the share of its letters that are vowels, rounded to 4 places, plus
  ``1e-5 x crc32(text) / 2^32``, so that in practice only identical responses tie). Our side
  reaches it through the rule registry (``reward: {rule: bench_vowel_share}``, registered in
  ``rlhf.rewards.rules.RULES`` inside our child); TRL gets it as a reward function
  (``reward_funcs=[...]``, called with the decoded completions). Both score the decoded
  response text with special tokens (EOS, padding) removed.
* ``model``: a tiny reward model (``bench_grpo``'s: the policy with its LM head replaced by a
  seeded one-label head, saved with gain 1 / bias 0): ours ``reward: {model: PATH}``, TRL
  ``reward_funcs=PATH`` (loaded as ``AutoModelForSequenceClassification``). Each side scores
  all 2P responses with it every step, so this adds one forward pass of a policy-sized model.

Metric: ``episodes_per_s``, an episode being one sampled response trained on, over the
measured steps: from the end of the last warm-up step to the end of the last step (ours: the
engine's ``metrics.jsonl`` ``time``; TRL: a ``TrainerCallback`` at ``on_step_end``), so the
whole step counts: sampling, scoring, labelling, π_ref's log-probs, the policy's forward and
backward, clipping and the update. One optimiser step per rollout on both sides (ours
``rollout.ppo_epochs=1``, ``minibatch_size`` = the rollout's 2P rows; TRL
``per_device_train_batch_size`` = P prompts, ``gradient_accumulation_steps=1``). Each side runs
in its own fresh process (``_harness.run_in_child``), which also reports its peak RSS
(``ru_maxrss``, imports included). ``--repeats K`` runs each side K times, alternating, and
keeps each side's best run.

Each side also runs a compiled variant unless ``--no-compile`` (as ``bench_grpo``): ours with
``sampling.compile`` (a compiled one-token decode step over a static KV cache) and
``train.compile`` (the blocks compiled, regionally); TRL with what its API offers,
``cache_implementation="static"`` and ``torch_compile=True``. Each side's figure is its best
setting. Every child gets a fresh TorchInductor cache folder.

On a CPU with bf16 matrix units (AVX512-BF16 or AMX) every setting also runs in bf16 mixed
precision on both sides, as in ``bench_grpo`` (``--no-bf16`` skips them): fp32 weights,
gradients and optimiser state under bf16 autocast; ours ``train.mixed_precision=bf16`` (the
update and π_ref's pass under autocast, sampling in fp32), TRL ``bf16=True`` (its default;
compiled without the static cache, which transformers allocates in fp32 and autocast cannot
write bf16 keys into). The MFU column stays against the fp32 peak.

The table shows, per run, what a reader needs to check that both did the same work: the mean
response length (tokens, EOS included; the untrained policy rarely emits EOS, so about
``--max-new-tokens``), the share of responses that ended with EOS, the optimiser steps taken,
the pairs trained per step and the mean reward of the sampled responses; and the milliseconds
per step spent sampling (ours ``OnlineRun.sample``, TRL ``OnlineDPOTrainer._generate``). TRL's
child checks that the prompt ids it generates from are exactly our tokenisation of the prompts.

What cannot be matched exactly (printed with the results too):

* TRL's ``OnlineDPOTrainer`` always samples 2 responses per prompt (``num_generations = 2``
  in its code): K = 2 is the only comparable setting, and the best-vs-worst labeller is then
  simply the better of the two.
* Ties: TRL makes a pair of every prompt (the first response wins a tie); ours drops a tied
  group (no preference, no pair). The labellers above tie only on identical responses; the
  table prints the pairs trained per step so any tie shows.
* Which prompts and responses: each side draws the prompts in its own seeded order and samples
  with its own RNG stream, so the texts differ (the lengths do not: every prompt has the same
  token count, and response lengths are printed).
* ``--labeller model``: both tokenise the decoded prompt + response text again for the reward
  model, but ours appends EOS and reads the score there (as ``rlhf rm`` trains it), TRL reads
  it at the last text token: one token apart, and different scores of the same text (the mean
  reward column differs; the work does not, to that token).
* Our side reads each pair's prompt once: sampling prefills it once for both responses, and
  the update and the π_ref pass (with ``--labeller model`` also the reward model) pack the two
  responses after one copy of it (docs/online_rl.md, "Each prompt read once"); TRL reads it
  for each response. An implementation difference, counted in the figure as it is.

    python benchmarks/bench_online_dpo.py                 # 5 warm-up + 30 measured steps
    python benchmarks/bench_online_dpo.py --no-compile --steps 6 --warmup 2   # a quick check
    python benchmarks/bench_online_dpo.py --labeller model --prompts-per-step 8 --json-only
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _harness import (
    FORWARD_FLOPS_PER_PARAM_TOKEN,
    TRAIN_FLOPS_PER_PARAM_TOKEN,
    check_trl_settings,
    common_arguments,
    cpu_description,
    engine_step_metrics,
    engine_train_settings,
    format_table,
    model_flops_utilization,
    print_result,
    progress,
    result_line,
    run_in_child,
    timed_calls,
    trl_available,
    trl_step_clock,
    trl_train_settings,
)
from bench_dpo import fresh_compile_cache
from bench_grpo import add_bf16_argument, matmul_peak, run_sides, summarize, variants
from bench_grpo import build_workload as build_grpo_workload
from bench_sft import MAX_GRAD_NORM, SEED

BENCHMARK = "online_dpo"
METRIC = "episodes_per_s"
PROMPT_TOKENS = 64
MAX_NEW_TOKENS = 32  # sampling stops earlier at EOS
PROMPTS_PER_STEP = 4
SAMPLES_PER_PROMPT = 2  # K: TRL's OnlineDPOTrainer always samples 2 per prompt
LEARNING_RATE = 1e-5
BETA = 0.1
TEMPERATURE = 1.0
NUM_PROMPTS = 256  # the prompt set both sides cycle through
RULE = "bench_vowel_share"  # the rule labeller's name in our rule registry
LABELLERS = ("rule", "model")
VOWELS = frozenset("aeiouAEIOU")
EXTRA_KEYS = (
    "labeller",
    "ours_setting",
    "trl_setting",
    "ours_response_tokens",
    "trl_response_tokens",
    "ours_optimizer_steps",
    "trl_optimizer_steps",
)
NOT_MATCHED = (
    "TRL samples exactly 2 responses per prompt (num_generations = 2 in its code): K = 2 only",
    "ties: TRL pairs every prompt (the first response wins a tie), ours drops a tied group; "
    "see pairs/step",
    "each side draws prompts in its own seeded order and samples with its own RNG: same "
    "lengths, different texts",
    "ours reads each pair's prompt once (sampling's prefill, the update, the reference pass), "
    "TRL once per response (counted as it is)",
)
NOT_MATCHED_MODEL = (
    "reward model: ours reads the score at an appended EOS, TRL at the last text token (one "
    "token apart; the scores, hence mean reward, differ)",
)


# ---------------------------------------------------------------- the labeller


def vowel_share(responses: Sequence[str]) -> list[float]:
    """The rule labeller's reward of each response: the share of its letters that are vowels
    (0 without letters), rounded to 4 places, plus ``1e-5 x crc32(text) / 2^32``.

    Cheap, deterministic and the same on both sides; the rounding keeps the tie-break below
    the share's resolution, and the tie-break (well above float32's resolution near 1) leaves
    only identical responses tied, which matters because the two sides treat a tie
    differently (see the module docstring)."""
    scores = []
    for text in responses:
        letters = [c for c in text if c.isalpha()]
        share = sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0
        scores.append(round(share, 4) + 1e-5 * zlib.crc32(text.encode("utf-8")) / 2**32)
    return scores


def rule_reward(prompts: Sequence[Any], responses: Sequence[str]) -> Any:
    """Our side's form of :func:`vowel_share`: a reward function of ``(prompts, responses)``
    returning float32 scores [B], registered as ``reward: {rule: bench_vowel_share}``."""
    import torch

    return torch.tensor(vowel_share(responses), dtype=torch.float32)


def trl_reward(prompts: list[Any], completions: list[str], **kwargs: Any) -> list[float]:
    """TRL's form of :func:`vowel_share`: a ``reward_funcs`` callable (it also passes the
    completion ids and the trainer state, unused)."""
    return vowel_share(completions)


# ---------------------------------------------------------------- the shared workload


def build_workload(
    work_dir: Path, prompt_tokens: int, num_prompts: int = NUM_PROMPTS
) -> dict[str, Any]:
    """``bench_grpo``'s workload (the tiny policy, a reward model built from it, ``num_prompts``
    seeded prompts of exactly ``prompt_tokens`` tokens as text and as our token ids), plus the
    text TRL gets: our prompt tokenisation adds the tokenizer's BOS when it has one, and TRL's
    online DPO tokenises without special tokens, so its text starts with the BOS token's text,
    which the tokenizer maps to the same id. TRL's child checks it reproduces our token ids.
    """
    workload = build_grpo_workload(work_dir, num_prompts, prompt_tokens)
    lines = Path(workload["prompts_path"]).read_text(encoding="utf-8").splitlines()
    trl = [{"prompt": workload["bos_text"] + json.loads(line)["prompt"]} for line in lines]
    trl_path = work_dir / "prompts_trl.jsonl"
    trl_path.write_text("".join(json.dumps(row) + "\n" for row in trl), encoding="utf-8")
    return {**workload, "trl_prompts_path": str(trl_path)}


# ---------------------------------------------------------------- the two sides (children)


def train_ours(
    model_dir: str,
    reward_dir: str,
    prompts_path: str,
    out_dir: str,
    iterations: int,
    prompts_per_step: int,
    max_new_tokens: int,
    labeller: str,
    threads: int | None = None,
    compile: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run ``rlhf.recipes.online_dpo.run_online_dpo``; each step's end time and rollout
    figures from metrics.jsonl, the sampling seconds of each iteration (``OnlineRun.sample``).
    ``compile``: ``sampling.compile`` and ``train.compile``; ``bf16``:
    ``train.mixed_precision=bf16``."""
    fresh_compile_cache(out_dir)
    import torch

    if threads:
        torch.set_num_threads(threads)

    from rlhf.recipes.online_common import OnlineRun
    from rlhf.recipes.online_dpo import OnlineDPOConfig, run_online_dpo
    from rlhf.rewards.rules import RULES

    episodes = prompts_per_step * SAMPLES_PER_PROMPT
    if labeller == "rule":
        RULES[RULE] = lambda: rule_reward
        reward: dict[str, Any] = {"rule": RULE}
    else:
        reward = {"model": reward_dir, "device": "cpu", "batch_size": episodes}
    config = OnlineDPOConfig.model_validate(
        {
            "model": {"path": model_dir, "dtype": "float32", "attn_implementation": "sdpa"},
            "data": {"prompts": prompts_path},
            "reward": reward,
            "sampling": {
                "max_new_tokens": max_new_tokens,
                "temperature": TEMPERATURE,
                "top_p": 1.0,
                "top_k": 0,
                "batch_size": episodes,
                "compile": compile,
            },
            "rollout": {
                "iterations": iterations,
                "prompts_per_iteration": prompts_per_step,
                "samples_per_prompt": SAMPLES_PER_PROMPT,
                "ppo_epochs": 1,
                "minibatch_size": episodes,  # the P pairs' 2P rows: one optimiser step
            },
            "loss": {"name": "dpo", "beta": BETA, "label_smoothing": 0.0},
            "labeller": {"kind": "reward"},  # best vs worst of the K = 2 by the reward
            "train": engine_train_settings(
                batch_size=episodes,
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
    with timed_calls(OnlineRun, "sample") as sampling:
        run_online_dpo(config)
    steps = engine_step_metrics(out_dir)
    return {
        "step_end_times": [r["time"] for r in steps],
        "episodes_per_step": [episodes] * len(steps),
        "optimizer_steps": len(steps),
        "sample_s": sampling,
        "response_tokens": [r.get("rollout_response_tokens") for r in steps],
        "eos_rate": [r.get("rollout_eos_rate") for r in steps],
        "pairs": [r.get("rollout_pairs") for r in steps],
        "reward": [r.get("rollout_reward") for r in steps],
        "threads": torch.get_num_threads(),
    }


def train_trl(
    model_dir: str,
    reward_dir: str,
    trl_prompts_path: str,
    tokens_path: str,
    out_dir: str,
    iterations: int,
    prompts_per_step: int,
    max_new_tokens: int,
    labeller: str,
    threads: int | None = None,
    compile: bool = False,
    bf16: bool = False,
) -> dict[str, Any]:
    """Run TRL's ``OnlineDPOTrainer`` configured like our side, timing each step's end and
    each ``_generate`` call, and checking the prompt ids it generates from.

    One TRL step takes ``per_device_train_batch_size`` = P prompts, samples 2 responses to
    each, scores, labels and trains on them: a whole iteration, as on our side. ``compile``:
    a static KV cache for ``generate`` and ``torch_compile`` (the model compiled by the
    Trainer), the nearest TRL's API comes to our compiled decoding; with ``bf16`` (TRL's
    default mixed precision) ``generate`` keeps its dynamic cache (see the module docstring).
    """
    fresh_compile_cache(out_dir)
    import time

    import torch

    if threads:
        torch.set_num_threads(threads)
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    rows = [json.loads(line) for line in Path(trl_prompts_path).read_text("utf-8").splitlines()]
    expected = {
        tuple(json.loads(line)["input_ids"])
        for line in Path(tokens_path).read_text("utf-8").splitlines()
    }
    prompt_tokens = len(next(iter(expected)))
    args = OnlineDPOConfig(
        output_dir=out_dir,
        max_steps=iterations,
        per_device_train_batch_size=prompts_per_step,  # prompts per step; 2 responses each
        gradient_accumulation_steps=1,
        max_new_tokens=max_new_tokens,
        max_length=prompt_tokens + max_new_tokens,  # nothing is cut
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=BETA,
        loss_type="sigmoid",
        missing_eos_penalty=None,
        use_vllm=False,
        **trl_train_settings(LEARNING_RATE, MAX_GRAD_NORM, SEED, bf16=bf16),
        disable_dropout=True,
        model_init_kwargs={"dtype": "float32", "attn_implementation": "sdpa"},
        cache_implementation="static" if compile and not bf16 else None,
        torch_compile=compile,
    )
    clock = trl_step_clock()
    trainer = OnlineDPOTrainer(
        model=model_dir,
        reward_funcs=[trl_reward] if labeller == "rule" else reward_dir,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[clock],
    )
    generate = trainer._generate
    sample_s: list[float] = []
    response_tokens: list[float] = []
    bad_prompts: list[int] = []

    def recorded(*call_args: Any, **call_kwargs: Any) -> Any:
        start = time.perf_counter()
        output = generate(*call_args, **call_kwargs)
        sample_s.append(time.perf_counter() - start)
        prompt_ids, prompt_mask, _, completion_mask = output[:4]
        response_tokens.append(float(completion_mask.sum(1).float().mean()))
        for ids, mask in zip(prompt_ids.tolist(), prompt_mask.tolist(), strict=True):
            kept = tuple(i for i, m in zip(ids, mask, strict=True) if m)
            if kept not in expected:
                bad_prompts.append(len(kept))
        return output

    trainer._generate = recorded
    trainer.train()
    check_trl_settings(trainer, bf16)
    if bad_prompts:
        raise RuntimeError(
            f"TRL generated from {len(bad_prompts)} prompts that are not our ids "
            f"(lengths {sorted(set(bad_prompts))}, expected {prompt_tokens})"
        )
    # TRL's per-step stats are never reset with logging off: one entry per step
    scores = trainer.stats.get("objective/scores") or []
    return {
        "step_end_times": clock.ends,
        "episodes_per_step": [prompts_per_step * SAMPLES_PER_PROMPT] * len(clock.ends),
        "optimizer_steps": trainer.state.global_step,
        "sample_s": sample_s,
        "response_tokens": response_tokens,
        "eos_rate": trainer.stats.get("val/contain_eos_token") or [],
        "pairs": [float(prompts_per_step)] * len(clock.ends),  # every prompt makes a pair
        "reward": scores,
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- the run


def _mean(values: Sequence[Any]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def check_same_work(sides: dict[str, dict[str, Any]], total: int, prompts_per_step: int) -> None:
    """Stop when a run took other than ``total`` optimiser steps or trained on fewer pairs
    than it sampled prompts (a labeller tie on our side) without saying so: print it."""
    for label, side in sides.items():
        if side["optimizer_steps"] != total:
            raise RuntimeError(f"{label}: {side['optimizer_steps']} optimiser steps, not {total}")
        missing = sum(prompts_per_step - (p or 0) for p in side["pairs"])
        if missing:
            progress(f"{label}: {missing:g} tied groups trained no pair (see pairs/step)")


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print a table and, last, the JSON result line."""
    parser = common_arguments(__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--prompts-per-step",
        type=int,
        default=PROMPTS_PER_STEP,
        help="prompts per step, 2 responses each (default %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=MAX_NEW_TOKENS,
        help="response tokens at most (default %(default)s)",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=PROMPT_TOKENS,
        help="tokens of every prompt (default %(default)s)",
    )
    parser.add_argument(
        "--labeller",
        choices=LABELLERS,
        default="rule",
        help="rule: a text rule both sides call; model: a tiny reward model (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in each child (default 1)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs of each side, alternating; each side's best counts (default %(default)s)",
    )
    args = add_bf16_argument(parser).parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        sys.exit("--steps and --repeats must be at least 1 and --warmup at least 0")
    if args.prompts_per_step < 1 or args.max_new_tokens < 1 or args.prompt_tokens < 2:
        sys.exit("--prompts-per-step and --max-new-tokens must be at least 1, --prompt-tokens 2")
    total = args.warmup + args.steps
    per_step = args.prompts_per_step * SAMPLES_PER_PROMPT
    run_trl = not args.skip_trl and trl_available()
    if not args.skip_trl and not run_trl:
        progress("TRL is not installed (pip install -e '.[bench]'); running our side only")

    with tempfile.TemporaryDirectory(prefix="bench-online-dpo-") as tmp:
        work = Path(tmp)
        progress("building the tiny policy, reward model and prompts")
        workload = build_workload(work, args.prompt_tokens)
        progress("timing fp32 matrix products")
        peak = run_in_child(matmul_peak, threads=args.threads)
        common = {
            "model_dir": workload["model_dir"],
            "reward_dir": workload["reward_dir"],
            "iterations": total,
            "prompts_per_step": args.prompts_per_step,
            "max_new_tokens": args.max_new_tokens,
            "labeller": args.labeller,
            "threads": args.threads,
        }
        ours_data = {"prompts_path": workload["prompts_path"]}
        trl_data = {
            "trl_prompts_path": workload["trl_prompts_path"],
            "tokens_path": workload["tokens_path"],
        }
        runs = []
        for suffix, tag, variant in variants(args):
            setting = common | variant
            runs.append(
                (
                    f"ours{suffix}",
                    train_ours,
                    setting | ours_data | {"out_dir": f"{work}/ours{tag}"},
                )
            )
            if run_trl:
                runs.append(
                    (
                        f"trl{suffix}",
                        train_trl,
                        setting | trl_data | {"out_dir": f"{work}/trl{tag}"},
                    )
                )
        sides = run_sides(runs, args.repeats)
    if "ours" not in {label.split()[0] for label in sides}:
        sys.exit("our side failed")
    check_same_work(sides, total, args.prompts_per_step)

    # MFU of our side's work per episode: the update's forward and backward over its response
    # and half its prompt (a pair's prompt is read once), and forward-only passes over as many
    # tokens for sampling and π_ref (and the reward model with --labeller model)
    n, peak_flops = workload["non_embedding_params"], peak["flops"]
    response = _mean(
        [t for label, s in sides.items() if label.startswith("ours") for t in s["response_tokens"]]
    )
    sequence = args.prompt_tokens / SAMPLES_PER_PROMPT + (response or args.max_new_tokens)
    forward_passes = 2 + (args.labeller == "model")

    def mfu(eps: float) -> float:
        return model_flops_utilization(
            eps * sequence, n, peak_flops, TRAIN_FLOPS_PER_PARAM_TOKEN
        ) + model_flops_utilization(
            eps * sequence * forward_passes, n, peak_flops, FORWARD_FLOPS_PER_PARAM_TOKEN
        )

    rows, best = summarize(sides, args.warmup, total, per_step, mfu)
    for row, side in zip(rows, sides.values(), strict=True):
        measured = side["sample_s"][args.warmup :]
        row += [
            1000 * statistics.fmean(measured) if len(measured) == args.steps else None,
            _mean(side["response_tokens"]),
            _mean(side["eos_rate"]),
            side["optimizer_steps"],
            _mean(side["pairs"]),
            _mean(side["reward"]),
        ]
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
    result["labeller"] = args.labeller
    result["ours_setting"] = ours["setting"]
    result["trl_setting"] = None if trl is None else trl["setting"]
    for name, side in (("ours", ours), ("trl", trl)):
        tokens = None if side is None else _mean(side["response_tokens"])
        result[f"{name}_response_tokens"] = None if tokens is None else round(tokens, 2)
        result[f"{name}_optimizer_steps"] = None if side is None else side["optimizer_steps"]
    if not args.json_only:
        print(cpu_description())
        print(
            f"online DPO, tiny Llama policy ({workload['params'] / 1e6:.2f}M params, N = "
            f"{n / 1e6:.2f}M non-embedding), fp32 CPU, {ours['threads']} thread(s), "
            f"{args.prompts_per_step} prompts x {SAMPLES_PER_PROMPT} samples of <= "
            f"{args.max_new_tokens} tokens after {args.prompt_tokens}-token prompts per step, "
            f"labeller {args.labeller}, sigmoid DPO beta {BETA}, {args.warmup} warm-up + "
            f"{args.steps} measured steps"
        )
        print(f"peak fp32 matmul ({peak['size']}x{peak['size']}): {peak_flops / 1e9:.1f} GFLOP/s")
        header = [
            "side",
            "episodes/s",
            "peak MB",
            "MFU",
            "median ms/step",
            "max ms",
            "first s",
            "sampling ms/step",
            "response tokens",
            "EOS rate",
            "optimiser steps",
            "pairs/step",
            "mean reward",
        ]
        print(format_table(header, rows))
        if result["ratio"] is not None:
            print(
                f"ratio ours/trl: {result['ratio']:.3f} ({ours['setting']} against "
                f"{trl['setting']}); peak memory ours {ours['peak_rss_mb']:.0f} MB, TRL "
                f"{trl['peak_rss_mb']:.0f} MB"
            )
        notes = NOT_MATCHED + (NOT_MATCHED_MODEL if args.labeller == "model" else ())
        print("not matched: " + "; ".join(notes))
    print_result(result, EXTRA_KEYS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
