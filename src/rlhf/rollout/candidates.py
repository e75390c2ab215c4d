"""Sampling I/O: prompts in, *candidates* out.

A candidates file is what ``rlhf sample`` writes and what feedback collection (the web app,
simulated annotators) reads: JSON Lines, one row per prompt with its K sampled responses, not
yet labelled::

    {"prompt": "What is 47 + 38?\\n",
     "responses": ["47 + 38 = 85", "47 + 38 = 75"],
     "finished": [true, false],
     "logps": [-1.93, -7.41]}

``finished[i]``: response i ended with EOS (False: it was cut at ``max_new_tokens``).
``logps[i]``: log π(response i | prompt) summed over its tokens, at the sampling temperature.
A prompt may be a list of ``{"role", "content"}`` messages; responses are always the
assistant's text. Rows may carry more fields (``rewards`` when a reward scored them, ...);
:func:`read_candidates` keeps them in ``extra``.

Prompts come from any dataset with a ``prompt`` field (prompt-only rows, demonstrations,
preference pairs, candidates files, ...) or from conversations (every turn before the last
assistant turn), or from ``builtin:NAME``; duplicates are dropped, order kept.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data.errors import DataError
from rlhf.data.records import ROLES, ConversationRecord, Message, Record, Text, text_to_json
from rlhf.rollout.types import ANSWER, RolloutBatch


@dataclass(frozen=True)
class CandidateRecord:
    """K unlabelled responses sampled for one prompt."""

    prompt: Text
    responses: tuple[str, ...]  # [K]
    finished: tuple[bool, ...]  # [K] ended with EOS
    logps: tuple[float, ...]  # [K] summed log-probs at the sampling temperature
    extra: Mapping[str, Any] = field(default_factory=dict)  # other fields of the row

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": text_to_json(self.prompt),
            "responses": list(self.responses),
            "finished": list(self.finished),
            "logps": list(self.logps),
            **self.extra,
        }


def prompt_of(record: Record) -> Text:
    """The prompt of a record: its ``prompt`` field, or a conversation's turns before the last
    assistant turn."""
    prompt = getattr(record, "prompt", None)
    if prompt is not None:
        return prompt
    if isinstance(record, ConversationRecord):
        messages = record.messages
        last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
        prompt = messages[:last] if last is not None else messages
        if prompt:
            return prompt
    raise ValueError(f"a {record.kind} record has no prompt to sample from")


def _prompt_rows(
    name: str, columns: Mapping[str, str] | None, keep_rows: bool
) -> tuple[list[Record], list[Mapping[str, Any]]]:
    """The records of a prompt source and, with ``keep_rows``, each one's row as read."""
    from rlhf.data.readers import read_records
    from rlhf.sim.builtin import is_builtin, load_builtin

    if is_builtin(name):
        records = load_builtin(name)
        return records, [record.to_dict() for record in records] if keep_rows else []
    prompt_column = (columns or {}).get("prompt", "prompt")
    try:
        # kind "prompt" reads only the prompt of each row, so any row with one will do
        result = read_records(name, "prompt", columns=columns, keep_rows=keep_rows)
    except DataError as error:
        if error.reason != "missing_field" or error.field != prompt_column:
            raise
        result = read_records(name, columns=columns, keep_rows=keep_rows)  # e.g. conversations
    return result.records, result.rows


def _distinct_prompts(records: Iterable[Record], limit: int | None) -> list[Text]:
    prompts: dict[Text, None] = {}
    for record in records:
        prompts.setdefault(prompt_of(record), None)
        if limit is not None and len(prompts) >= limit:
            break
    return list(prompts)


def load_prompts(
    source: str | os.PathLike[str],
    *,
    columns: Mapping[str, str] | None = None,
    limit: int | None = None,
) -> list[Text]:
    """Distinct prompts of a dataset (file, datasets folder, hub name or ``builtin:NAME``).

    Rows need a ``prompt`` field (whatever else they hold) or ``messages``; a bad row raises
    :class:`~rlhf.data.errors.DataError` naming the file and line.
    """
    name = os.fspath(source)
    records, _ = _prompt_rows(name, columns, keep_rows=False)
    prompts = _distinct_prompts(records, limit)
    if not prompts:
        raise DataError(name, None, None, "no prompts found", reason="missing_field")
    return prompts


def load_prompts_and_answers(
    source: str | os.PathLike[str],
    answer_field: str | None,
    *,
    columns: Mapping[str, str] | None = None,
    limit: int | None = None,
    option: str = "--answer-field",
) -> tuple[list[Text], list[dict[str, Any]] | None]:
    """:func:`load_prompts` and, with ``answer_field``, each prompt's ground truth as
    metadata ``{"answer": ...}`` for a verifiable reward (e.g. ``rule=gsm8k``); None without.

    ``answer_field`` names a column of the source (as the file spells it, whatever
    ``columns`` maps); prompts may be plain text or messages (a ``prompt`` list, or a
    conversation's turns before its last answer). Every prompt must have the field: a
    :class:`ValueError`, naming ``option`` (where the field was given), says which does not.
    """
    name = os.fspath(source)
    if answer_field is None:
        return load_prompts(source, columns=columns, limit=limit), None
    records, rows = _prompt_rows(name, columns, keep_rows=True)
    prompts = _distinct_prompts(records, limit)
    if not prompts:
        raise DataError(name, None, None, "no prompts found", reason="missing_field")
    answers: dict[Text, Any] = {}
    for record, row in zip(records, rows, strict=True):
        if row.get(answer_field) is not None:
            answers.setdefault(prompt_of(record), row[answer_field])
    missing = [p for p in prompts if p not in answers]
    if missing:
        present = ", ".join(sorted(map(str, rows[0]))) if rows else "none"
        raise ValueError(
            f"{option} {answer_field!r}: {len(missing)} of {len(prompts)} prompts of "
            f"{name} have no {answer_field!r} (first: {_preview(missing[0])}; the rows' "
            f"columns: {present})"
        )
    return prompts, [{ANSWER: answers[p]} for p in prompts]


def _preview(prompt: Text, chars: int = 80) -> str:
    text = prompt if isinstance(prompt, str) else " | ".join(m.content for m in prompt)
    return repr(text if len(text) <= chars else text[: chars - 3] + "...")


def candidates_from_rollout(prompts: Sequence[Text], batch: RolloutBatch) -> list[CandidateRecord]:
    """Group a prompt-major rollout into one :class:`CandidateRecord` per prompt."""
    grouped: dict[int, list[int]] = {}
    for row, index in enumerate(batch.prompt_index.tolist()):
        grouped.setdefault(index, []).append(row)
    sequence_logps = batch.sequence_logps.tolist()
    ended = batch.ended_with_eos.tolist()
    return [
        CandidateRecord(
            prompts[index],
            tuple(batch.response_texts[row] for row in rows),
            tuple(bool(ended[row]) for row in rows),
            tuple(round(sequence_logps[row], 6) for row in rows),
        )
        for index, rows in grouped.items()
    ]


def write_candidates(path: str | os.PathLike[str], candidates: Iterable[CandidateRecord]) -> Path:
    """Write candidates as JSON Lines (see the module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", errors="backslashreplace") as file:
        for candidate in candidates:
            file.write(json.dumps(candidate.to_dict(), ensure_ascii=False) + "\n")
    return path


def _prompt(value: Any) -> Text:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(None, None, "prompt", "empty", reason="empty_text")
        return value
    if not isinstance(value, list) or not value:
        raise DataError(None, None, "prompt", "expected text or a list of messages")
    messages = []
    for index, item in enumerate(value):
        where = f"prompt[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise DataError(None, None, where, "expected a message {role, content}")
        if item.get("role") not in ROLES:
            raise DataError(
                None, None, f"{where}.role", f"unknown role {item.get('role')!r}",
                reason="unknown_role",
            )  # fmt: skip
        messages.append(Message(item["role"], item["content"]))
    return tuple(messages)


def _candidate(row: Any) -> CandidateRecord:
    if not isinstance(row, dict):
        raise DataError(None, None, None, "expected an object", reason="wrong_type")
    for name in ("prompt", "responses", "finished", "logps"):
        if row.get(name) is None:
            raise DataError(None, None, name, "missing", reason="missing_field")
    responses, finished, logps = row["responses"], row["finished"], row["logps"]
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError(None, None, "responses", "expected a list of strings", reason="wrong_type")
    if not responses:
        raise DataError(None, None, "responses", "empty", reason="too_few_responses")
    for name, values, ok in (
        ("finished", finished, lambda v: isinstance(v, bool)),
        ("logps", logps, lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    ):
        if not isinstance(values, list) or not all(ok(v) for v in values):
            kind = "true/false values" if name == "finished" else "numbers"
            raise DataError(None, None, name, f"expected a list of {kind}", reason="wrong_type")
        if len(values) != len(responses):
            raise DataError(
                None, None, name,
                f"{len(values)} values for {len(responses)} responses", reason="ranks_mismatch",
            )  # fmt: skip
    if any(math.isnan(v) or v > 0 for v in logps):
        raise DataError(None, None, "logps", "log-probabilities must be <= 0", reason="wrong_type")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "responses", "finished", "logps")}
    return CandidateRecord(
        _prompt(row["prompt"]),
        tuple(responses),
        tuple(finished),
        tuple(float(v) for v in logps),
        extra,
    )


def read_candidates(path: str | os.PathLike[str]) -> list[CandidateRecord]:
    """Read a candidates JSON Lines file; a bad row raises ``DataError`` (``file:line: field``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(str(path), None, None, "no such file", reason="not_found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(
            str(path), None, None, f"cannot read ({error})", reason="bad_file"
        ) from None
    candidates = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise DataError(
                str(path), number, None, f"bad JSON ({error})", reason="bad_json"
            ) from None
        try:
            candidates.append(_candidate(row))
        except DataError as error:
            raise error.at(str(path), number) from None
    return candidates
