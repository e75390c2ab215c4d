"""RAFT: reward-ranked fine-tuning (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for
Generative Foundation Model Alignment").

Each round: sample N responses per prompt from the current policy, score them with the
reward, keep the best k per prompt (optionally only those scoring at least ``min_reward``:
rejection sampling), and fine-tune the policy on the kept samples with the ordinary SFT loss.
It is best-of-N distilled into the policy, round after round; with a 0/1 verifiable reward and
``min_reward`` it is rejection-sampling fine-tuning (STaR, ReST-EM).

    rlhf raft --preset tiny
    rlhf raft --config raft.yaml model.path=runs/sft/model prompts=prompts.jsonl \\
        reward.model=runs/rm/model

A run folder holds ``init-sft/`` (when ``init_sft`` trains the starting policy first),
``rounds/round-R/`` (the kept samples ``selected.jsonl``, that round's SFT metrics and
``model/``), ``metrics.jsonl`` and ``model/`` (the final policy). ``metrics.jsonl`` has, for
round R, a ``rollout`` row (the mean and best-of-N reward of the samples drawn, i.e. of the
policy before the round's update; prompts cut to fit (``truncated_prompts``); how many were
kept and how many of those truncation cut (``data_train_*``); SFT steps and loss) and an ``eval`` row:
the mean reward after the round on a fixed set of ``eval_prompts`` prompts, sampled with the
same seed every time, so rounds compare like with like (step 0: the starting policy).
``--resume`` continues after the last completed round; an interrupted round is redone from
its start (its samples are seeded, so they come out the same).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from rlhf.config import StrictModel
from rlhf.data.records import CompletionRecord, Text
from rlhf.data.tokenize import Truncation, TruncationReport
from rlhf.engine.metrics import JsonlSink
from rlhf.engine.trainer import TrainConfig, resolve_device
from rlhf.eval.sampling import rewards_per_prompt, top_k_per_prompt
from rlhf.recipes.common import (
    DataConfig,
    ModelConfig,
    RunResult,
    build_model_and_tokenizer,
    check_fits_positions,
    report_truncation,
    round_prompts,
    tokenize_records,
)
from rlhf.recipes.lm import (
    SFTConfig,
    as_demonstration,
    exporter,
    initial_policy,
    train_on_examples,
)
from rlhf.recipes.rounds import RoundsConfig, RoundsStart, start_rounds
from rlhf.rewards.base import RewardFunction, response_as_text, score_rollout
from rlhf.rewards.spec import build_reward
from rlhf.rollout.factory import check_engine, close_engine, engine_for
from rlhf.rollout.types import GenerationEngine

logger = logging.getLogger("rlhf")
STATE_FILE = "raft_state.json"


class RAFTSettings(StrictModel):
    rounds: int = Field(3, ge=1, description="Rounds of sample → rank → fine-tune.")
    prompts_per_round: int = Field(
        64, ge=1, description="Prompts sampled each round (cycling through a seeded shuffle)."
    )
    num_samples: int = Field(8, ge=1, description="N: responses sampled per prompt.")
    keep_top: int = Field(1, ge=1, description="k: best responses kept per prompt.")
    min_reward: float | None = Field(
        None, description="Keep only responses scoring at least this (null: keep the top k)."
    )
    eval_prompts: int = Field(
        64,
        ge=1,
        description="Size of the fixed prompt set the policy's reward is measured on before "
        "the first round and after each (num_samples responses each).",
    )


class RAFTDataConfig(StrictModel):
    max_length: int = Field(1024, ge=2, description="Longest fine-tuning sequence in tokens.")
    truncation: Truncation = Field(
        "truncate", description="Over-long samples: 'truncate' (prompt start first) or 'drop'."
    )


class RAFTConfig(RoundsConfig):
    """Reward-ranked fine-tuning."""

    raft: RAFTSettings = Field(default_factory=RAFTSettings, description="The RAFT loop.")
    data: RAFTDataConfig = Field(
        default_factory=RAFTDataConfig, description="Tokenising kept samples."
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(lr=2e-5),
        description="Each round's fine-tuning (fresh optimiser; lr as SFT's).",
    )


class _Run:
    """The state of one RAFT run; the phases are its methods, in order."""

    def __init__(self, config: RAFTConfig, start: RoundsStart, reward: RewardFunction) -> None:
        self.config, self.out, self.reward = config, start.out, reward
        self.metadata = start.metadata  # prompt -> its ground truth, for the reward
        self.state = start.state  # completed_rounds, policy, sft_steps
        self.save_state = start.save_state

    def initial_policy(self, resume: bool) -> str:
        """The starting model's path, after the init SFT phase when there is one."""
        return initial_policy(self.config, self.config.init_sft, self.out, resume)

    def sample_and_score(
        self, engine: GenerationEngine, prompts: Sequence[Text], seed: int
    ) -> tuple[torch.Tensor, list[list[str]], dict[str, float]]:
        """rollout → score: rewards [P, N], responses [P][N] and summary metrics."""
        raft = self.config.raft
        params = self.config.sampling.params(num_samples=raft.num_samples, seed=seed)
        batch = engine.generate(prompts, params)
        metadata = None if self.metadata is None else [self.metadata[p] for p in prompts]
        scores = score_rollout(self.reward, prompts, batch, metadata).scores  # [P·N]
        rewards = rewards_per_prompt(batch, scores)  # [P, N]
        texts = [
            batch.response_texts[row : row + raft.num_samples]
            for row in range(0, len(batch), raft.num_samples)
        ]
        stats = batch.response_stats()
        metrics = {
            "reward_mean": float(rewards.mean()),
            "reward_best_mean": float(rewards.max(-1).values.mean()),
            "finished_rate": stats["eos_rate"],
            "response_tokens_mean": stats["response_tokens"],
            "truncated_prompts": float(batch.truncated_prompts),
        }
        return rewards, texts, metrics

    def fine_tune(
        self, model: torch.nn.Module, tokenizer: Any, records: list[CompletionRecord], folder: Path
    ) -> dict[str, float]:
        """SFT on the kept samples through the shared language-model trainer."""
        from rlhf.data.readers import write_records

        config = self.config
        selected = folder / "selected.jsonl"
        write_records(selected, records)
        data = DataConfig(train=str(selected), eval_fraction=0.0, **config.data.model_dump())
        report = TruncationReport(data.max_length)
        examples = tokenize_records(tokenizer, records, data, as_demonstration, report)
        data_metrics = report_truncation({"train": report})
        if not examples:
            return {"sft_steps": 0.0, **data_metrics}
        # a round may keep fewer samples than a batch holds
        train = config.train.model_copy(
            update={"batch_size": min(config.train.batch_size, len(examples))}
        )
        sft = SFTConfig(
            out=str(folder),
            tensorboard=config.tensorboard,
            wandb_project=config.wandb_project,
            progress=config.progress,
            model=ModelConfig(path=str(self.state["policy"])),
            data=data,
            train=train,
        )
        result = train_on_examples(
            sft, model, tokenizer, folder, None, examples, [], data_metrics=data_metrics
        )
        self.state["policy"] = str(result.model_dir)
        losses = [row["loss"] for row in result.metrics if "loss" in row]
        return {"sft_steps": float(result.final_step), "sft_loss": losses[-1], **data_metrics}


def run_raft(config: RAFTConfig, resume: bool = False) -> RunResult:
    fresh = {"completed_rounds": 0, "policy": None, "sft_steps": 0}
    start = start_rounds(config, resume, STATE_FILE, "RAFT", fresh)
    out, prompts = start.out, start.prompts
    run = _Run(config, start, build_reward(config.reward))

    check_engine(config.sampling)  # before the init SFT trains anything
    # the starting policy
    if run.state["policy"] is None:
        run.state["policy"] = run.initial_policy(resume)
        run.save_state()
    model_config = config.model.model_copy(update={"path": run.state["policy"], "tiny": None})
    model, tokenizer = build_model_and_tokenizer(model_config, out, lambda: [], config.train.seed)
    check_fits_positions(model, config.data.max_length)
    model.to(resolve_device(config.train.device))  # sampling and training share the device
    engine = engine_for(config.sampling, model, tokenizer, batch_size=config.sampling.batch_size)

    raft, seed = config.raft, config.train.seed
    done = run.state["completed_rounds"]
    # a fixed evaluation set, sampled with one seed every time (common random numbers): the
    # differences between rounds then measure the policy, not the prompts or the dice
    eval_set = round_prompts(prompts, raft.eval_prompts, 0, seed + 1)
    eval_seed = seed + 1_000_003
    sink = JsonlSink(out / "metrics.jsonl", resume_step=done if resume else None)
    history: list[dict[str, float]] = []

    def evaluate(step: int) -> dict[str, float]:
        _, _, metrics = run.sample_and_score(engine, eval_set, eval_seed)
        sink.log(step, metrics, prefix="eval")
        return {f"eval_{key}": value for key, value in metrics.items()}

    try:
        if done == 0:
            initial = evaluate(0)
            history.append({"round": 0.0, **initial})
            logger.info("starting policy: reward %.4f", initial["eval_reward_mean"])
        for round_number in range(done + 1, raft.rounds + 1):
            folder = out / "rounds" / f"round-{round_number}"
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted round starts over
            folder.mkdir(parents=True)

            # rollout → score
            offset = (round_number - 1) * raft.prompts_per_round
            batch_prompts = round_prompts(prompts, raft.prompts_per_round, offset, seed)
            rewards, texts, metrics = run.sample_and_score(
                engine, batch_prompts, seed + round_number
            )

            # rank → keep the best k per prompt (never an empty response)
            kept = [
                (row, column)
                for row, columns in enumerate(
                    top_k_per_prompt(rewards, raft.keep_top, raft.min_reward)
                )
                for column in columns
                if texts[row][column].strip()
            ]
            records = [
                CompletionRecord(
                    batch_prompts[row], response_as_text(batch_prompts[row], texts[row][column])
                )
                for row, column in kept
            ]
            kept_rewards = [float(rewards[row, column]) for row, column in kept]
            metrics["kept"] = float(len(records))
            metrics["kept_reward_mean"] = (
                sum(kept_rewards) / len(kept_rewards) if kept_rewards else float("nan")
            )

            # fine-tune on them
            if records:
                metrics |= run.fine_tune(model, tokenizer, records, folder)
            else:
                logger.warning("round %d kept no samples: the policy stays as it is", round_number)
            sink.log(round_number, metrics, prefix="rollout")
            evaluation = evaluate(round_number)
            run.state["sft_steps"] += int(metrics.get("sft_steps", 0))
            run.state["completed_rounds"] = round_number
            run.save_state()
            history.append({"round": float(round_number), **metrics, **evaluation})
            logger.info(
                "round %d/%d: sampled reward %.4f (best of %d %.4f), kept %d, fine-tuned %d "
                "steps; evaluation reward now %.4f",
                round_number, raft.rounds, metrics["reward_mean"], raft.num_samples,
                metrics["reward_best_mean"], len(records), int(metrics.get("sft_steps", 0)),
                evaluation["eval_reward_mean"],
            )  # fmt: skip
    finally:
        sink.close()
        close_engine(engine)

    model_dir = out / "model"
    exporter(model, tokenizer)(model_dir)
    return RunResult(out, run.state["sft_steps"], model_dir, history)
