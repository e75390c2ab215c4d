"""What the recipes that learn from comparisons share (``rlhf rm``, ``rlhf pm``): their data
section and the reading of pairs, rankings, ratings, thumbs and edits as prompt groups of pairs,
with the held-out split made by prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import Field

from rlhf.data.pairs import PreferenceGroup, preference_groups
from rlhf.data.records import Record
from rlhf.recipes.common import DataConfig, load_records, split_train_eval

logger = logging.getLogger("rlhf")


class ComparisonDataConfig(DataConfig):
    group_by_length: bool = Field(
        True,
        description="Batch prompt groups of similar length together (each window of 50 "
        "shuffled batches sorted by length, then the batches shuffled): far less padding.",
    )


@dataclass
class Comparisons:
    """A run's comparisons, one :class:`~rlhf.data.pairs.PreferenceGroup` per prompt."""

    records: list[Record]  # the training data as read (a tiny model's tokenizer learns on it)
    train: list[PreferenceGroup]  # the training prompts' groups
    eval: list[PreferenceGroup]  # the held-out prompts' groups (no prompt is on both sides)


def load_comparisons(data: DataConfig, seed: int) -> Comparisons:
    """Read ``data.train`` (and ``data.eval``) as prompt groups of pairs
    (:func:`rlhf.data.pairs.preference_groups`: rankings give all their pairs, ratings and
    thumbs pair up within a prompt); without ``data.eval`` a seeded ``data.eval_fraction`` of
    the prompts is held out. At most ``data.eval_max_examples`` held-out prompts are kept.
    Logs the counts."""
    records = load_records(data.train, data)
    groups = preference_groups(records, data.train)
    if data.eval is not None:
        train_groups = groups
        eval_records = load_records(data.eval, data)
        eval_groups = preference_groups(eval_records, data.eval)[: data.eval_max_examples]
    else:
        train_groups, eval_groups = split_train_eval(groups, data, seed)  # type: ignore[arg-type]
    logger.info(
        "%d training prompts (%d pairs), %d held-out prompts (%d pairs)",
        len(train_groups), sum(g.num_pairs for g in train_groups),  # type: ignore[attr-defined]
        len(eval_groups), sum(g.num_pairs for g in eval_groups),  # type: ignore[attr-defined]
    )  # fmt: skip
    return Comparisons(records, train_groups, eval_groups)  # type: ignore[arg-type]
