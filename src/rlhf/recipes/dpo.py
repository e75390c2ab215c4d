"""Offline preference optimisation: DPO and its family, trained directly on preference pairs.

DPO (Rafailov et al., 2023) needs no reward model and no sampling during training. Its
loss (eq. 7) is the Bradley–Terry likelihood of the data with the reward replaced by the
policy's *implicit reward* ``β · log π(y|x) / π_ref(y|x)``::

    L = −log σ(β · [log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)])

and its minimiser is the optimum of the KL-regularised reward objective. ``loss.name`` picks
the variant from :data:`rlhf.losses.preference.PREFERENCE_LOSSES` (IPO, SLiC hinge, robust /
conservative DPO, the general convex f, SimPO, ORPO, RPO, APO-zero); see docs/dpo.md.

Phases: data (any comparing kind becomes pairs; the held-out split is by prompt) → model →
tokenise (prompt and completion together) → batches (one row per pair with the prompt once
for decoders that take a 4-D mask, else ``[2P, T]``) → reference log-probs (of the pairs the
seeded schedule reads, computed once with the policy's own initial weights, a LoRA policy's
disabled adapter or ``reference.path``, and cached on disk; skipped for reference-free
losses) → train → export. From the batches on, it is the loop shared with KTO
(:func:`rlhf.recipes.offline_common.train_offline`).

    rlhf dpo --preset tiny
    rlhf dpo --preset tiny --loss ipo
    rlhf dpo --config dpo.yaml model.path=runs/sft/model data.train=prefs.jsonl
"""

from __future__ import annotations

from pydantic import Field

from rlhf.data.preference import PairText, tokenize_pairs
from rlhf.data.tokenize import TruncationReport
from rlhf.engine.trainer import TrainConfig
from rlhf.recipes.common import (
    ModelConfig,
    RecipeConfig,
    RunResult,
    build_model_and_tokenizer,
    check_fits_positions,
    load_records,
    prepare_out_dir,
    report_truncation,
    training_texts,
)
from rlhf.recipes.offline_common import (
    PreferenceDataConfig,
    PreferenceEvalConfig,
    PreferenceLossConfig,
    ReferenceConfig,
    pair_summary,
    pairwise_objective,
    preference_pairs,
    split_by_prompt,
    train_offline,
    unique_prompts,
)

# ------------------------------------------------------------------------------ config


class DPOConfig(RecipeConfig):
    """Offline preference optimisation (DPO and its family)."""

    model: ModelConfig = Field(description="The policy to train (usually the SFT model).")
    reference: ReferenceConfig = Field(
        default_factory=ReferenceConfig, description="The reference policy π_ref."
    )
    data: PreferenceDataConfig = Field(
        description="Comparisons: preference pairs, rankings, ratings, thumbs, edits."
    )
    loss: PreferenceLossConfig = Field(
        default_factory=PreferenceLossConfig, description="The loss."
    )
    train: TrainConfig = Field(
        # lr 1e-6: Rafailov et al. 2023 (§B); β-scaled log-ratios move fast, larger rates overfit
        default_factory=lambda: TrainConfig(lr=1e-6),
        description="Optimisation; batch_size counts pairs.",
    )
    eval: PreferenceEvalConfig = Field(
        default_factory=PreferenceEvalConfig, description="Held-out evaluation."
    )


# ------------------------------------------------------------------------------ the recipe


def run_dpo(config: DPOConfig, resume: bool = False) -> RunResult:
    """Train a policy on preference pairs with the configured loss; export it to <out>/model."""
    out, checkpoint = prepare_out_dir(config, resume)
    data, seed = config.data, config.train.seed

    # data: pairs from any comparing kind; the held-out split is by prompt
    records = load_records(data.train, data)
    groups = preference_pairs(records, data.train)

    def read_eval() -> list[PairText]:
        assert data.eval is not None
        held_out = preference_pairs(load_records(data.eval, data), data.eval)
        return [pair for group in held_out for pair in group]

    train_pairs, eval_pairs = split_by_prompt(groups, data, seed, read_eval)

    # model (a tiny one is built here, its tokenizer trained on this data)
    model, tokenizer = build_model_and_tokenizer(
        config.model, out, lambda: training_texts(records), seed
    )
    check_fits_positions(model, data.max_length)

    # tokenise: prompt and completion together, both completions of a pair
    reports = {split: TruncationReport(data.max_length, "pairs") for split in ("train", "eval")}
    train_examples = tokenize_pairs(
        tokenizer, train_pairs, data.max_length, data.truncation, report=reports["train"]
    )
    eval_examples = tokenize_pairs(
        tokenizer, eval_pairs, data.max_length, data.truncation,
        first_index=len(train_examples), report=reports["eval"],
    )  # fmt: skip
    return train_offline(
        config,
        model,
        tokenizer,
        out,
        checkpoint,
        train_examples,
        eval_examples,
        objective=pairwise_objective(config.loss.function()),
        needs_reference=config.loss.needs_reference,
        summarise=pair_summary,
        kl_prompts=unique_prompts(eval_pairs, config.eval.kl_prompts),
        data_metrics=report_truncation(reports),
    )
