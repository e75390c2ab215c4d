"""GRPO with vLLM sampling in the trainer's process, on one CUDA GPU: throughput, sync, MFU.

GPU only (it stops with one line where torch sees no CUDA device or vLLM is not installed).
A Qwen2-0.5B-shaped model is built from its config with seeded random weights (hidden 896,
24 layers, 14 heads with 2 key/value heads, MLP 4864, vocabulary 151,936, tied embeddings:
494,032,768 parameters, N = 357,898,112 without the embeddings; RoPE θ left at the config's
default) and saved with a byte-level BPE tokenizer trained on the built-in
arithmetic problems (``rlhf.models.tiny.train_bpe_tokenizer``), its vocabulary filled up with
added filler tokens to the model's 151,936. Then our GRPO recipe (``rlhf grpo``, through the
recipe registry) trains it on ``builtin:arithmetic`` prompts with the arithmetic rule reward:

* ``sampling.engine=vllm``, ``sampling.vllm.placement=trainer`` (vLLM in the trainer's
  process; on a GPU it sleeps, freeing its KV cache and weights, while the trainer trains),
  ``sampling.vllm.dtype=bfloat16``; every iteration's optimiser step marks the engine stale and
  the next rollout pushes and verifies all weights first;
* bf16 mixed precision on cuda (``train.mixed_precision=bf16``: fp32 weights and AdamW, bf16
  autocast), the reference a bf16 frozen copy of the initial policy, k3 KL (β = 0.04);
* one optimiser step per iteration: ``--prompts`` prompts x ``--samples`` responses of at
  most ``--max-new-tokens`` tokens at temperature 1 (random weights rarely sample EOS, so
  responses run to the limit), micro-batches of ``--micro-batch``.

Then it reads the run's ``metrics.jsonl`` (one row per optimiser step) and prints, over the
steps after ``--warmup`` (the first pays for CUDA graphs, the allocator, ...): vLLM's generated
tokens per second (``rollout_engine_tokens_per_second``), the weight-sync seconds
(``rollout_engine_sync_seconds``, push + verification) also per 100M parameters, the
generation seconds, the train-inference mismatch (``rollout_mismatch_logp_abs_mean``,
``rollout_mismatch_kl``), the step seconds and the MFU: ``6 · N · tokens / step seconds /
peak``, N the non-embedding parameters and tokens the step's trained tokens (prompt +
response, the trainer's ``tokens``), over the GPU's dense bf16 peak from a small table
(``--peak-tflops`` for another GPU). ``mfu`` divides by the whole step (rollout included),
``train_mfu`` by the step less the engine's generation and sync seconds; both leave out the
forward-only passes (the trainer's log-probs and the reference's), so they undercount.

    pip install -e '.[vllm]'          # in the GPU environment (or: make vllm VLLM_EXTRA=vllm ...)
    python benchmarks/gpu/grpo_vllm.py
    python benchmarks/gpu/grpo_vllm.py --iterations 4 --max-new-tokens 128 --json-only
    python benchmarks/gpu/grpo_vllm.py sampling.vllm.gpu_memory_utilization=0.4   # overrides

Last stdout line: one JSON object (``benchmark`` ``grpo_vllm``, ``gpu``, ``params``,
``non_embedding_params``, ``engine_tokens_per_s``, ``sync_s``, ``sync_s_per_100m``,
``generate_s``, ``step_s``, ``tokens_per_step``, ``mfu``, ``train_mfu``, ``peak_flops``,
``mismatch_logp_abs_mean``, ``mismatch_kl``, ``wall_s``); progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEED = 0
# Qwen2-0.5B's shape (its config.json), random weights
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TOKENIZER_VOCAB = 2000  # the BPE part; filler tokens fill the rest of the model's vocabulary
# dense (not 2:4 sparse) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s; the first
# name that torch.cuda.get_device_name contains wins, so the more specific names come first
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)


def progress(message: str) -> None:
    print(f"[grpo_vllm] {message}", file=sys.stderr, flush=True)


def require_gpu() -> str:
    """The GPU's name, or exit with one line saying what is missing."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "grpo_vllm.py needs a CUDA GPU and torch sees none (torch.cuda.is_available() is "
            "False): run it on a GPU machine"
        )
    if importlib.util.find_spec("vllm") is None:
        sys.exit("grpo_vllm.py needs vLLM: pip install -e '.[vllm]' in this environment")
    return torch.cuda.get_device_name()


def peak_flops(gpu: str, override_tflops: float | None) -> float | None:
    if override_tflops is not None:
        return override_tflops * 1e12
    for name, flops in PEAK_BF16_FLOPS:
        if name in gpu:
            return flops
    return None


def build_model(folder: Path) -> dict[str, int]:
    """Save the random Qwen2-shaped model and its tokenizer to ``folder``; its sizes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf.models.load import save_model
    from rlhf.models.tiny import count_parameters, train_bpe_tokenizer
    from rlhf.sim.builtin import load_builtin

    texts = [
        record.prompt + record.completion  # type: ignore[attr-defined]
        for record in load_builtin("builtin:arithmetic?n=5000&seed=99")
    ]
    tokenizer = train_bpe_tokenizer(texts, TOKENIZER_VOCAB)
    vocab = MODEL_SHAPE["vocab_size"]
    tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(vocab - len(tokenizer))])
    tokenizer.model_max_length = MODEL_SHAPE["max_position_embeddings"]
    config = Qwen2Config(
        **MODEL_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]), torch.device("cuda"):
        torch.manual_seed(SEED)
        model = Qwen2ForCausalLM(config)
    save_model(model, tokenizer, folder)
    sizes = {
        "params": count_parameters(model, non_embedding=False),
        "non_embedding_params": count_parameters(model, non_embedding=True),
    }
    del model
    torch.cuda.empty_cache()
    return sizes


def grpo_settings(args: argparse.Namespace, model_dir: Path, out: Path) -> dict[str, Any]:
    episodes = args.prompts * args.samples
    return {
        "out": str(out),
        "overwrite": True,
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir), "dtype": "float32", "attn_implementation": "sdpa"},
        "reference": {"dtype": "bfloat16"},
        "data": {"prompts": "builtin:arithmetic?n=2000"},
        "reward": {"rule": "arithmetic"},
        "sampling": {
            "engine": "vllm",
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "batch_size": episodes,
            "vllm": {"placement": args.placement, "dtype": "bfloat16"},
        },
        "rollout": {
            "iterations": args.iterations,
            "prompts_per_iteration": args.prompts,
            "samples_per_prompt": args.samples,
            "ppo_epochs": 1,
            "minibatch_size": episodes,
        },
        "kl": {"coef": 0.04, "estimator": "k3", "in_reward": False},
        "train": {
            "batch_size": args.micro_batch,
            "lr": 1e-6,
            "schedule": "constant",
            "warmup_steps": 0,
            "seed": SEED,
            "device": "cuda",
            "mixed_precision": "bf16",
            "log_every": 1,
            "eval_every": 0,
            "save_every": 0,
            "save_optimizer": "never",
        },
        "eval": {"prompts": 0},
    }


def step_rows(out: Path) -> list[dict[str, Any]]:
    """The training rows of the run's metrics.jsonl, in step order."""
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return sorted(
        (row for row in rows if row.get("split", "train") == "train" and "time" in row),
        key=lambda row: row["step"],
    )


def median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(row[key]) for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--iterations", type=int, default=6, help="GRPO iterations (steps)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16, help="train.batch_size")
    parser.add_argument("--placement", choices=("trainer", "process"), default="trainer")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--out", type=Path, default=None, help="keep the model and run here")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value for the GRPO config")
    args = parser.parse_args(argv)
    if args.iterations <= args.warmup or args.warmup < 0:
        sys.exit("--iterations must exceed --warmup (and --warmup be at least 0)")
    if (args.prompts * args.samples) % args.micro_batch:
        sys.exit("--prompts x --samples must be a multiple of --micro-batch")

    gpu = require_gpu()
    peak = peak_flops(gpu, args.peak_tflops)
    if peak is None:
        progress(f"no bf16 peak known for {gpu!r}: pass --peak-tflops for the MFU")
    root = args.out or Path(tempfile.mkdtemp(prefix="grpo-vllm-"))
    start = time.perf_counter()
    progress(f"{gpu}: building the Qwen2-0.5B-shaped model in {root / 'model'}")
    sizes = build_model(root / "model")
    progress(f"{sizes['params']:,} parameters ({sizes['non_embedding_params']:,} non-embedding)")

    from rlhf.config import load_config
    from rlhf.recipes.registry import recipe

    entry = recipe("grpo")
    config = load_config(
        entry.config_class(),
        None,
        args.overrides,
        base=grpo_settings(args, root / "model", root / "run"),
    )
    progress(f"GRPO: {args.iterations} iterations, vLLM placement {args.placement}")
    entry.run_function()(config)
    wall = time.perf_counter() - start

    rows = step_rows(root / "run")
    if len(rows) <= args.warmup:
        sys.exit(f"the run logged {len(rows)} steps, no more than --warmup {args.warmup}")
    ends = [0.0] + [row["time"] for row in rows]  # seconds since training began
    durations = [end - begin for begin, end in itertools.pairwise(ends)]
    measured = rows[args.warmup :]
    step_s = statistics.median(durations[args.warmup :])
    tokens = statistics.median(float(row["tokens"]) for row in measured)
    generate_s = median_of(measured, "rollout_engine_generate_seconds")
    sync_s = median_of(measured, "rollout_engine_sync_seconds")
    n = sizes["non_embedding_params"]
    mfu = train_mfu = None
    if peak is not None:
        mfu = 6 * n * tokens / step_s / peak
        train_s = step_s - (generate_s or 0.0) - (sync_s or 0.0)
        train_mfu = 6 * n * tokens / train_s / peak if train_s > 0 else None
    result = {
        "benchmark": "grpo_vllm",
        "gpu": gpu,
        "placement": args.placement,
        "params": sizes["params"],
        "non_embedding_params": n,
        "engine_tokens_per_s": median_of(measured, "rollout_engine_tokens_per_second"),
        "sync_s": sync_s,
        "sync_s_per_100m": None if sync_s is None else sync_s * 1e8 / sizes["params"],
        "generate_s": generate_s,
        "step_s": step_s,
        "tokens_per_step": tokens,
        "mfu": mfu,
        "train_mfu": train_mfu,
        "peak_flops": peak,
        "mismatch_logp_abs_mean": median_of(measured, "rollout_mismatch_logp_abs_mean"),
        "mismatch_kl": median_of(measured, "rollout_mismatch_kl"),
        "response_tokens": median_of(measured, "rollout_response_tokens"),
        "wall_s": wall,
    }
    if not args.json_only:
        print(f"{gpu}; {sizes['params']:,} parameters, N = {n:,} non-embedding")
        print(
            f"{args.prompts} prompts x {args.samples} samples, <= {args.max_new_tokens} new "
            f"tokens, {len(measured)} measured steps after {args.warmup} warm-up"
        )
        print("step  seconds  tokens  engine tok/s  generate s  sync s  |Δlogp|  mismatch kl")
        for row, seconds in zip(rows, durations, strict=True):
            print(
                f"{row['step']:>4}  {seconds:7.2f}  {row['tokens']:6.0f}  "
                f"{row.get('rollout_engine_tokens_per_second', float('nan')):12.0f}  "
                f"{row.get('rollout_engine_generate_seconds', float('nan')):10.2f}  "
                f"{row.get('rollout_engine_sync_seconds', float('nan')):6.2f}  "
                f"{row.get('rollout_mismatch_logp_abs_mean', float('nan')):7.4f}  "
                f"{row.get('rollout_mismatch_kl', float('nan')):11.2e}"
            )
        for key, value in result.items():
            if key != "benchmark":
                print(f"{key}: {value}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
