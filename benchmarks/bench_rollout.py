"""Generation throughput of our engines: HF ``generate`` eager, HF compiled, and vLLM.

Workload: a batch of B distinct prompts of exactly ``--prompt-tokens`` tokens (seeded
synthetic text, BOS included), one response each, sampled at temperature 1 with no top-k /
top-p, at most ``--new-tokens`` new tokens (a response stops only at EOS). Two Llamas built in
code with random weights, fp32 on CPU, head size 64 (vLLM's CPU attention takes it):

* ``tiny``: the benchmarks' tiny Llama (``bench_sft``: hidden 256, 4 layers, 4 heads, MLP 688,
  byte-level BPE vocabulary of 2,000; 4.19M parameters);
* ``medium``: hidden 512, 8 layers, 8 heads, MLP 1376, vocabulary 32,000 (58,073,600
  parameters, 25.3M of them outside the embeddings and output layer). A BPE tokenizer trained on the synthetic
  text stops near 7,000 entries, so its vocabulary is filled up to 32,000 with added filler
  tokens: every id the model can sample decodes to text.

With random weights EOS (id 2) comes with probability about 1/vocabulary per token, so a few
responses end early; the figure is the honest one either way: **generated tokens** (the sum of
the responses' masks, EOS included) over the wall seconds of the whole ``engine.generate``
call (prompt tokenisation, decoding the texts and, for vLLM, the trip to its engine process
included). No engine computes the trainer's log-probs (``return_logps=False``); vLLM returns
its sampling log-probs as always.

Engines (``--engines``):

* ``hf``: :class:`rlhf.rollout.hf.HFGenerationEngine`, ``generate`` with a KV cache;
* ``hf-compiled``: the same with ``SamplingParams(compile=True)`` (a ``torch.compile``'d
  one-token step over a static KV cache, :func:`rlhf.rollout.compiled.compiled_generate`);
  compiling happens in the warm-up call of each batch size, with a fresh TorchInductor cache;
* ``vllm``: :class:`rlhf.rollout.vllm.VLLMEngine` with the default settings
  (``VLLMConfig()``: its own engine process with ``.venv-vllm``'s Python, the policy's dtype,
  float32 here; eager on CPU), ``batch_size`` (vLLM's ``max_num_seqs``) the largest batch.
  Also timed: the engine's start (``start_seconds``), and the **weight sync**: after the timed
  calls the engine is marked stale (as an optimiser step does) and ``engine.sync()`` pushes
  every weight (float32, buckets of 256 MB) and verifies it (receipt checksums and a 64-token
  probe scored by both sides). ``verified s`` is the whole ``sync()``; ``push s`` is the
  engine's own ``sync_seconds``, the push alone (the receipt checksums included: they are
  computed whether or not the sync is verified), which is what a sync costs with
  ``sampling.vllm.verify_every=0``. Both are scaled to seconds per 100M parameters (all
  parameters travel, embeddings included). Part of a sync is a fixed cost (vLLM's in-place
  reload, the probe), which the tiny model's figure magnifies; with two models the table
  also gives the marginal cost, the slope between them.
  ``--vllm-threads N`` sets ``sampling.vllm.threads`` (default: vLLM's choice; on 2 cores
  vLLM logs "Reducing Torch threads from 2 to 1 for serving").

Each engine and model runs in its own fresh process (``_harness.run_in_child``); every batch
size first gets one untimed warm-up call (compiling, vLLM's first sync and first call), then
``--repeats`` timed calls, each on new prompts (so vLLM's prefix cache never holds them); the
table gives the median. ``first s`` is the warm-up call's seconds.

    .venv/bin/python benchmarks/bench_rollout.py
    .venv/bin/python benchmarks/bench_rollout.py --sizes tiny --batches 8 --new-tokens 16 --repeats 1
    .venv/bin/python benchmarks/bench_rollout.py --engines hf,vllm --json-only

Last stdout line: one JSON object ``{"benchmark": "rollout", "cpu": ..., "results": [...],
"sync": [...], "sync_s_per_100m": ...}``; each result has ``engine``, ``model``, ``params``,
``batch``, ``new_tokens``, ``tokens`` (median generated tokens per call), ``seconds`` (median),
``tokens_per_s`` (median over the repeats), ``eos_rate``, ``first_s`` and, for vLLM,
``start_s`` and ``engine_tokens_per_s`` (its runner's own ``generate`` alone).
``sync_s_per_100m`` is the verified sync of the largest model measured (null without vLLM),
``sync_push_s_per_100m`` its push alone, ``sync_marginal_s_per_100m`` the slope between the
smallest and largest model (null with one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    BenchmarkError,
    cpu_description,
    format_table,
    parse_list,
    progress,
    run_in_child,
    synthetic_sentences,
    text_of_exact_length,
    word_stream,
)

BENCHMARK = "rollout"
SEED = 0
ENGINES = ("hf", "hf-compiled", "vllm")
# name -> the Llama's shape, its tokenizer's vocabulary and the sentences that tokenizer
# learns from (the tiny one is bench_sft's exactly)
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 256,
        "num_layers": 4,
        "num_heads": 4,
        "intermediate_size": 688,
        "vocab_size": 2000,
        "sentences": 4000,
    },
    "medium": {
        "hidden_size": 512,
        "num_layers": 8,
        "num_heads": 8,
        "intermediate_size": 1376,
        "vocab_size": 32000,
        "sentences": 20000,
    },
}
MAX_POSITIONS = 512
TEMPERATURE = 1.0


# ---------------------------------------------------------------- the workload


def build_model(size: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``size``: a seeded random fp32 Llama and a byte-level BPE
    tokenizer trained on synthetic text, filled up with added filler tokens to the model's
    vocabulary when the text has too few merges (pad 0, BOS 1, EOS 2)."""
    from rlhf.models.tiny import build_tiny_llama, train_bpe_tokenizer

    spec = SIZES[size]
    vocab = spec["vocab_size"]
    tokenizer = train_bpe_tokenizer(synthetic_sentences(spec["sentences"], SEED), vocab)
    if len(tokenizer) < vocab:
        tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(vocab - len(tokenizer))])
    tokenizer.model_max_length = MAX_POSITIONS
    model = build_tiny_llama(
        len(tokenizer),
        hidden_size=spec["hidden_size"],
        num_layers=spec["num_layers"],
        num_heads=spec["num_heads"],
        intermediate_size=spec["intermediate_size"],
        max_position_embeddings=MAX_POSITIONS,
        seed=SEED,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return model, tokenizer


def make_prompts(tokenizer: Any, count: int, prompt_tokens: int, seed: int) -> list[str]:
    """``count`` seeded prompts of exactly ``prompt_tokens`` tokens each (BOS included when the
    tokenizer's convention adds one)."""
    from rlhf.rollout.tokens import prompt_token_ids

    words = word_stream(seed)
    bos = 1 if prompt_token_ids(tokenizer, "a")[:1] == [tokenizer.bos_token_id] else 0
    prompts = []
    for index in range(count):
        prompt = text_of_exact_length(tokenizer, words, prompt_tokens - bos, leading_space=False)
        length = len(prompt_token_ids(tokenizer, prompt))
        if length != prompt_tokens:
            raise RuntimeError(f"prompt {index}: {length} tokens, expected {prompt_tokens}")
        prompts.append(prompt)
    return prompts


# ---------------------------------------------------------------- one engine (a child)


def measure(
    engine: str,
    size: str,
    batches: list[int],
    new_tokens: int,
    repeats: int,
    prompt_tokens: int,
    out_dir: str,
    vllm_threads: int | None = None,
) -> dict[str, Any]:
    """Time ``engine`` on model ``size``: per batch size one warm-up call, then ``repeats``
    timed calls on new prompts; for vLLM also its start and ``repeats`` weight syncs."""
    import os

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(out_dir) / "inductor-cache")  # cold start
    import torch

    from rlhf.models.tiny import count_parameters
    from rlhf.rollout.factory import build_engine, close_engine
    from rlhf.rollout.types import SamplingParams
    from rlhf.rollout.vllm_config import VLLMConfig

    model, tokenizer = build_model(size)
    params = count_parameters(model, non_embedding=False)
    calls = sum(batches) * (repeats + 1)
    prompts = iter(make_prompts(tokenizer, calls, prompt_tokens, SEED + 7))
    kind = "vllm" if engine == "vllm" else "hf"
    built = build_engine(
        model,
        tokenizer,
        batch_size=max(batches),
        kind=kind,
        vllm=VLLMConfig(threads=vllm_threads) if kind == "vllm" else None,
    )
    start_s = getattr(built, "start_seconds", None)  # vLLM's engine start
    rows: list[dict[str, Any]] = []
    sync: dict[str, Any] | None = None
    try:
        for batch in batches:

            def call(seed: int, batch: int = batch) -> dict[str, float]:
                sampling = SamplingParams(
                    max_new_tokens=new_tokens,
                    temperature=TEMPERATURE,
                    top_p=1.0,
                    top_k=0,
                    seed=seed,
                    return_logps=False,
                    compile=engine == "hf-compiled",
                )
                texts = [next(prompts) for _ in range(batch)]
                begin = time.perf_counter()
                out = built.generate(texts, sampling)
                seconds = time.perf_counter() - begin
                tokens = float(out.response_mask.sum())
                return {
                    "seconds": seconds,
                    "tokens": tokens,
                    "eos_rate": float(out.ended_with_eos.float().mean()),
                    "engine_tokens_per_s": out.engine_stats.get("tokens_per_second", 0.0),
                }

            first = call(seed=SEED)
            timed = [call(seed=SEED + 1 + repeat) for repeat in range(repeats)]
            row: dict[str, Any] = {
                "engine": engine,
                "model": size,
                "params": params,
                "batch": batch,
                "new_tokens": new_tokens,
                "tokens": statistics.median(t["tokens"] for t in timed),
                "seconds": statistics.median(t["seconds"] for t in timed),
                "tokens_per_s": statistics.median(t["tokens"] / t["seconds"] for t in timed),
                "eos_rate": statistics.mean(t["eos_rate"] for t in timed),
                "first_s": first["seconds"],
            }
            if kind == "hf":
                row["threads"] = torch.get_num_threads()
            else:
                row["start_s"] = start_s
                row["engine_tokens_per_s"] = statistics.median(
                    t["engine_tokens_per_s"] for t in timed
                )
            rows.append(row)
        if kind == "vllm":
            verified, pushed = [], []
            for _ in range(repeats):
                built.mark_stale()  # type: ignore[attr-defined]
                begin = time.perf_counter()
                built.sync()  # type: ignore[attr-defined]
                verified.append(time.perf_counter() - begin)
                pushed.append(built.sync_seconds)  # type: ignore[attr-defined]
            sync = {
                "model": size,
                "params": params,
                "verified_s": statistics.median(verified),
                "push_s": statistics.median(pushed),
                "verified_s_per_100m": statistics.median(verified) * 1e8 / params,
                "push_s_per_100m": statistics.median(pushed) * 1e8 / params,
                "probe_logp_gap": built.probe_gap,  # type: ignore[attr-defined]
            }
    finally:
        close_engine(built)
    return {"rows": rows, "sync": sync}


# ---------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes",
        type=lambda text: parse_list(text, tuple(SIZES)),
        default=list(SIZES),
        help="models, comma-separated (default tiny,medium)",
    )
    parser.add_argument(
        "--batches",
        type=lambda text: [int(item) for item in parse_list(text)],
        default=[8, 64],
        help="sequences per call, comma-separated (default 8,64)",
    )
    parser.add_argument(
        "--engines",
        type=lambda text: parse_list(text, ENGINES),
        default=list(ENGINES),
        help="comma-separated (default hf,hf-compiled,vllm)",
    )
    parser.add_argument("--new-tokens", type=int, default=128, help="default %(default)s")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="default %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (default 3)")
    parser.add_argument(
        "--vllm-threads",
        type=int,
        default=None,
        help="sampling.vllm.threads: CPU threads vLLM binds (default: vLLM's choice)",
    )
    parser.add_argument(
        "--json-only", action="store_true", help="print only the JSON result line on stdout"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 1 or min(args.batches) < 1:
        sys.exit("--repeats, --new-tokens and every batch must be at least 1")
    if args.prompt_tokens + args.new_tokens > MAX_POSITIONS:
        sys.exit(f"--prompt-tokens + --new-tokens must fit in {MAX_POSITIONS} positions")

    rows: list[dict[str, Any]] = []
    syncs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        for size in args.sizes:
            for engine in args.engines:
                progress(f"{engine} on {size}: batches {args.batches}")
                try:
                    result = run_in_child(
                        measure,
                        engine=engine,
                        size=size,
                        batches=args.batches,
                        new_tokens=args.new_tokens,
                        repeats=args.repeats,
                        prompt_tokens=args.prompt_tokens,
                        out_dir=str(Path(tmp) / f"{engine}-{size}"),
                        vllm_threads=args.vllm_threads,
                    )
                except BenchmarkError as error:
                    if engine != "vllm":
                        raise
                    progress(f"vllm on {size} failed, left out: {error}")
                    continue
                rows.extend(result["rows"])
                if result["sync"] is not None:
                    syncs.append(result["sync"])
    largest = max(syncs, key=lambda sync: sync["params"], default=None)
    smallest = min(syncs, key=lambda sync: sync["params"], default=None)
    marginal = None  # the slope between the smallest and largest model: without fixed costs
    if largest is not None and smallest is not None and largest is not smallest:
        extra = largest["verified_s"] - smallest["verified_s"]
        marginal = extra * 1e8 / (largest["params"] - smallest["params"])
    result_json = {
        "benchmark": BENCHMARK,
        "cpu": cpu_description(),
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "results": [
            {
                key: round(value, 4) if isinstance(value, float) else value
                for key, value in row.items()
            }
            for row in rows
        ],
        "sync": [
            {
                key: round(value, 6) if isinstance(value, float) else value
                for key, value in s.items()
            }
            for s in syncs
        ],
        "sync_s_per_100m": None if largest is None else round(largest["verified_s_per_100m"], 4),
        "sync_push_s_per_100m": None if largest is None else round(largest["push_s_per_100m"], 4),
        "sync_marginal_s_per_100m": None if marginal is None else round(marginal, 4),
    }
    if not args.json_only:
        print(cpu_description())
        params = {row["model"]: row["params"] for row in rows}
        for size, count in params.items():
            spec = SIZES[size]
            print(
                f"{size}: Llama hidden {spec['hidden_size']}, {spec['num_layers']} layers, "
                f"{spec['num_heads']} heads, MLP {spec['intermediate_size']}, vocabulary "
                f"{spec['vocab_size']:,}: {count:,} parameters"
            )
        print(
            f"{args.prompt_tokens}-token prompts, <= {args.new_tokens} new tokens each at "
            f"temperature {TEMPERATURE:g}, fp32, median of {args.repeats} timed calls"
        )
        columns = {
            "engine": "engine", "model": "model", "batch": "batch", "tokens_per_s": "tokens/s",
            "seconds": "seconds", "tokens": "tokens", "eos_rate": "eos rate",
            "first_s": "first s", "start_s": "start s", "engine_tokens_per_s": "engine tok/s",
        }  # fmt: skip
        table = [[row.get(key) for key in columns] for row in rows]
        print(format_table(list(columns.values()), table))
        if syncs:
            sync_columns = {
                "model": "model", "params": "params", "verified_s": "verified s",
                "push_s": "push s", "verified_s_per_100m": "verified s/100M",
                "push_s_per_100m": "push s/100M",
            }  # fmt: skip
            print("vLLM weight sync (float32, all parameters):")
            table = [[sync[key] for key in sync_columns] for sync in syncs]
            print(format_table(list(sync_columns.values()), table))
            if marginal is not None:
                print(
                    f"verified sync, marginal cost between {smallest['model']} and "
                    f"{largest['model']}: {marginal:.3f} s per 100M parameters"
                )
    print(json.dumps(result_json), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
