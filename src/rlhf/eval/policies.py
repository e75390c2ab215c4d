"""Evaluating trained policies against the gold reward: what the pipeline's report shows.

For every policy (SFT, PPO at each β, DPO, ...) on the same held-out prompts, sampled with the
same seed: the gold reward (mean and spread), the proxy (the reward model's score), the
KL(π‖π_SFT) of its samples (k1 summed over each response, averaged: an unbiased estimate of the
sequence KL) and its win rate against SFT (sample j of prompt i against SFT's sample j of the
same prompt, judged by the gold reward, ties ½). Also the best-of-N curve of the SFT policy
under the reward model, the PPO runs' proxy and gold reward against KL as they trained (their
held-out evaluations), and the reward model's held-out accuracy beside the noise ceiling.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field

from rlhf.data.records import Record, Text, text_to_json
from rlhf.eval.results import (
    BestOfNPoint,
    Criteria,
    CurvePoint,
    HeadToHead,
    OptimisationCurve,
    PolicyEval,
    Report,
    RewardModelEval,
    SelectionPoint,
)
from rlhf.eval.stats import preference_rate, win_rate
from rlhf.rewards.preference import PreferenceSpec
from rlhf.rewards.spec import RewardSpec
from rlhf.rollout.types import EngineChoice

if TYPE_CHECKING:
    from rlhf.models.reference import ReferenceModel
    from rlhf.rewards.base import RewardFunction
    from rlhf.rewards.preference import PreferenceFunction
    from rlhf.rollout.candidates import CandidateRecord
    from rlhf.rollout.types import GenerationEngine, RolloutBatch, SamplingParams


class EvalConfig(EngineChoice):
    """The final evaluation of every policy on held-out prompts, sampled with ``engine``
    (``eval.engine=vllm``, ``eval.vllm.*``)."""

    prompts: str = Field(
        "builtin:world-prompts?n=400&seed=99&split=eval", description="Held-out evaluation prompts."
    )
    count: int = Field(128, ge=1, description="Evaluation prompts used at most.")
    samples_per_prompt: int = Field(2, ge=1, description="Sampled responses per prompt.")
    best_of_n: int = Field(16, ge=1, description="Largest N of the SFT best-of-N curve (0: none).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(48, ge=1, description="Response tokens at most.")
    batch_size: int = Field(256, ge=1, description="Sequences sampled together.")
    gold: RewardSpec = Field(
        default_factory=lambda: RewardSpec(rule="world_gold"),
        description="What the report calls the gold reward (the world's by default).",
    )
    samples_shown: int = Field(3, ge=0, description="Sample responses shown per policy.")
    preference: PreferenceSpec | None = Field(
        None,
        description="The gold preference that compares policies head to head (e.g. {rule: "
        "world_gold, temperature: 0.05, nontransitive: 0.3}): the Nash policies against PPO.",
    )


@dataclass(frozen=True)
class TrainedRun:
    """A trained policy: its row in the report and the run folder it is read from."""

    name: str  # the report's label, e.g. "PPO β=0.05"
    out: Path  # the run's folder: model/, metrics.jsonl (online runs: eval_initial.json)
    # an online run whose held-out evaluations while it trained make a reward-against-KL curve
    # (PPO's): its KL coefficient β and the prompts of each of those evaluations
    curve_kl_coef: float | None = None
    curve_prompts: int | None = None
    # a DPO-family run whose evaluations along training (eval_initial.json and its eval rows:
    # kl, gold_reward) make a gold-against-KL curve; curve_kl_coef is then the loss's β
    preference_curve: Literal["offline", "online"] | None = None
    # policies this one is compared with head to head under EvalConfig.preference
    opponents: tuple[str, ...] = ()


@dataclass(frozen=True)
class PipelineRuns:
    """Where a pipeline's stages wrote what its evaluation reads."""

    sft: str  # the SFT policy (folder or hub name): the baseline and the reference of every KL
    reward_model: Path  # the reward model's run folder (model/, metrics.jsonl)
    feedback: Path  # the labels: train.jsonl and heldout.jsonl
    trained: list[TrainedRun] = field(default_factory=list)  # in the report's order
    # a process reward model's run folder: choosing one of the SFT policy's best-of-N samples
    # by it, by the reward model and by voting, scored by the gold verifier
    process_reward_model: Path | None = None


@dataclass
class PolicySamples:
    """One policy's samples on the evaluation prompts, scored."""

    batch: RolloutBatch
    gold: torch.Tensor  # [B] gold reward of each sample
    proxy: torch.Tensor  # [B] reward-model score of each sample
    kl: float  # KL(π‖π_ref): mean over samples of Σ_t log π/π_ref (0 for the reference)


def sample_policy(
    engine: GenerationEngine,
    prompts: Sequence[Text],
    params: SamplingParams,
    *,
    gold: RewardFunction,
    proxy: RewardFunction,
    reference: ReferenceModel | None,
    batch_size: int,
) -> PolicySamples:
    """Sample ``params.num_samples`` responses per prompt from the engine's policy, score them
    with both rewards and measure KL(π‖π_ref) on them (0 without a ``reference``)."""
    from rlhf.rewards.base import score_rollout
    from rlhf.rollout.measure import sampled_kl

    if reference is None:
        batch, kl = engine.generate(prompts, params), 0.0
    else:
        batch, measured = sampled_kl(engine, reference, prompts, params, batch_size)
        kl = measured["kl"]
    return PolicySamples(
        batch,
        score_rollout(gold, prompts, batch).scores,
        score_rollout(proxy, prompts, batch).scores,
        kl,
    )


def policy_eval(
    name: str,
    prompts: Sequence[Text],
    samples: PolicySamples,
    baseline: PolicySamples | None,
    shown: int,
) -> PolicyEval:
    """The report's row for one policy (``baseline``: SFT's samples, for the win rate)."""
    batch = samples.batch
    rows = []
    for row in range(min(shown, len(batch))):
        prompt = prompts[int(batch.prompt_index[row])]
        rows.append(
            (
                prompt if isinstance(prompt, str) else json.dumps(text_to_json(prompt)),
                batch.response_texts[row],
                float(samples.gold[row]),
                float(samples.proxy[row]),
            )
        )
    rate = None
    if baseline is not None:
        rate = win_rate(samples.gold.tolist(), baseline.gold.tolist())
    return PolicyEval(
        name=name,
        gold_mean=float(samples.gold.mean()),
        gold_std=float(samples.gold.std(unbiased=False)),
        proxy_mean=float(samples.proxy.mean()),
        kl_to_sft=samples.kl,
        win_rate_vs_sft=None if rate is None else rate.rate,
        win_rate_se=None if rate is None else rate.se,
        proxy_std=float(samples.proxy.std(unbiased=False)),
        n_prompts=len(prompts),
        samples=rows,
    )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (``{"step": 10, "split": "eval", ...}``)."""
    with Path(path).open(encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def curve_points(run_dir: str | Path, proxy: str = "reward") -> list[CurvePoint]:
    """A run's held-out evaluations as curve points: ``eval_initial.json`` (step 0, the
    starting policy) and the ``eval`` rows of its ``metrics.jsonl``, each with ``kl``,
    ``gold_reward`` and the ``proxy`` key (``gold_reward_stderr`` where the run logged it)."""
    run_dir = Path(run_dir)
    rows = [{"step": 0, **json.loads((run_dir / "eval_initial.json").read_text())}]
    rows += [row for row in read_metrics(run_dir / "metrics.jsonl") if row.get("split") == "eval"]
    return [
        CurvePoint(
            step=int(row["step"]),
            kl=max(float(row["kl"]), 0.0),
            proxy=float(row[proxy]),
            gold=float(row["gold_reward"]),
            gold_se=float(row["gold_reward_stderr"]) if "gold_reward_stderr" in row else None,
        )
        for row in rows
        if {"kl", "gold_reward", proxy} <= row.keys()
    ]


def training_curve(label: str, coef: float, run_dir: str | Path) -> OptimisationCurve:
    """Proxy and gold reward against KL through one online run (:func:`curve_points`: the
    ``reward``, ``gold_reward`` and ``kl`` of each ``train.eval_every``)."""
    return OptimisationCurve(label=label, kl_coef=coef, points=curve_points(run_dir))


def preference_curve(run: TrainedRun) -> OptimisationCurve:
    """Gold reward against KL through a DPO-family run (:func:`curve_points`): offline runs
    score their KL samples with gold (``eval.gold_reward``) and measure the implicit reward
    ``margin`` on held-out labels, the curve's proxy; online runs give the reward model's
    score as theirs."""
    offline = run.preference_curve == "offline"
    return OptimisationCurve(
        label=run.name,
        kl_coef=float(run.curve_kl_coef or 0.0),
        points=curve_points(run.out, "margin" if offline else "reward"),
        proxy_name="implicit reward margin (held-out labels)" if offline else "reward model",
        online=not offline,
    )


def head_to_head(
    preference: PreferenceFunction,
    prompts: Sequence[Text],
    policy: tuple[str, PolicySamples],
    opponent: tuple[str, PolicySamples],
) -> HeadToHead:
    """Sample j of each prompt of one policy against the opponent's sample j of the same
    prompt (both sampled prompt-major on the same prompts), judged by ``preference``."""
    from rlhf.rewards.preference import call_preference

    (name, mine), (other, theirs) = policy, opponent
    rows = [prompts[int(i)] for i in mine.batch.prompt_index]
    if mine.batch.prompt_index.tolist() != theirs.batch.prompt_index.tolist():
        raise ValueError(f"{name} and {other} were not sampled on the same prompts")
    probabilities = call_preference(
        preference, rows, mine.batch.response_texts, theirs.batch.response_texts
    )
    rate, se = preference_rate(probabilities.double().tolist())
    return HeadToHead(policy=name, opponent=other, rate=rate, se=se, n=len(rows))


def last_value(metrics: Sequence[Mapping[str, float]], key: str) -> float | None:
    for row in reversed(metrics):
        if key in row:
            return float(row[key])
    return None


def gold_ceiling(labels: Sequence[Record], gold: RewardFunction) -> float | None:
    """The gold reward's own accuracy on labels (rankings and ratings as the pairs they imply,
    as the reward model reads them; ties in gold count ½): the most a reward model can agree
    with these noisy labels on average. None when the labels order nothing."""
    from rlhf.data.convert import as_preferences
    from rlhf.data.records import response_text
    from rlhf.losses.reward import wins
    from rlhf.rewards.base import call_reward

    pairs = as_preferences(labels)
    if not pairs:
        return None
    prompts = [p.prompt for p in pairs]
    chosen = call_reward(gold, prompts, [response_text(p.chosen) for p in pairs])
    rejected = call_reward(gold, prompts, [response_text(p.rejected) for p in pairs])
    return float(wins(chosen - rejected).mean())


def evaluate_pipeline(
    settings: EvalConfig,
    runs: PipelineRuns,
    *,
    seed: int,
    label_kind: str,
    config: Mapping[str, Any] | None = None,
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Report:
    """Every policy the pipeline trained, evaluated on the held-out prompts (module docstring);
    everything is read from the runs' folders, so a finished run can be evaluated again.

    ``seed``: the pipeline's (sampling uses seed + 1, best-of-N seed + 2); ``label_kind``: what
    the annotators gave (pairs, rankings, ratings), for the report's notes; ``config``: the
    pipeline's config as JSON, kept in the report."""
    from rlhf.data.readers import read_records
    from rlhf.eval.best_of_n import evaluate_best_of_n
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.models.reference import ReferenceModel
    from rlhf.rewards.preference import build_preference
    from rlhf.rewards.spec import build_reward
    from rlhf.rollout.candidates import load_prompts
    from rlhf.rollout.factory import close_engine, engine_for, load_engine_for
    from rlhf.rollout.types import SamplingParams

    prompts = load_prompts(settings.prompts, limit=settings.count)
    gold = build_reward(settings.gold)
    preference = build_preference(settings.preference) if settings.preference else None
    proxy = build_reward(RewardSpec(model=str(runs.reward_model / "model")))
    params = SamplingParams(
        settings.max_new_tokens,
        temperature=settings.temperature,
        num_samples=settings.samples_per_prompt,
        seed=seed + 1,
    )
    # one SFT model: its samples, the reference of every KL, and its best-of-N
    tokenizer = load_tokenizer(runs.sft)
    sft_model = load_model(runs.sft, tokenizer=tokenizer)
    sft_engine = engine_for(settings, sft_model, tokenizer, batch_size=settings.batch_size)
    try:
        reference = ReferenceModel.frozen(sft_model)
        common = {"gold": gold, "proxy": proxy, "batch_size": settings.batch_size}
        sft = sample_policy(sft_engine, prompts, params, reference=None, **common)
        policies = [policy_eval("SFT", prompts, sft, None, settings.samples_shown)]
        sampled = {"SFT": sft}  # every policy's samples, for the head-to-head comparisons
        for run in runs.trained:
            engine = load_engine_for(settings, run.out / "model", batch_size=settings.batch_size)
            try:
                samples = sample_policy(engine, prompts, params, reference=reference, **common)
            finally:
                close_engine(engine)
            policies.append(policy_eval(run.name, prompts, samples, sft, settings.samples_shown))
            sampled[run.name] = samples
            del engine
            gc.collect()  # one trained policy in memory at a time
        matches = []
        for run in runs.trained if preference is not None else []:
            for opponent in run.opponents:
                if opponent not in sampled:
                    raise ValueError(f"{run.name}'s opponent {opponent!r} is not a policy here")
                matches.append(
                    head_to_head(
                        preference,
                        prompts,
                        (run.name, sampled[run.name]),
                        (opponent, sampled[opponent]),
                    )
                )

        best_of_n: list[BestOfNPoint] = []
        selection: list[SelectionPoint] = []
        if settings.best_of_n > 1:
            bon_params = SamplingParams(
                settings.max_new_tokens,
                temperature=settings.temperature,
                num_samples=settings.best_of_n,
                seed=seed + 2,
            )
            curve = evaluate_best_of_n(sft_engine, prompts, bon_params, proxy, gold)
            best_of_n = [
                BestOfNPoint(n=p.n, kl=p.kl, proxy=p.reward, gold=float(p.gold or 0.0))
                for p in curve.points
            ]
            if runs.process_reward_model is not None:
                selection = choose_among_samples(
                    curve.samples, runs.process_reward_model / "model", settings.best_of_n
                )
    finally:
        close_engine(sft_engine)

    curving = [
        run
        for run in runs.trained
        if run.curve_kl_coef is not None and run.preference_curve is None
    ]
    curves = [training_curve(run.name, run.curve_kl_coef, run.out) for run in curving]
    rm_metrics = [
        {f"eval_{k}": v for k, v in row.items()}
        for row in read_metrics(runs.reward_model / "metrics.jsonl")
        if row.get("split") == "eval"
    ]
    train_labels, heldout_labels = (
        read_records(runs.feedback / f"{split}.jsonl").records for split in ("train", "heldout")
    )
    ceiling = gold_ceiling(heldout_labels, gold)
    reward_model = RewardModelEval(
        accuracy=float(last_value(rm_metrics, "eval_accuracy") or float("nan")),
        ceiling=float("nan") if ceiling is None else ceiling,
        n_pairs=int(last_value(rm_metrics, "eval_pairs") or len(heldout_labels)),
    )
    # The training curves' points are means over the online runs' held-out evaluations (one
    # sample per prompt, no spread logged): a difference between two of them counts only past
    # z·√2·σ/√n, σ being the SFT samples' spread of each reward (Criteria's tolerances).
    sft_eval = policies[0]
    count = min((run.curve_prompts or len(prompts) for run in curving), default=len(prompts))
    spread = 2.0 * math.sqrt(2.0 / max(count, 1))
    criteria = Criteria(
        gold_tolerance=spread * sft_eval.gold_std,
        proxy_tolerance=spread * (sft_eval.proxy_std or 0.0),
    )
    return Report(
        criteria=criteria,
        title=title
        or ("RLHF on the embedded world" if settings.gold.rule == "world_gold" else "RLHF run"),
        seed=seed,
        policies=policies,
        curves=curves,
        best_of_n=best_of_n,
        reward_model=reward_model,
        timings=[],
        notes=[
            f"{len(prompts)} held-out prompts, {settings.samples_per_prompt} samples each at "
            f"temperature {settings.temperature:g}; feedback: {len(train_labels)} training "
            f"and {len(heldout_labels)} held-out labels ({label_kind}).",
            *notes,
        ],
        config=dict(config) if config is not None else {},
        preference_curves=[preference_curve(r) for r in runs.trained if r.preference_curve],
        head_to_head=matches,
        selection=selection,
    )


def choose_among_samples(
    samples: Sequence[CandidateRecord], prm_dir: Path, max_n: int
) -> list[SelectionPoint]:
    """Choosing one of N of each prompt's best-of-N samples (``rewards``: the reward model's
    scores, the ORM; ``gold``: a 0/1 verifier's) by the process reward model in ``prm_dir``, the
    ORM, majority and PRM-weighted voting, and the oracle, at N = 1, 2, 4, ..., ``max_n``
    (:mod:`rlhf.eval.step_selection`, as ``rlhf best-of-n --prm``)."""
    from rlhf.eval.best_of_n import best_of_n_sizes
    from rlhf.eval.step_selection import comparison, scored_candidates, selection_points
    from rlhf.rewards.prm import ProcessReward

    process = ProcessReward(str(prm_dir))
    problems = scored_candidates(samples, process, with_outcome=True)
    return selection_points(problems, best_of_n_sizes(max_n), comparison(with_outcome=True))
