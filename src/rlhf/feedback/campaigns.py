"""Campaign sources: JSON Lines of prompts with candidate responses, checked line by line.

A row is what ``rlhf sample`` writes (extra columns are ignored)::

    {"prompt": "Write a haiku about rain.", "responses": ["...", "..."], "gold": 0}

``prompt`` is a string or a list of ``{"role", "content"}`` messages; ``responses`` a list of
strings (``response`` or ``completion``, a single string, also do); ``gold`` the hidden answer
for quality control (docs/feedback.md). A chat campaign's rows need only a ``prompt``: the
annotator's opening message, or ``""`` to let the annotator open.

How rows become items: ``pairwise`` makes one item per pair of a row's responses (a row of
K = 4 gives 6 pairs); ``rank`` one item per row (2..9 responses); ``rate``, ``thumbs`` and
``edit`` one item per response; ``chat`` one item per row. A pairwise or rank row whose
responses repeat one another is refused (:func:`_distinct`); every text is at most
``MAX_TEXT`` characters.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rlhf.data.records import ROLES
from rlhf.feedback.tasks import MAX_RANKED, LabelError, check_gold, check_text, comparable


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
    if task == "pairwise":
        if len(responses) < 2:
            raise SourceError(f"{where}: responses: a pairwise task needs at least 2")
        _distinct(responses, where)
        if gold is not None and len(responses) != 2:
            raise SourceError(f"{where}: gold: give gold only for rows of exactly 2 responses")
        gold = _gold(task, gold, 2, f"{where}: gold")
        for i, j in itertools.combinations(range(len(responses)), 2):
            pair = [responses[i], responses[j]]
            yield NewItem(prompt, pair, gold, {**source, "responses": [i, j]})
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
