"""DPO, IPO and hinge on a real pretrained model: teach stories260K to mention a word.

An experiment, not a timing benchmark. The preference data are built in code from the base
model's own samples, so the only thing a pair says is "this story has the property":

1. Prompts are story openings ("Once upon a time, there was a little girl named Lily. She"),
   split into training prompts and held-out prompts (disjoint).
2. The base model (``../shared/models/stories260K``, a 260K-parameter Llama trained on
   TinyStories) writes K stories per training prompt (``rlhf.rollout.factory.build_engine``, temperature
   1, no top-k / top-p, seeded). Candidate words' base rates (share of stories that contain
   the word, as a whole word, any case) are measured on these samples; the target is the
   candidate whose rate is nearest 25% within 10–40%.
3. Pairs: for each training prompt, chosen = a story with the word, rejected = one without
   (each sample used once). Held-out prompts' base samples give held-out pairs for the
   recipe's own evaluation (preference accuracy); they are never trained on.
4. Each loss (``dpo``, ``ipo``, ``hinge``) trains its own run through
   :func:`rlhf.recipes.dpo.run_dpo` on the same pairs, from the same base weights.
5. On the held-out prompts, for the base model and for each trained policy: the word's rate
   in the policy's samples, and the sampled KL(π‖π_ref) on those same samples,
   ``mean_i Σ_t log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)`` with ``y ~ π`` (the k1
   estimator: unbiased for the KL of the sequence distributions; its standard error is
   reported with it).

Responses are cut at ``--max-new-tokens`` (stories this short rarely end), so the rate and the
KL are those of the first ``max_new_tokens`` tokens of a story. The recipe appends EOS to every
response it trains on, chosen and rejected alike.

    python benchmarks/dpo_stories.py               # about 1 minute on 2 cores
    python benchmarks/dpo_stories.py --losses dpo --json-only

Last stdout line: one JSON object with the figures (``word``, ``base_rate``, per loss its
``rate`` and ``kl``, ``pairs``, ``wall_s``); progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from _harness import format_table, progress

STORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"

GIRLS = ("Lily", "Sue", "Anna", "Mia", "Lucy", "Emma", "Zoe", "Sara", "Amy", "Kim", "Ella", "Rosie")
BOYS = ("Tom", "Ben", "Max", "Tim", "Sam", "Jack", "Leo", "Bob", "Joe", "Dan", "Finn", "Jake")
OPENINGS = (
    "Once upon a time, there was a little {kind} named {name}. {pronoun}",
    "One day, {name} went to the park. {pronoun}",
    "{name} was very sad. {pronoun}",
    "{name} and mom went for a walk. They",
    "{name} woke up early. {pronoun}",
    "{name} liked to draw. {pronoun}",
)
# Story words a reader would notice (things, feelings, activities), not function words.
CANDIDATES = (
    "happy", "dog", "ball", "tree", "flower", "cat", "bird", "friend", "toy", "sun", "big",
    "car", "cake", "red", "play", "mom", "fun",
)  # fmt: skip
RATE_WINDOW = (0.10, 0.40)  # the base rates a target word may have
TARGET_RATE = 0.25
ENGINE_BATCH = 256  # sequences per generate call; part of the seeded stream, so fixed here


@dataclass(frozen=True)
class LossRun:
    """One training run: the loss and the hyperparameters tuned for it."""

    name: str
    beta: float
    lr: float
    steps: int


@dataclass(frozen=True)
class Settings:
    """The experiment's size; the test uses a smaller one than the script."""

    train_prompts: int = 104
    held_out_prompts: int = 40
    samples_per_prompt: int = 16  # K base samples per training prompt, to build pairs from
    eval_samples_per_prompt: int = 16  # samples per held-out prompt for the rate and the KL
    pairs_per_prompt: int = 4  # at most this many pairs per training prompt
    max_new_tokens: int = 40
    batch_size: int = 16  # pairs per optimiser step
    max_length: int = 128
    seed: int = 0
    runs: tuple[LossRun, ...] = field(
        default=(
            LossRun("dpo", beta=0.1, lr=3e-5, steps=120),
            LossRun("ipo", beta=1.0, lr=3e-5, steps=120),
            LossRun("hinge", beta=0.1, lr=3e-5, steps=120),
        )
    )


# ---------------------------------------------------------------- prompts, words, pairs


def story_prompts(count: int, seed: int) -> list[str]:
    """``count`` distinct story openings, in a seeded order."""
    people = [(name, "girl", "She") for name in GIRLS] + [(name, "boy", "He") for name in BOYS]
    prompts = [
        opening.format(name=name, kind=kind, pronoun=pronoun)
        for opening in OPENINGS
        for name, kind, pronoun in people
    ]
    if count > len(prompts):
        raise ValueError(f"asked for {count} prompts; only {len(prompts)} openings exist")
    random.Random(seed).shuffle(prompts)
    return prompts[:count]


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` appears in ``text`` as a whole word, in any case ("Dog." yes, "dogs" no)."""
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


def word_rate(texts: Sequence[str], word: str) -> float:
    """Share of ``texts`` that contain ``word``."""
    if not texts:
        raise ValueError("no texts to measure")
    return sum(contains_word(text, word) for text in texts) / len(texts)


def pick_word(rates: dict[str, float]) -> str:
    """The candidate whose base rate is nearest :data:`TARGET_RATE` inside :data:`RATE_WINDOW`."""
    low, high = RATE_WINDOW
    inside = {word: rate for word, rate in rates.items() if low <= rate <= high}
    if not inside:
        raise RuntimeError(f"no candidate word has a base rate in {RATE_WINDOW}: {rates}")
    return min(inside, key=lambda word: (abs(inside[word] - TARGET_RATE), word))


def build_pairs(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    word: str,
    per_prompt: int,
    seed: int,
) -> list[dict[str, str]]:
    """Preference rows ``{"prompt", "chosen", "rejected"}``: chosen has ``word``, rejected not.

    ``responses[i]`` are the samples for ``prompts[i]``; each sample is used at most once, and
    a prompt gives ``min(with, without, per_prompt)`` pairs.
    """
    rng = random.Random(seed)
    rows = []
    for prompt, samples in zip(prompts, responses, strict=True):
        with_word = [s for s in samples if contains_word(s, word)]
        without = [s for s in samples if not contains_word(s, word)]
        rng.shuffle(with_word)
        rng.shuffle(without)
        for chosen, rejected in list(zip(with_word, without, strict=False))[:per_prompt]:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


# ---------------------------------------------------------------- sampling and measurement


@dataclass
class Samples:
    """Stories sampled from one policy: the batch (token ids, log-probs) and the texts."""

    batch: Any  # rlhf.rollout.RolloutBatch, prompt-major, K rows per prompt
    texts: list[str]  # [B] responses, exactly as they continue the prompt's text
    per_prompt: int

    def by_prompt(self) -> list[list[str]]:
        k = self.per_prompt
        return [self.texts[i : i + k] for i in range(0, len(self.texts), k)]


def sampling_params(per_prompt: int, max_new_tokens: int, seed: int) -> Any:
    """Temperature 1 with no top-k / top-p: samples of the policy itself, as the KL needs."""
    from rlhf.rollout.types import SamplingParams

    return SamplingParams(
        max_new_tokens=max_new_tokens, temperature=1.0, num_samples=per_prompt, seed=seed
    )


def sample_stories(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    per_prompt: int,
    max_new_tokens: int,
    seed: int,
) -> Samples:
    """``per_prompt`` stories per prompt at temperature 1 (the policy itself, no filters)."""
    from rlhf.rollout.factory import build_engine

    engine = build_engine(model, tokenizer, batch_size=ENGINE_BATCH)
    batch = engine.generate(list(prompts), sampling_params(per_prompt, max_new_tokens, seed))
    return Samples(batch, batch.response_texts, per_prompt)


@dataclass
class Measurement:
    rate: float  # share of the policy's held-out samples that contain the word
    kl: float  # sampled KL(π‖π_ref) per sequence, nats
    kl_se: float  # its standard error over the samples
    mean_tokens: float  # response tokens per sample


def measure(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    word: str,
    settings: Settings,
) -> tuple[Measurement, Samples]:
    """The word's rate in the policy's samples and KL(π‖π_ref) estimated on the same samples.

    The KL is the recipe's own estimate (:func:`rlhf.rollout.measure.sampled_kl`: y ~ π at
    temperature 1, mean over samples of Σ_t log π − log π_ref, unbiased). It samples with the
    same engine batch size, parameters and seed as the rate's samples here, so both figures
    describe the very same stories (the seeded engine repeats them exactly).
    """
    from rlhf.models.reference import ReferenceModel
    from rlhf.rollout.factory import build_engine
    from rlhf.rollout.measure import sampled_kl

    # the same stream for every policy (common random numbers) and distinct from the pairs'
    seed = settings.seed + 1
    samples = sample_stories(
        policy,
        tokenizer,
        prompts,
        settings.eval_samples_per_prompt,
        settings.max_new_tokens,
        seed,
    )
    _, kl = sampled_kl(
        build_engine(policy, tokenizer, batch_size=ENGINE_BATCH),
        ReferenceModel.frozen(reference),
        list(prompts),
        sampling_params(settings.eval_samples_per_prompt, settings.max_new_tokens, seed),
        ENGINE_BATCH,
    )
    mean_tokens = float(samples.batch.response_lengths.float().mean())
    if not math.isclose(kl["response_tokens"], mean_tokens, rel_tol=1e-6):
        raise RuntimeError(f"the KL's samples differ from the rate's: {kl} vs {mean_tokens}")
    measurement = Measurement(
        rate=word_rate(samples.texts, word),
        kl=kl["kl"],
        kl_se=kl["kl_stderr"],
        mean_tokens=mean_tokens,
    )
    return measurement, samples


# ---------------------------------------------------------------- training


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def train(
    run: LossRun,
    model_path: Path,
    train_file: Path,
    eval_file: Path,
    out: Path,
    settings: Settings,
) -> tuple[Path, dict[str, float]]:
    """One ``run_dpo`` run; returns the trained model's folder and its last eval metrics."""
    from rlhf.recipes.dpo import DPOConfig, run_dpo

    config = DPOConfig.model_validate(
        {
            "model": {"path": str(model_path)},
            "reference": {"cache_dir": str(out.parent / "reference-cache")},
            "data": {
                "train": str(train_file),
                "eval": str(eval_file),
                "max_length": settings.max_length,
            },
            "loss": {"name": run.name, "beta": run.beta},
            "train": {
                "max_steps": run.steps,
                "batch_size": settings.batch_size,
                "lr": run.lr,
                "schedule": "constant",
                "eval_every": 0,
                "seed": settings.seed,
            },
            "eval": {"kl_prompts": 0},  # measured here, on held-out prompts, by measure()
            "out": str(out),
            "progress": False,
            "tensorboard": False,
        }
    )
    result = run_dpo(config)
    evals = [row for row in result.metrics if any(key.startswith("eval_") for key in row)]
    return result.model_dir, evals[-1] if evals else {}


# ---------------------------------------------------------------- the experiment


def run_experiment(settings: Settings, work_dir: Path, model_path: Path = STORIES) -> dict:
    """Build the pairs, train every run in ``settings.runs``, measure; returns the figures."""
    from rlhf.models.load import load_model, load_tokenizer

    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(model_path)
    base = load_model(model_path, tokenizer=tokenizer).eval()

    prompts = story_prompts(settings.train_prompts + settings.held_out_prompts, settings.seed)
    train_prompts = prompts[: settings.train_prompts]
    held_out = prompts[settings.train_prompts :]

    progress(f"sampling {settings.samples_per_prompt} stories per training prompt")
    train_samples = sample_stories(
        base,
        tokenizer,
        train_prompts,
        settings.samples_per_prompt,
        settings.max_new_tokens,
        settings.seed,
    )
    candidate_rates = {word: word_rate(train_samples.texts, word) for word in CANDIDATES}
    word = pick_word(candidate_rates)
    pairs = build_pairs(
        train_prompts,
        train_samples.by_prompt(),
        word,
        settings.pairs_per_prompt,
        settings.seed,
    )
    rate = candidate_rates[word]
    progress(f"target word {word!r} (training prompts' rate {rate:.3f}), {len(pairs)} pairs")

    before, held_samples = measure(base, base, tokenizer, held_out, word, settings)
    held_pairs = build_pairs(
        held_out, held_samples.by_prompt(), word, settings.pairs_per_prompt, settings.seed
    )
    if not pairs or not held_pairs:
        raise RuntimeError(f"too few pairs for {word!r}: {len(pairs)} train, {len(held_pairs)}")
    train_file = write_jsonl(pairs, work_dir / "train.jsonl")
    eval_file = write_jsonl(held_pairs, work_dir / "eval.jsonl")

    results: dict[str, dict[str, Any]] = {}
    for run in settings.runs:
        progress(f"training {run.name}: beta {run.beta}, lr {run.lr}, {run.steps} steps")
        began = time.perf_counter()
        model_dir, evals = train(
            run, model_path, train_file, eval_file, work_dir / run.name, settings
        )
        train_s = time.perf_counter() - began
        policy = load_model(model_dir, tokenizer=tokenizer).eval()
        after, _ = measure(policy, base, tokenizer, held_out, word, settings)
        results[run.name] = {
            **asdict(run),
            **asdict(after),
            "eval_accuracy": evals.get("eval_accuracy"),
            "train_s": train_s,
        }
        progress(f"{run.name}: rate {after.rate:.3f}, KL {after.kl:.2f} ± {after.kl_se:.2f}")
    return {
        "word": word,
        "candidate_rates": candidate_rates,
        "base": asdict(before),
        "runs": results,
        "pairs": len(pairs),
        "held_out_pairs": len(held_pairs),
        "held_out_samples": settings.held_out_prompts * settings.eval_samples_per_prompt,
        "wall_s": time.perf_counter() - start,
    }


def report(figures: dict, *, json_only: bool = False) -> dict[str, Any]:
    """Print the table (unless ``json_only``) and the final JSON line; returns that line."""
    base = figures["base"]
    line = {
        "experiment": "dpo_stories",
        "word": figures["word"],
        "base_rate": round(base["rate"], 4),
        **{
            f"{name}_{key}": round(run[key], 4)
            for name, run in figures["runs"].items()
            for key in ("rate", "kl", "kl_se")
        },
        "pairs": figures["pairs"],
        "held_out_samples": figures["held_out_samples"],
        "wall_s": round(figures["wall_s"], 1),
    }
    if not json_only:
        rates = ", ".join(f"{w} {r:.2f}" for w, r in sorted(figures["candidate_rates"].items()))
        print(f"candidate base rates (training prompts' samples): {rates}")
        print(
            f"target word {figures['word']!r}; {figures['pairs']} training pairs, "
            f"{figures['held_out_samples']} held-out samples\n"
        )
        rows = [["base", None, None, None, base["rate"], None, base["kl"], base["kl_se"], None]]
        for name, run in figures["runs"].items():
            rows.append(
                [
                    name,
                    run["beta"],
                    f"{run['lr']:g}",
                    run["steps"],
                    run["rate"],
                    run["rate"] - base["rate"],
                    run["kl"],
                    run["kl_se"],
                    run["eval_accuracy"],
                ]
            )
        header = ["policy", "beta", "lr", "steps", "rate", "Δrate", "KL", "KL se", "pref acc"]
        print(format_table(header, rows))
        print(
            "\nrate: share of held-out stories that contain the word; KL: sampled KL(π‖π_ref) "
            "per story in nats\n(y ~ π on the held-out prompts, the rate's own samples), with its "
            "standard error; pref acc:\nheld-out pairs whose implicit reward ranks chosen above "
            "rejected."
        )
        print(f"\nwall time {figures['wall_s']:.1f} s")
    print(json.dumps(line), flush=True)
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=None, help="subset of dpo ipo hinge")
    parser.add_argument("--max-new-tokens", type=int, default=Settings.max_new_tokens)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--json-only", action="store_true", help="stdout: the JSON line only")
    args = parser.parse_args(argv)
    if not STORIES.is_dir():
        sys.exit(f"{STORIES} is absent (the ../shared assets are not beside this checkout)")
    settings = Settings(max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.losses:
        settings = replace(settings, runs=tuple(r for r in settings.runs if r.name in args.losses))
    with tempfile.TemporaryDirectory(prefix="dpo-stories-") as tmp:
        figures = run_experiment(settings, Path(tmp))
    report(figures, json_only=args.json_only)


if __name__ == "__main__":
    main()
