"""Campaign sources: JSON Lines of prompts with candidate responses, checked line by line.

A row is what ``rlhf sample`` writes (extra columns are ignored)::

    {"prompt": "Write a haiku about rain.", "responses": ["...", "..."], "gold": 0}

``prompt`` is a string or a list of ``{"role", "content"}`` messages; ``responses`` a list of
strings (``response`` or ``completion``, a single string, also do); ``gold`` the hidden answer
for quality control (docs/feedback.md); ``models`` (pairwise and rank), one name per response,
the checkpoint that wrote it, for model-against-model comparisons: annotators never see it,
the export names the chosen and rejected models, and ``rlhf feedback ratings`` turns the labels
into win rates and Bradley–Terry / Elo ratings per model::

    {"prompt": "Tell a story.", "responses": ["...", "..."], "models": ["round-1", "round-2"]}
 A chat campaign's rows need only a ``prompt``: the
annotator's opening message, or ``""`` to let the annotator open. A steps campaign's rows are
step records as :mod:`rlhf.data.steps` reads them, told apart by their columns as
:mod:`rlhf.data.readers` tells them: ours (``steps``), PRM800K's (``question`` + ``label``) or
Math-Shepherd's (``input`` + ``label``)::

    {"prompt": "2 + 3 * 4?", "steps": ["3 * 4 = 12", "2 + 12 = 14"], "answer": "14"}

How rows become items: ``pairwise`` makes one item per pair of a row's responses (a row of
K = 4 gives 6 pairs); ``rank`` one item per row (2..9 responses); ``rate``, ``thumbs`` and
``edit`` one item per response; ``chat`` one item per row; ``steps`` one item per row, whose
responses are the steps (:mod:`rlhf.feedback.tasks`). A pairwise or rank row whose
responses repeat one another is refused (:func:`_distinct`); every text is at most
``MAX_TEXT`` characters.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rlhf.data.errors import DataError
from rlhf.data.records import ROLES, StepRecord, text_to_json
from rlhf.data.steps import (
    answer_text,
    from_math_shepherd,
    from_prm800k,
    step_labels,
    step_record,
    step_texts,
)
from rlhf.feedback.tasks import (
    MAX_RANKED,
    LabelError,
    as_text,
    check_gold,
    check_text,
    comparable,
)


class SourceError(ValueError):
    """A campaign source row is unusable; the message starts with ``line N: field``."""


@dataclass
class NewItem:
    prompt: Any
    responses: list[str]
    gold: Any = None
    source: dict[str, Any] = field(default_factory=dict)


def _prompt(value: Any, where: str, allow_empty: bool) -> Any:
    if isinstance(value, str):
        if not value.strip() and not allow_empty:
            raise SourceError(f"{where}: empty")
        return value
    if isinstance(value, list) and value:
        for index, message in enumerate(value):
            if not isinstance(message, dict) or set(message) - {"role", "content"}:
                raise SourceError(f"{where}[{index}]: expected a message {{role, content}}")
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise SourceError(
                    f"{where}[{index}]: role must be one of {', '.join(sorted(ROLES))} "
                    "and content a string"
                )
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise SourceError(f"{where}: expected text or a list of messages, got {type(value).__name__}")


def _responses(row: dict[str, Any], where: str) -> list[str]:
    if "responses" in row:
        value = row["responses"]
    elif "response" in row or "completion" in row:
        value = [row.get("response", row.get("completion"))]
    else:
        raise SourceError(f"{where}: responses: missing (a list of candidate responses)")
    if not isinstance(value, list) or not value:
        raise SourceError(f"{where}: responses: expected a non-empty list of strings")
    for index, response in enumerate(value):
        if not isinstance(response, str):
            kind = type(response).__name__
            raise SourceError(f"{where}: responses[{index}]: expected a string, got {kind}")
    return value


def _models(row: dict[str, Any], task: str, n: int, where: str) -> list[str] | None:
    """A row's ``models`` (one checkpoint name per response), checked; None without."""
    value = row.get("models")
    if value is None:
        return None
    if task not in ("pairwise", "rank"):
        raise SourceError(f"{where}: models: only pairwise and rank tasks compare models")
    if not isinstance(value, list) or len(value) != n:
        raise SourceError(f"{where}: models: expected a list of {n} names, one per response")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise SourceError(f"{where}: models[{index}]: expected a model's name")
    return [name.strip() for name in value]


def _distinct(responses: list[str], where: str) -> None:
    """Refuse a row of a comparing task (pairwise, rank) that repeats a response.

    Refused rather than dropped: a repeat usually means the sampling went wrong (greedy
    decoding, a temperature of 0), which whoever made the candidates should hear about; and a
    file stays stored whole or not at all. The CLI, the upload and the server's own sampling
    all come through here, so they answer alike.
    """
    first: dict[str, int] = {}
    for index, response in enumerate(responses):
        earlier = first.setdefault(comparable(response), index)
        if earlier != index:
            raise SourceError(
                f"{where}: responses[{index}]: the same text as responses[{earlier}]; "
                "an annotator cannot prefer a response to itself (remove the repeat)"
            )


def _gold(task: str, value: Any, n: int, where: str) -> Any:
    try:
        return check_gold(task, value, n, where)
    except LabelError as error:
        raise SourceError(str(error)) from None


def items_from_row(task: str, row: Any, line: int) -> Iterator[NewItem]:
    """The items one source row gives (see the module docstring)."""
    where = f"line {line}"
    if not isinstance(row, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if task == "steps":
        yield _steps_item(row, where, line)
        return
    if "prompt" not in row:
        raise SourceError(f"{where}: prompt: missing")
    prompt = _prompt(row["prompt"], f"{where}: prompt", allow_empty=task == "chat")
    source = {"line": line}
    if task == "chat":
        if row.get("gold") is not None:
            raise SourceError(f"{where}: gold: chat tasks take no gold answer")
        yield NewItem(prompt, [], None, source)
        return
    responses = _responses(row, where)
    gold = row.get("gold")
    models = _models(row, task, len(responses), where)
    if models is not None and task == "rank":
        source["models"] = models
    if task == "pairwise":
        if len(responses) < 2:
            raise SourceError(f"{where}: responses: a pairwise task needs at least 2")
        _distinct(responses, where)
        if gold is not None and len(responses) != 2:
            raise SourceError(f"{where}: gold: give gold only for rows of exactly 2 responses")
        gold = _gold(task, gold, 2, f"{where}: gold")
        for i, j in itertools.combinations(range(len(responses)), 2):
            pair = [responses[i], responses[j]]
            origin = {"models": [models[i], models[j]]} if models is not None else {}
            yield NewItem(prompt, pair, gold, {**source, "responses": [i, j], **origin})
    elif task == "rank":
        if not 2 <= len(responses) <= MAX_RANKED:
            raise SourceError(f"{where}: responses: a rank task takes 2 to {MAX_RANKED}")
        _distinct(responses, where)
        yield NewItem(
            prompt, responses, _gold(task, gold, len(responses), f"{where}: gold"), source
        )
    else:  # rate, thumbs, edit: one response per item
        golds = gold if isinstance(gold, list) else [gold] * len(responses)
        if len(golds) != len(responses):
            raise SourceError(f"{where}: gold: one answer per response ({len(responses)})")
        for index, response in enumerate(responses):
            item_gold = _gold(task, golds[index], 1, f"{where}: gold[{index}]")
            yield NewItem(prompt, [response], item_gold, {**source, "responses": [index]})


def _steps_item(row: dict[str, Any], where: str, line: int) -> NewItem:
    """A steps row's item: the prompt, the steps as its responses, the known answer kept in its
    source. Labels the row carries are checked as the data readers check them but neither
    shown nor kept: the campaign asks people for their own."""
    if row.get("gold") is not None:
        raise SourceError(f"{where}: gold: steps tasks take no gold answer")
    try:
        record = _step_record(row, where)
    except DataError as error:  # it names the field, not the line
        raise SourceError(f"{where}: {error}") from None
    source: dict[str, Any] = {"line": line}
    if record.answer is not None:
        source["answer"] = record.answer
    return NewItem(text_to_json(record.prompt), list(record.steps), None, source)


def _step_record(row: dict[str, Any], where: str) -> StepRecord:
    """The step record of a row in any of the layouts :mod:`rlhf.data.steps` reads, in the
    order :mod:`rlhf.data.readers` tries them."""
    if row.get("steps") is not None:
        if "prompt" not in row:
            raise SourceError(f"{where}: prompt: missing")
        # an empty prompt is a record's too: the problem is then in the first step
        prompt = as_text(_prompt(row["prompt"], f"{where}: prompt", allow_empty=True))
        labels, answer = row.get("labels"), row.get("answer")
        return step_record(
            prompt,
            step_texts(row["steps"]),
            None if labels is None else step_labels(labels),
            None if answer is None else answer_text(answer),
        )
    if row.get("question") is not None and row.get("label") is not None:
        return from_prm800k(row["question"], row["label"])
    if row.get("input") is not None and row.get("label") is not None:
        return from_math_shepherd(row["input"], row["label"])
    raise SourceError(
        f"{where}: steps: missing (a steps row is ours {{prompt, steps, [labels, answer]}}, "
        "PRM800K's {question, label} or Math-Shepherd's {input, label})"
    )


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys too), with where it is."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield where, key
            yield from _strings(inner, f"{where}: {key}")
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _strings(inner, f"{where}[{index}]")


def parse_source(task: str, text: str, max_items: int = 100_000) -> list[NewItem]:
    """Every item of a JSON Lines source; the first bad line raises :class:`SourceError`."""
    items: list[NewItem] = []
    # split at newlines only: U+2028 and friends may stand unescaped inside a JSON string
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceError(f"line {line_number}: not JSON ({error.msg})") from None
        for where, value in _strings(row, f"line {line_number}"):
            try:
                check_text(value, where)
            except LabelError as error:
                raise SourceError(str(error)) from None
        items.extend(items_from_row(task, row, line_number))
        if len(items) > max_items:
            raise SourceError(f"line {line_number}: more than {max_items} items in one campaign")
    if not items:
        raise SourceError("the source has no rows")
    return items
