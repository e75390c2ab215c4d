"""Task types: what an annotator submits for each, how it is checked, stored and exported.

A label arrives in *display* order (the order the annotator saw, randomised per assignment)
and is stored in the item's *original* response order, so that labels of different
annotators compare directly and the export needs no display bookkeeping.

=========  ==============================  ===========================  ==================
task       submitted                        stored value                 exported as
=========  ==============================  ===========================  ==================
pairwise   ``choice`` 1..8 (1 = A much      ``better`` (0/1), ``level``  preference with
           better, 8 = B much better)       0..3, ``score`` 1..8         ``margin`` = level
rank       ``ranks`` per shown response,    ``ranks`` 0 = best, dense    ranking (or pairs)
           1 = best, ties allowed
rate       ``rating`` 1..5                  ``rating``                   rating, scale 1-5
thumbs     ``up`` true/false                ``up``                       binary
edit       ``text``, the rewrite            ``text``                     demonstration,
                                                                         edit, or pair
chat       ``choice`` 0/1 per turn          ``chosen`` candidate index   pairs in context
steps      ``labels``, one per step: 1      ``labels`` as submitted      steps (the layout
           correct, -1 incorrect, 0                                      ``rlhf prm`` reads)
           neutral; null only after the
           first -1
=========  ==============================  ===========================  ==================

A ``steps`` item is one solution already split into steps (PRM800K's interface: Lightman et
al. 2023, "Let's Verify Step by Step"): its ``responses`` are the steps, shown in their own
order (:data:`SHOWN_IN_ORDER`: each step builds on the ones before, so they are never shuffled),
and the problem's known final answer, if any, rides in the item's ``source`` as ``answer``. As
PRM800K's labellers may, an annotator can stop at the first incorrect step: the steps after it
may stay unlabelled (null), and are exported so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf.data.errors import describe_value
from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    Message,
    PreferenceRecord,
    RankingRecord,
    RatingRecord,
    Record,
    Text,
    unicode_problem,
)
from rlhf.data.steps import step_record
from rlhf.feedback.limits import MAX_TEXT

TASK_TYPES: tuple[str, ...] = ("pairwise", "rank", "rate", "thumbs", "edit", "chat", "steps")
# tasks whose responses are shown in the item's order rather than a random one per assignment
SHOWN_IN_ORDER = frozenset({"steps"})
MAX_RANKED = 9  # one digit key per response on the annotator page
RATING_SCALE = (1, 5)

# The 8-point scale of Anthropic's HH interface (Bai et al., 2022, fig. 6): 1 = A much better
# ... 4 = A negligibly better | 5 = B negligibly better ... 8 = B much better. There is no
# tie: the annotator must lean. The strength level 0..3 becomes the pair's margin, as in
# Llama 2's margin loss (Touvron et al., 2023, eq. 2), where a clearer preference asks the
# reward model for a wider gap.
PAIRWISE_POINTS = 8

# PRM800K's step ratings (Lightman et al. 2023), the labels of rlhf.data.steps
STEP_LABELS = {1: "correct", -1: "incorrect", 0: "neutral"}


class LabelError(ValueError):
    """A submitted label does not fit its task; the message names the field."""


def text_problem(text: str) -> str | None:
    """Why a text cannot be stored by every database and written by every export, or None:
    a NUL character (PostgreSQL refuses it) or a lone surrogate (not Unicode, so not writable
    as UTF-8)."""
    if "\x00" in text:
        return "contains a NUL character"
    return unicode_problem(text)


def check_text(text: str, field: str) -> str:
    """``text`` itself, or a :class:`LabelError` naming ``field``: a text too long to keep
    (``MAX_TEXT``) or one no database can store (:func:`text_problem`)."""
    if len(text) > MAX_TEXT:
        raise LabelError(f"{field}: {len(text):,} characters, over the limit of {MAX_TEXT:,}")
    problem = text_problem(text)
    if problem is not None:
        raise LabelError(f"{field}: {problem}")
    return text


def comparable(text: str) -> str:
    """A response as two are compared: without the whitespace around it, which the page does
    not show. Two responses equal so are no preference (rm and dpo refuse chosen = rejected)."""
    return text.strip()


# ---------------------------------------------------------------------------- submissions


def _int_field(payload: dict[str, Any], name: str, low: int, high: int) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelError(f"{name}: expected a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise LabelError(f"{name}: {value} is outside {low}..{high}")
    return value


def dense_ranks(ranks: Sequence[int]) -> list[int]:
    """Ranks renumbered 0, 1, 2, ... in order, ties kept: [1, 3, 3, 2] -> [0, 2, 2, 1]."""
    levels = {rank: level for level, rank in enumerate(sorted(set(ranks)))}
    return [levels[rank] for rank in ranks]


def normalise_label(task: str, payload: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """The stored value of a submission (in display order) for a shown permutation ``order``.

    ``order[d]`` is the index in the item's responses of the response shown at position d.
    Raises :class:`LabelError` naming the field for anything out of place.
    """
    if task == "pairwise":
        choice = _int_field(payload, "choice", 1, PAIRWISE_POINTS)
        shown_better = 0 if choice <= PAIRWISE_POINTS // 2 else 1
        # score on the original order: 1 = response 0 much better ... 8 = response 1 much better
        score = choice if order[0] == 0 else PAIRWISE_POINTS + 1 - choice
        level = int(abs(choice - (PAIRWISE_POINTS + 1) / 2) - 0.5)
        return {"better": order[shown_better], "level": level, "score": score}
    if task == "rank":
        ranks = payload.get("ranks")
        if not isinstance(ranks, list) or len(ranks) != len(order):
            raise LabelError(f"ranks: expected a list of {len(order)} ranks, got {ranks!r}")
        for position, rank in enumerate(ranks):
            if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= len(order):
                raise LabelError(f"ranks[{position}]: expected 1..{len(order)}, got {rank!r}")
        if len(set(ranks)) == 1:
            raise LabelError("ranks: all responses tied says nothing; rank at least two apart")
        original = [0] * len(order)
        for position, rank in enumerate(dense_ranks(ranks)):
            original[order[position]] = rank
        return {"ranks": original}
    if task == "rate":
        return {"rating": _int_field(payload, "rating", *RATING_SCALE)}
    if task == "thumbs":
        up = payload.get("up")
        if not isinstance(up, bool):
            raise LabelError(f"up: expected true or false, got {up!r}")
        return {"up": up}
    if task == "edit":
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            raise LabelError("text: the edited response is empty")
        return {"text": check_text(text, "text")}
    if task == "steps":  # shown in order (SHOWN_IN_ORDER): display order is the steps' own
        return {"labels": check_step_labels(payload.get("labels"), len(order))}
    raise LabelError(f"{task} tasks are labelled turn by turn (chat endpoints), not here")


def check_step_labels(labels: Any, n_steps: int) -> list[int | None]:
    """A steps submission checked: one label a step, 1 (correct), -1 (incorrect) or 0
    (neutral); null (unlabelled) only after the first incorrect step, where PRM800K's labellers
    may stop, since a solution that went wrong there says nothing sure about the rest."""
    kinds = ", ".join(f"{value} ({name})" for value, name in STEP_LABELS.items())
    if not isinstance(labels, list) or len(labels) != n_steps:
        raise LabelError(
            f"labels: expected a list of {n_steps} step labels, each {kinds} or null; "
            f"got {describe_value(labels)}"
        )
    for index, label in enumerate(labels):
        if label is not None and (
            isinstance(label, bool) or not isinstance(label, int) or label not in STEP_LABELS
        ):
            raise LabelError(
                f"labels[{index}]: expected {kinds} or null, got {describe_value(label)}"
            )
    first_incorrect = labels.index(-1) if -1 in labels else n_steps
    for index in range(first_incorrect):
        if labels[index] is None:
            raise LabelError(
                f"labels[{index}]: step {index + 1} is unlabelled; label every step up to the "
                "first incorrect one (only the steps after it may stay null)"
            )
    return labels


def shown_value(task: str, value: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    """A stored value back in the order the annotator saw (for their own history); for a
    chat pick, ``order`` is the turn's order of the two replies."""
    if task == "pairwise":
        score = value["score"]  # on the original order: 1 = response 0 much better
        return {"choice": score if order[0] == 0 else PAIRWISE_POINTS + 1 - score}
    if task == "rank":
        return {"ranks": [value["ranks"][index] + 1 for index in order]}
    if task == "chat":
        return {"choice": list(order).index(value["chosen"])}
    return dict(value)


def check_gold(task: str, gold: Any, n_responses: int, where: str) -> Any:
    """A campaign row's hidden answer, checked; see docs/feedback.md for its form per task."""
    if gold is None:
        return None
    if task in ("pairwise", "rank"):
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < n_responses:
            raise LabelError(f"{where}: the index of the best response (0..{n_responses - 1})")
        return gold
    if task == "rate":
        low, high = RATING_SCALE
        if isinstance(gold, bool) or not isinstance(gold, int) or not low <= gold <= high:
            raise LabelError(f"{where}: a rating {low}..{high}")
        return gold
    if task == "thumbs":
        if not isinstance(gold, bool):
            raise LabelError(f"{where}: true (thumbs up) or false")
        return gold
    raise LabelError(f"{where}: {task} tasks take no gold answer")


def matches_gold(task: str, value: dict[str, Any], gold: Any) -> bool:
    """Whether a stored label agrees with the item's gold answer."""
    if task == "pairwise":
        return value["better"] == gold
    if task == "rank":
        return value["ranks"][gold] == 0
    if task == "rate":
        return value["rating"] == gold
    if task == "thumbs":
        return value["up"] == gold
    raise LabelError(f"{task} tasks take no gold answer")


# ------------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class AgreementUnits:
    """The labels of a campaign as Krippendorff units: one list of values per unit."""

    level: str
    units: list[list[Any]]


def agreement_units(task: str, labels_by_item: dict[int, list[dict[str, Any]]]) -> AgreementUnits:
    """Each item's labels as units for Krippendorff's alpha, with the metric that fits them.

    Pairwise: the 1..8 score on the original order, interval metric (the scale's points are
    evenly spaced). Rank: one unit per pair of responses, the ordinal value -1/0/1 of which
    was ranked higher. Rate: the rating, ordinal. Thumbs: nominal. Steps: one unit per step,
    its label nominal (an unlabelled step is a missing value). Edit and chat have no shared
    categories (every rewrite and every conversation differs): no units.
    """
    units: list[list[Any]] = []
    if task == "pairwise":
        units = [[v["score"] for v in values] for values in labels_by_item.values()]
        return AgreementUnits("interval", units)
    if task == "rank":
        for values in labels_by_item.values():
            size = len(values[0]["ranks"])
            for i, j in itertools.combinations(range(size), 2):
                units.append([_sign(v["ranks"][i] - v["ranks"][j]) for v in values])
        return AgreementUnits("ordinal", units)
    if task == "rate":
        units = [[v["rating"] for v in values] for values in labels_by_item.values()]
        return AgreementUnits("ordinal", units)
    if task == "thumbs":
        units = [[v["up"] for v in values] for values in labels_by_item.values()]
        return AgreementUnits("nominal", units)
    if task == "steps":
        for values in labels_by_item.values():
            steps = zip(*(v["labels"] for v in values), strict=True)
            units.extend(list(step) for step in steps)
        return AgreementUnits("nominal", units)
    return AgreementUnits("nominal", [])


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------------------------- export

EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    # first = default; each format is a record kind the training commands read
    "pairwise": ("preference",),
    "rank": ("ranking", "preference"),
    "rate": ("rating",),
    "thumbs": ("binary",),
    "edit": ("completion", "preference", "edit"),
    "chat": ("preference", "conversation"),
    "steps": ("steps",),
}


def as_text(value: Any) -> Text:
    """A stored text (str or list of message dicts) as a record text."""
    if isinstance(value, str):
        return value
    return tuple(Message(m["role"], m["content"]) for m in value)


def _reply(text: str) -> tuple[Message, ...]:
    return (Message("assistant", text),)


def export_records(
    task: str,
    fmt: str,
    prompt: Any,
    responses: Sequence[str],
    value: dict[str, Any],
    chat_turn: dict[str, Any] | None = None,
    answer: str | None = None,
) -> Iterator[Record]:
    """The data records one stored label gives in export format ``fmt``.

    ``chat_turn`` (chat only) holds the turn's ``messages`` and ``candidates``; ``answer``
    (steps only) the problem's known final answer.
    """
    if fmt not in EXPORT_FORMATS[task]:
        choices = ", ".join(EXPORT_FORMATS[task])
        raise LabelError(f"format: {task} campaigns export as {choices}, not {fmt!r}")
    text = as_text(prompt)

    # one format per row (rlhf.data.readers): replies to a conversation are assistant messages
    def reply(response: str) -> Text:
        return response if isinstance(text, str) else _reply(response)

    if task == "pairwise":
        better = value["better"]
        # campaigns refuse identical pairs (rlhf.feedback.campaigns); older ones may hold some
        if comparable(responses[better]) != comparable(responses[1 - better]):
            yield PreferenceRecord(
                text,
                reply(responses[better]),
                reply(responses[1 - better]),
                margin=float(value["level"]),
            )
    elif task == "rank":
        ranking = RankingRecord(text, tuple(map(reply, responses)), tuple(value["ranks"]))
        if fmt == "ranking":
            yield ranking
        else:
            from rlhf.data.convert import ranking_to_pairs

            yield from ranking_to_pairs(ranking)
    elif task == "rate":
        yield RatingRecord(text, reply(responses[0]), float(value["rating"]), RATING_SCALE)
    elif task == "thumbs":
        yield BinaryRecord(text, reply(responses[0]), value["up"])
    elif task == "edit":
        edited, original = value["text"], responses[0]
        if fmt == "completion":
            yield CompletionRecord(text, reply(edited))
        elif comparable(edited) != comparable(original):  # unchanged: no preference
            if fmt == "edit":
                yield EditRecord(text, reply(original), reply(edited))
            else:
                yield PreferenceRecord(text, reply(edited), reply(original))
    elif task == "chat":
        assert chat_turn is not None
        context = as_text(chat_turn["messages"])
        chosen = chat_turn["candidates"][value["chosen"]]
        if fmt == "preference":
            rejected = chat_turn["candidates"][1 - value["chosen"]]
            if comparable(chosen) != comparable(rejected):  # the model may say the same twice
                yield PreferenceRecord(context, _reply(chosen), _reply(rejected))
        else:
            yield ConversationRecord((*context, Message("assistant", chosen)))
    elif task == "steps":
        yield step_record(text, tuple(responses), tuple(value["labels"]), answer)


def model_columns(
    task: str, fmt: str, models: Sequence[str] | None, value: dict[str, Any]
) -> dict[str, Any]:
    """The export columns naming the models behind an item's responses (``models``, one per
    response in the item's order, or a chat campaign's two models, one per candidate reply;
    None: none named): a pairwise label's or a chat turn's ``chosen_model`` and
    ``rejected_model``, a ranking's ``models`` beside its ranks. A rank
    label exported as pairs names none (each pair's models are not kept apart there)."""
    if not models:
        return {}
    if task == "pairwise":
        better = value["better"]
        return {"chosen_model": models[better], "rejected_model": models[1 - better]}
    if task == "rank" and fmt == "ranking":
        return {"models": list(models)}
    if task == "chat" and fmt == "preference":  # a turn's two replies, one from each model
        chosen = value["chosen"]
        return {"chosen_model": models[chosen], "rejected_model": models[1 - chosen]}
    return {}
