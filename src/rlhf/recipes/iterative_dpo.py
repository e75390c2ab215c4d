"""Iterative DPO: rounds of sample → label → DPO from the previous round's policy (Xiong et al.
2024, "Iterative Preference Learning from Human Feedback", Alg. 1; the Llama 3 post-training
recipe, Dubey et al. 2024, §4.1).

Each round: sample K responses to ``iterative.prompts_per_round`` prompts from the current
policy; the labeller (``labeller.kind``: the run's ``reward``, best vs worst; or the embedded
world's simulated annotators) makes one preference pair per prompt; then the offline loop of
``rlhf dpo`` (any loss of the DPO family, ``loss.name``) trains the policy on that round's
pairs for ``train.max_steps`` steps (or ``train.epochs``), a fresh optimiser each round. π_ref
(``iterative.reference``) is the previous round's policy (``previous``: each round is a DPO
step from where the last one ended) or the initial policy throughout (``initial``).

A run folder holds ``rounds/round-R/`` (the round's ``pairs.jsonl``, its DPO run with
checkpoints and ``model/``), ``iterative_state.json``, ``metrics.jsonl`` (per round: a
``rollout`` row with the sampled reward and the pairs made, and an ``eval`` row: the policy's
reward, and gold reward where ``eval.gold_reward`` is set, on a fixed prompt set sampled with
one seed, so rounds compare like with like; step 0 is the starting policy) and ``model/``.
``--resume`` continues exactly, mid-round included: a round's pairs are kept and its DPO run
resumes from its last checkpoint (``train.save_every``).

    rlhf iterative-dpo --preset tiny
    rlhf iterative-dpo --config it.yaml model.path=runs/sft/model prompts=prompts.jsonl \\
        reward.model=runs/rm/model
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.preference import PairText, tokenize_pairs
from rlhf.data.readers import read_records, write_records
from rlhf.data.records import PreferenceRecord, Text
from rlhf.data.tokenize import Truncation, TruncationReport
from rlhf.engine.metrics import JsonlSink
from rlhf.engine.trainer import TrainConfig, latest_checkpoint, resolve_device
from rlhf.recipes.common import (
    LabellerConfig,
    ModelConfig,
    RunResult,
    build_model_and_tokenizer,
    check_fits_positions,
    report_truncation,
    round_prompts,
)
from rlhf.recipes.lm import exporter, initial_policy
from rlhf.recipes.offline_common import (
    PreferenceDataConfig,
    PreferenceEvalConfig,
    PreferenceLossConfig,
    ReferenceConfig,
    pair_summary,
    pairwise_objective,
    train_offline,
)
from rlhf.recipes.rounds import RoundsConfig, RoundsStart, start_rounds
from rlhf.rewards.base import RewardFunction, response_as_text, score_rollout
from rlhf.rewards.spec import build_reward
from rlhf.rollout.factory import check_engine, close_engine, engine_for
from rlhf.rollout.types import GenerationEngine

logger = logging.getLogger("rlhf")
STATE_FILE = "iterative_state.json"

# ------------------------------------------------------------------------------ config


class IterativeSettings(StrictModel):
    rounds: int = Field(3, ge=1, description="Rounds of sample → label → DPO.")
    prompts_per_round: int = Field(
        64, ge=1, description="Prompts sampled each round (cycling through a seeded shuffle)."
    )
    samples_per_prompt: int = Field(
        4, ge=2, description="K: responses sampled per prompt; one pair is made of them."
    )
    reference: Literal["previous", "initial"] = Field(
        "previous",
        description="π_ref of each round: the previous round's policy, or the initial policy.",
    )
    eval_prompts: int = Field(
        64,
        ge=1,
        description="Size of the fixed prompt set the policy's reward is measured on before the "
        "first round and after each.",
    )
    eval_samples_per_prompt: int = Field(2, ge=1, description="Samples per evaluation prompt.")


class IterativeDataConfig(StrictModel):
    max_length: int = Field(1024, ge=2, description="Longest pair sequence in tokens.")
    truncation: Truncation = Field(
        "truncate", description="Over-long pairs: 'truncate' (prompt start first) or 'drop'."
    )
    share_prompt: bool = Field(
        True, description="One row per pair with the prompt once, where the model allows it."
    )


class IterativeReferenceConfig(StrictModel):
    cache_dir: str | None = Field(
        None, description="Where reference log-probs are cached (see `rlhf dpo --help`)."
    )
    precompute: bool = Field(
        True, description="Compute each round's reference log-probs once before it trains."
    )


class IterativeDPOConfig(RoundsConfig):
    """Iterative DPO: rounds of on-policy pairs, each trained with a DPO-family loss."""

    labeller: LabellerConfig = Field(
        default_factory=LabellerConfig, description="Who picks the preferred response."
    )
    iterative: IterativeSettings = Field(
        default_factory=IterativeSettings, description="The rounds."
    )
    loss: PreferenceLossConfig = Field(
        default_factory=PreferenceLossConfig, description="The DPO-family loss of every round."
    )
    reference: IterativeReferenceConfig = Field(
        default_factory=IterativeReferenceConfig, description="Reference log-probs."
    )
    data: IterativeDataConfig = Field(
        default_factory=IterativeDataConfig, description="Tokenising the pairs."
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=1e-6, epochs=1),
        description="Each round's DPO (a fresh optimiser; batch_size counts pairs).",
    )
    eval: PreferenceEvalConfig = Field(
        default_factory=PreferenceEvalConfig,
        description="Each round's evaluation: sampled KL to its π_ref (and gold_reward, also "
        "reported beside the run's reward at every round).",
    )

    @model_validator(mode="after")
    def _reference_of_lora(self) -> IterativeDPOConfig:
        if self.model.lora is not None and self.iterative.reference == "previous":
            raise ValueError(
                "iterative.reference=previous with model.lora: the adapter-disabled reference "
                "is the base model, not the previous round's policy; use reference=initial"
            )
        return self


class RoundConfig(StrictModel):
    """One round's DPO run, as :func:`rlhf.recipes.offline_common.train_offline` reads it."""

    model: ModelConfig
    reference: ReferenceConfig
    data: PreferenceDataConfig
    train: TrainConfig
    eval: PreferenceEvalConfig
    progress: bool
    tensorboard: bool
    wandb_project: str | None


# ------------------------------------------------------------------------------ the run


class _Run:
    """The state of one run; its phases are the methods, in order."""

    def __init__(self, config: IterativeDPOConfig, start: RoundsStart) -> None:
        self.config, self.out, self.metadata = config, start.out, start.metadata
        self.reward: RewardFunction = build_reward(config.reward)
        gold = config.eval.gold_reward
        self.gold: RewardFunction | None = build_reward(gold) if gold else None
        # completed_rounds, initial (the starting policy's folder), policy (the current
        # round's starting policy), steps
        self.state = start.state
        self.save_state = start.save_state

    def sample(
        self,
        engine: GenerationEngine,
        prompts: Sequence[Text],
        k: int,
        seed: int,
        *,
        greedy: bool = False,
    ) -> tuple[list[str], torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """K responses per prompt (prompt-major; ``greedy``: one, decoded greedily), their
        rewards [P·K], gold [P·K] and stats."""
        params = self.config.sampling.params(num_samples=k, seed=seed)
        if greedy:
            params = replace(params, temperature=0.0, num_samples=1)
        batch = engine.generate(prompts, params)
        metadata = None if self.metadata is None else [self.metadata[p] for p in prompts]
        scores = score_rollout(self.reward, prompts, batch, metadata).scores
        gold = None
        if self.gold is not None:
            gold = score_rollout(self.gold, prompts, batch, metadata).scores
        stats = batch.response_stats()
        metrics = {
            "reward": float(scores.mean()),
            "response_tokens": stats["response_tokens"],
            "eos_rate": stats["eos_rate"],
            "truncated_prompts": float(batch.truncated_prompts),
        }
        if gold is not None:
            metrics["gold_reward"] = float(gold.mean())
        return batch.response_texts, scores, gold, metrics

    def make_pairs(
        self, prompts: Sequence[Text], responses: list[str], scores: torch.Tensor, seed: int
    ) -> tuple[list[PreferenceRecord], dict[str, float]]:
        """One (chosen, rejected) pair per prompt whose group gives a preference."""
        k = self.config.iterative.samples_per_prompt
        chosen, rejected = self.config.labeller.pairs(prompts, responses, scores, k, seed)
        records, gaps = [], []
        for index, (best, worst) in enumerate(zip(chosen.tolist(), rejected.tolist(), strict=True)):
            if best == worst or responses[best] == responses[worst]:
                continue
            prompt = prompts[index]
            records.append(
                PreferenceRecord(
                    prompt,
                    response_as_text(prompt, responses[best]),
                    response_as_text(prompt, responses[worst]),
                )
            )
            gaps.append(float(scores[best] - scores[worst]))
        return records, {
            "pairs": float(len(records)),
            "tied_groups": float(len(prompts) - len(records)),
            "pair_reward_gap": sum(gaps) / len(gaps) if gaps else 0.0,
        }

    def round_config(self, pairs_file: Path) -> RoundConfig:
        config = self.config
        reference_path = (
            self.state["initial"] if config.iterative.reference == "initial" else None
        )  # None: the round's starting weights, i.e. the previous round's policy
        return RoundConfig(
            model=config.model.model_copy(update={"path": self.state["policy"], "tiny": None}),
            reference=ReferenceConfig(
                path=reference_path,
                cache_dir=config.reference.cache_dir,
                precompute=config.reference.precompute,
            ),
            data=PreferenceDataConfig(
                train=str(pairs_file),
                eval_fraction=0.0,
                max_length=config.data.max_length,
                truncation=config.data.truncation,
                share_prompt=config.data.share_prompt,
            ),
            train=config.train,
            eval=config.eval,
            progress=config.progress,
            tensorboard=config.tensorboard,
            wandb_project=config.wandb_project,
        )

    def train_round(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        folder: Path,
        records: list[PreferenceRecord],
        kl_prompts: Sequence[Text],
    ) -> dict[str, float]:
        """DPO on the round's pairs, resuming the round's own checkpoint when it has one."""
        pairs_file = folder / "pairs.jsonl"
        round_config = self.round_config(pairs_file)
        report = TruncationReport(round_config.data.max_length, "pairs")
        texts = [PairText(r.prompt, r.chosen, r.rejected) for r in records]
        examples = tokenize_pairs(
            tokenizer, texts, round_config.data.max_length, round_config.data.truncation,
            report=report,
        )  # fmt: skip
        data_metrics = report_truncation({"train": report})
        if not examples:
            return {"dpo_steps": 0.0, **data_metrics}
        train = round_config.train.model_copy(
            update={"batch_size": min(round_config.train.batch_size, len(examples))}
        )
        round_config = round_config.model_copy(update={"train": train})
        result = train_offline(
            round_config,  # type: ignore[arg-type]
            model,
            tokenizer,
            folder,
            latest_checkpoint(folder),  # an interrupted round continues where it stopped
            examples,
            [],
            objective=pairwise_objective(self.config.loss.function()),
            needs_reference=self.config.loss.needs_reference,
            summarise=pair_summary,
            kl_prompts=list(kl_prompts),
            data_metrics=data_metrics,
        )
        self.state["policy"] = str(result.model_dir)
        losses = [row["loss"] for row in result.metrics if "loss" in row]
        metrics = {"dpo_steps": float(result.final_step), **data_metrics}
        if losses:
            metrics["dpo_loss"] = losses[-1]
        return metrics


def run_iterative_dpo(config: IterativeDPOConfig, resume: bool = False) -> RunResult:
    fresh = {"completed_rounds": 0, "initial": None, "policy": None, "steps": 0}
    start = start_rounds(config, resume, STATE_FILE, "iterative DPO", fresh)
    out, prompts = start.out, start.prompts
    run = _Run(config, start)

    check_engine(config.sampling)  # before the init SFT trains anything
    if run.state["policy"] is None:
        run.state["initial"] = run.state["policy"] = initial_policy(
            config, config.init_sft, out, resume
        )
        run.save_state()
    # the current round's starting policy (an interrupted round's checkpoint loads over it)
    model_config = config.model.model_copy(update={"path": run.state["policy"], "tiny": None})
    model, tokenizer = build_model_and_tokenizer(model_config, out, lambda: [], config.train.seed)
    check_fits_positions(model, config.data.max_length)
    model.to(resolve_device(config.train.device))
    engine = engine_for(config.sampling, model, tokenizer, batch_size=config.sampling.batch_size)

    settings, seed = config.iterative, config.train.seed
    done = run.state["completed_rounds"]
    # a fixed evaluation set sampled with one seed every time (common random numbers)
    eval_set = round_prompts(prompts, settings.eval_prompts, 0, seed + 1)
    sink = JsonlSink(out / "metrics.jsonl", resume_step=done if resume else None)
    history: list[dict[str, float]] = []

    def evaluate(step: int) -> dict[str, float]:
        _, _, _, metrics = run.sample(
            engine, eval_set, settings.eval_samples_per_prompt, seed + 1_000_003
        )
        _, _, _, greedy = run.sample(engine, eval_set, 1, seed + 1_000_003, greedy=True)
        metrics |= {f"greedy_{key}": value for key, value in greedy.items()}
        sink.log(step, metrics, prefix="eval")
        return {f"eval_{key}": value for key, value in metrics.items()}

    try:
        if done == 0:
            initial = evaluate(0)
            history.append({"round": 0.0, **initial})
            logger.info(
                "starting policy: reward %.4f (greedy %.4f)",
                initial["eval_reward"], initial["eval_greedy_reward"],
            )  # fmt: skip
        for round_number in range(done + 1, settings.rounds + 1):
            folder = out / "rounds" / f"round-{round_number}"
            pairs_file = folder / "pairs.jsonl"
            offset = (round_number - 1) * settings.prompts_per_round
            batch_prompts = round_prompts(prompts, settings.prompts_per_round, offset, seed)
            # sample → label, unless an interrupted round already has its pairs (and perhaps
            # DPO checkpoints): then it continues from them exactly
            if latest_checkpoint(folder) is not None and pairs_file.is_file():
                state = json.loads((folder / "round.json").read_text(encoding="utf-8"))
                records = list(read_records(pairs_file, "preference").records)
                metrics = state["metrics"]
                logger.info("round %d: resuming its DPO run", round_number)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                responses, scores, _, metrics = run.sample(
                    engine, batch_prompts, settings.samples_per_prompt, seed + round_number
                )
                records, pair_metrics = run.make_pairs(
                    batch_prompts, responses, scores, seed * 1_000_003 + round_number
                )
                metrics |= pair_metrics
                write_records(pairs_file, records)
                (folder / "round.json").write_text(
                    json.dumps({"metrics": metrics}, indent=2), encoding="utf-8"
                )
            if records:
                kl_prompts = list(dict.fromkeys(r.prompt for r in records))[
                    : config.eval.kl_prompts
                ]
                metrics |= run.train_round(model, tokenizer, folder, records, kl_prompts)
            else:
                logger.warning("round %d made no pair: the policy stays as it is", round_number)
            sink.log(round_number, metrics, prefix="rollout")
            evaluation = evaluate(round_number)
            run.state["steps"] += int(metrics.get("dpo_steps", 0))
            run.state["completed_rounds"] = round_number
            run.save_state()
            history.append({"round": float(round_number), **metrics, **evaluation})
            logger.info(
                "round %d/%d: sampled reward %.4f, %d pairs, DPO %d steps; evaluation reward "
                "now %.4f (greedy %.4f)",
                round_number, settings.rounds, metrics["reward"], int(metrics["pairs"]),
                int(metrics.get("dpo_steps", 0)), evaluation["eval_reward"],
                evaluation["eval_greedy_reward"],
            )  # fmt: skip
    finally:
        sink.close()
        close_engine(engine)

    model_dir = out / "model"
    exporter(model, tokenizer)(model_dir)
    return RunResult(out, run.state["steps"], model_dir, history)
