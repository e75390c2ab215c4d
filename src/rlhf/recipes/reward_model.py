"""Reward model training: fit a scalar reward to human comparisons (Bradley–Terry).

Reads anything that orders responses to a prompt — preference pairs (with an optional
``margin``), rankings, ratings, thumbs up/down, edits — and turns it into pairs
(:func:`rlhf.data.convert.as_preferences`), merged into one group per prompt so that each
response is forwarded once and a ranking's C(K, 2) pairs share one batch (InstructGPT,
Ouyang et al., 2022, §3.5). The loss is the Bradley–Terry negative log-likelihood
``−log σ(r_w − r_l − m)`` (InstructGPT eq. 1; the margin ``m`` from the data as in Llama 2,
scaled by ``loss.margin_scale``, 0 by default), averaged over the pairs of each optimiser step.
``train.batch_size`` counts prompt groups; for plain pairwise data that is one pair each.

The held-out set is split off by prompt (no prompt is on both sides) and reports pairwise
accuracy, mean margin r_w − r_l and the expected calibration error of σ(r_w − r_l). After
training, a gain and bias are stored so that the rewards of a reference set of responses have
mean 0 and standard deviation 1 (see :mod:`rlhf.models.reward`). The model is saved as a one-label
``AutoModelForSequenceClassification``.

    rlhf rm --preset tiny
    rlhf rm --config rm.yaml model.path=runs/sft/model data.train=prefs.jsonl

``rlhf score`` (:func:`score_file`) scores a file of (prompt, response) rows with the result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.errors import DataError
from rlhf.data.pairs import (
    PreferenceGroup,
    RewardBatch,
    TokenizedGroup,
    collate_groups,
    collate_groups_shared_prefix,
    preference_groups,
    tokenize_groups,
)
from rlhf.data.records import CompletionRecord, Text
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.loader import ResumableLoader
from rlhf.engine.progress import Progress
from rlhf.engine.trainer import TrainConfig, resolve_device
from rlhf.losses.reward import bradley_terry_loss, preference_metrics
from rlhf.models.forward import shares_prompt_prefix
from rlhf.models.load import LoraSpec, load_tokenizer
from rlhf.models.reward import (
    RewardModel,
    init_reward_model,
    load_reward_model,
    normalization_from_rewards,
    packed_reward_logits,
    reward_logits,
    set_normalization,
    write_normalization,
)
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    RunResult,
    check_fits_positions,
    load_records,
    model_source,
    prepare_out_dir,
    report_truncation,
    training_texts,
)
from rlhf.recipes.comparisons import ComparisonDataConfig, load_comparisons
from rlhf.recipes.lm import make_trainer

logger = logging.getLogger("rlhf")


class RewardLossConfig(StrictModel):
    margin_scale: float = Field(
        0.0,
        ge=0,
        description="Weight of each pair's margin from the data in −log σ(r_w − r_l − "
        "margin_scale·m) (Llama 2): a preference row's `margin`, a ranking's rank difference, "
        "a rating difference. 0 ignores margins.",
    )


class NormalizationConfig(StrictModel):
    enabled: bool = Field(
        True, description="After training, store gain and bias so reference rewards are N(0, 1)."
    )
    data: str | None = Field(
        None,
        description="Reference (prompt, completion) rows, e.g. SFT policy samples (any data "
        "kind works: every response in it counts). Default: the held-out responses, else the "
        "training ones.",
    )
    max_responses: int = Field(1024, ge=2, description="Score at most this many references.")


class RewardModelConfig(RecipeConfig):
    """Reward model training (Bradley–Terry)."""

    model: ModelConfig = Field(
        description="The backbone: a causal LM (e.g. the SFT model), an encoder (BERT, "
        "MiniLM), a reward model to train further, or a tiny Llama built from scratch."
    )
    data: ComparisonDataConfig = Field(
        description="Comparisons: preference pairs, rankings, ratings, thumbs, edits."
    )
    train: TrainConfig = Field(
        # lr 1e-5: about InstructGPT's reward model rate (Ouyang et al. 2022, §C.2: 9e-6)
        default_factory=lambda: TrainConfig(lr=1e-5),
        description="Optimisation; batch_size counts prompts (one pair each for pairwise data).",
    )
    loss: RewardLossConfig = Field(default_factory=RewardLossConfig, description="The loss.")
    normalize: NormalizationConfig = Field(
        default_factory=NormalizationConfig, description="Reward normalisation after training."
    )

    @model_validator(mode="after")
    def _no_packing(self) -> RewardModelConfig:
        if self.data.packing:
            raise ValueError("data.packing: reward models score one response per row; set false")
        return self


# ------------------------------------------------------------------------------ loss and eval


def reward_loss(
    model: torch.nn.Module, batch: RewardBatch, margin_scale: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed Bradley–Terry loss of a batch of prompt groups; each response forwarded once."""
    if batch.response_end is not None:  # shared-prefix rows (decoders)
        assert batch.position_ids is not None
        rewards = packed_reward_logits(
            model, batch.input_ids, batch.attention_mask, batch.position_ids, batch.response_end
        )  # [N]
    else:
        rewards = reward_logits(model, batch.input_ids, batch.attention_mask)  # [N]
    margin = batch.margin * margin_scale if margin_scale else None  # [P]
    return bradley_terry_loss(
        rewards[batch.chosen_index], rewards[batch.rejected_index], margin
    )  # [P] each


# raw rewards by token sequence (prompt + response ids), as the model gave them
Scores = dict[tuple[int, ...], float]


def pair_rewards(
    model: torch.nn.Module,
    batches: Any,
    device: torch.device,
    scores: Scores | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen rewards [P], rejected rewards [P])`` of every pair in ``batches``; each
    response's raw reward also goes into ``scores`` when given."""
    chosen, rejected = [], []
    for batch in batches:
        batch = batch.to(device)
        rewards = reward_logits(model, batch.input_ids, batch.attention_mask)  # [N]
        chosen.append(rewards[batch.chosen_index].cpu())
        rejected.append(rewards[batch.rejected_index].cpu())
        if scores is not None:
            lengths = batch.attention_mask.sum(1).tolist()  # right-padded: real tokens first
            for ids, length, reward in zip(
                batch.input_ids.tolist(), lengths, rewards.tolist(), strict=True
            ):
                scores[tuple(ids[:length])] = reward
        if on_batch is not None:
            on_batch(batch.loss_units)
    return torch.cat(chosen), torch.cat(rejected)


def held_out_metrics(
    loader: ResumableLoader,
    device: torch.device,
    scores: Scores | None = None,
    progress: bool = False,
) -> Any:
    """An evaluation function: accuracy, mean margin, ECE and loss over the held-out pairs.

    ``scores`` is refilled at each evaluation with the raw reward of every held-out response
    (fp32 passes only), so after training the last one, the final weights' scores, serve
    the normalisation (:func:`fit_normalization`) without scoring those responses again.
    """

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        record = None
        if scores is not None:
            scores.clear()
            # under bf16 autocast the scores are not the fp32 ones normalisation computes
            record = None if torch.is_autocast_enabled(device.type) else scores
        pairs = sum(group.num_pairs for group in loader.items)
        with Progress("held-out evaluation", pairs, "pairs", enabled=progress) as bar:
            chosen, rejected = pair_rewards(model, loader, device, record, bar.update)
        return preference_metrics(chosen, rejected) | {"pairs": float(chosen.numel())}

    return evaluate


# ------------------------------------------------------------------------------ data


def reference_responses(groups: Sequence[PreferenceGroup], limit: int) -> list[tuple[Text, Text]]:
    """(prompt, response) for each distinct response of the groups, at most ``limit``."""
    pairs = [(group.prompt, response) for group in groups for response in group.responses]
    return pairs[:limit]


def _normalization_references(
    config: RewardModelConfig,
    train_groups: Sequence[PreferenceGroup],
    eval_groups: Sequence[PreferenceGroup],
) -> tuple[list[tuple[Text, Text]], str]:
    limit = config.normalize.max_responses
    if config.normalize.data is not None:
        records = load_records(config.normalize.data, config.data)
        completions = [(r.prompt, r.completion) for r in records if isinstance(r, CompletionRecord)]
        compared = [r for r in records if not isinstance(r, CompletionRecord)]
        groups = preference_groups(compared, config.normalize.data)
        references = completions + reference_responses(groups, limit)
        return references[:limit], config.normalize.data
    if eval_groups:
        return reference_responses(eval_groups, limit), "held-out responses"
    return reference_responses(train_groups, limit), "training responses"


def fit_normalization(
    scorer: RewardModel,
    references: Sequence[tuple[Text, Text]],
    batch_size: int,
    max_length: int | None,
    known: Scores | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Gain and bias that give the references' rewards mean 0 and std 1, with the raw stats.

    ``known``: raw rewards the final weights already gave (the last held-out evaluation's),
    by token sequence; only the references not among them are scored."""
    if not references:
        raise ValueError("normalize: no reference responses to normalise rewards on")
    with Progress("normalisation scoring", len(references), "responses", enabled=progress) as bar:
        raw = scorer.score(
            [prompt for prompt, _ in references],
            [response for _, response in references],
            batch_size=max(batch_size, 8),
            max_length=max_length,
            normalized=False,
            known=known,
            on_batch=bar.update,
        )
    gain, bias = normalization_from_rewards(raw)
    return {
        "gain": gain,
        "bias": bias,
        "count": len(references),
        "raw_mean": float(raw.mean()),
        "raw_std": float(raw.std(unbiased=False)),
    }


def make_group_loader(
    groups: Sequence[TokenizedGroup],
    batch_size: int,
    pad_token_id: int,
    seed: int,
    shuffle: bool = True,
    group_by_length: bool = False,
    share_prefix: bool = False,
) -> ResumableLoader:
    groups = list(groups)
    lengths = None
    if shuffle and group_by_length:
        lengths = [max(len(sequence) for sequence in group.sequences) for group in groups]
    collate = collate_groups_shared_prefix if share_prefix else collate_groups
    return ResumableLoader(
        groups,
        batch_size,
        partial(collate, pad_token_id=pad_token_id),
        seed=seed,
        shuffle=shuffle,
        drop_last=shuffle,
        lengths=lengths,
    )


# ------------------------------------------------------------------------------ the recipe


def run_reward_model(config: RewardModelConfig, resume: bool = False) -> RunResult:
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: comparisons grouped by prompt; the held-out split is by prompt too
    comparisons = load_comparisons(data, seed)
    records, train_groups, eval_groups = comparisons.records, comparisons.train, comparisons.eval

    # model: the backbone with a scalar head (LoRA optional)
    path = model_source(config.model, out, lambda: training_texts(records), seed)
    tokenizer = load_tokenizer(path, gguf_file=config.model.gguf_file)
    lora = config.model.lora
    model = init_reward_model(
        path,
        tokenizer,
        dtype=config.model.dtype,
        attn_implementation=config.model.attn_implementation,
        gguf_file=config.model.gguf_file,
        lora=None if lora is None else LoraSpec(**lora.model_dump()),
        seed=seed,
    )
    check_fits_positions(model, data.max_length)

    # tokenise: every response of a group once
    reports = {split: TruncationReport(data.max_length, "pairs") for split in ("train", "eval")}
    train_tokens = tokenize_groups(
        tokenizer, train_groups, data.max_length, data.truncation, report=reports["train"]
    )
    eval_tokens = tokenize_groups(
        tokenizer, eval_groups, data.max_length, data.truncation, report=reports["eval"]
    )
    data_metrics = report_truncation(reports)
    if not train_tokens:
        raise ValueError(f"{data.train}: no comparison left to train on (see the log)")
    pad = tokenizer.pad_token_id
    loader = make_group_loader(
        train_tokens,
        config.train.batch_size,
        pad,
        seed,
        group_by_length=data.group_by_length,
        # decoders: each group's prompt is computed once for all its responses
        share_prefix=shares_prompt_prefix(model),
    )
    device = resolve_device(config.train.device)
    evaluate = None
    # the last evaluation's scores, by token sequence: the normalisation reuses them (its
    # default references are the held-out responses), so no response is scored twice
    final_scores: Scores = {}
    if eval_tokens:
        eval_loader = make_group_loader(
            eval_tokens, config.train.batch_size, pad, seed, shuffle=False
        )
        evaluate = held_out_metrics(eval_loader, device, final_scores, config.progress)

    # train
    trainer, export = make_trainer(
        config,
        model,
        tokenizer,
        loader,
        partial(reward_loss, margin_scale=config.loss.margin_scale),
        out,
        evaluate=evaluate,
        data_metrics=data_metrics,
    )
    result = trainer.train(resume_from=checkpoint)

    # normalise: reference rewards get mean 0, std 1 (stored in the config); then export
    model_dir = out / "model"
    normalization = None
    if config.normalize.enabled:
        references, source = _normalization_references(config, train_groups, eval_groups)
        scorer = RewardModel(model, tokenizer)
        normalization = fit_normalization(
            scorer,
            references,
            config.train.batch_size,
            data.max_length,
            known=final_scores,
            progress=config.progress,
        ) | {"reference": source}
        set_normalization(model, normalization["gain"], normalization["bias"])
        logger.info(
            "reward normalisation: gain %.4g, bias %.4g (%d %s)",
            normalization["gain"], normalization["bias"], len(references), source,
        )  # fmt: skip
    export(model_dir)
    if normalization is not None:
        write_normalization(model_dir, **normalization)
    return RunResult(out, result.final_step, model_dir, result.history)


# ------------------------------------------------------------------------------ rlhf score


def _read_scoring_records(source: str) -> list[CompletionRecord]:
    """(prompt, completion) rows, or (prompt, response) rows read as such.

    Read as completions first; when a row lacks ``completion``, read again taking
    ``response`` for it, and report whichever reading got further through the file.
    """
    from rlhf.data.readers import read_records

    try:
        return read_records(source, "completion").records  # type: ignore[return-value]
    except DataError as error:
        if not (error.field == "completion" and error.reason == "missing_field"):
            raise
        first = error
    try:
        columns = {"completion": "response"}
        return read_records(source, "completion", columns=columns).records  # type: ignore[return-value]
    except DataError as error:
        raise (error if (error.line or 0) > (first.line or 0) else first) from None


def _original_rows(source: str, records: Sequence[CompletionRecord]) -> list[dict[str, Any]]:
    """The input's own rows (every column kept) for JSON Lines, else the records' rows."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8-sig") as file:
            rows = [json.loads(line) for line in file if line.strip()]
        if len(rows) == len(records):
            return rows
    return [record.to_dict() for record in records]


def score_file(
    model_path: str,
    input_path: str,
    output_path: str | Path,
    *,
    batch_size: int = 16,
    raw: bool = False,
    max_length: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, float]:
    """Score every (prompt, completion / response) row of ``input_path`` with a reward model.

    Writes ``output_path`` as JSON Lines: each input row plus ``reward`` (normalised) and
    ``raw_reward``; with ``raw``, ``reward`` is the raw score and there is no ``raw_reward``.
    Returns ``{"rows", "mean_reward"}``.
    """
    records = _read_scoring_records(input_path)
    if not records:
        raise ValueError(f"{input_path}: no rows to score")
    rows = _original_rows(input_path, records)
    reward_model = load_reward_model(model_path, device=resolve_device(device))
    with Progress("scoring", len(records), "rows", enabled=progress) as bar:
        raw_rewards = reward_model.score(
            [record.prompt for record in records],
            [record.completion for record in records],
            batch_size=batch_size,
            max_length=max_length,
            normalized=False,
            on_batch=bar.update,
        )
    rewards = raw_rewards if raw else reward_model.normalize(raw_rewards)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8", errors="backslashreplace") as file:
        for row, reward, raw_reward in zip(
            rows, rewards.tolist(), raw_rewards.tolist(), strict=True
        ):
            scored = dict(row) | {"reward": reward}
            if not raw:
                scored["raw_reward"] = raw_reward
            file.write(json.dumps(scored, ensure_ascii=False) + "\n")
    return {"rows": float(len(records)), "mean_reward": float(rewards.mean())}
