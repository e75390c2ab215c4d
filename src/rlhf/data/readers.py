"""Readers: JSON Lines, JSON, Parquet, CSV/TSV and Hugging Face datasets → validated records.

Column names are TRL's dataset formats (https://huggingface.co/docs/trl/dataset_formats), so a
TRL-format file loads unchanged, standard (plain text) or conversational (message lists):

==============  =========================================  ==================
kind            columns                                    record
==============  =========================================  ==================
text            ``text``                                   TextRecord
conversation    ``messages``                               ConversationRecord
prompt          ``prompt``                                 PromptRecord
completion      ``prompt``, ``completion``                 CompletionRecord
binary          ``prompt``, ``completion``, ``label``      BinaryRecord
preference      [``prompt``], ``chosen``, ``rejected``,    PreferenceRecord
                [``margin``]
ranking         ``prompt``, ``responses``, [``ranks``]     RankingRecord
rating          ``prompt``, ``response``, ``score`` (or    RatingRecord
                ``rating``), [``scale``]
edit            ``prompt``, ``original``, ``edited``       EditRecord
steps           ``prompt``, ``steps``, [``labels``],       StepRecord
                [``answer``]
==============  =========================================  ==================

Two published step-labelled layouts also read as they are, as ``steps`` records (see
:mod:`rlhf.data.steps`): PRM800K (``question`` + ``label`` objects) and Math-Shepherd (``input``
+ ``label`` strings with ``ки`` step tags).

Without ``kind`` each row's kind is told from the columns it fills (nulls and empty CSV cells
count as absent), most specific first: chosen or rejected → preference, responses → ranking,
original or edited → edit, response + score → rating, steps → steps, question + label →
PRM800K, input + label → Math-Shepherd, completion + label → binary, completion → completion,
then messages, text, prompt; a row that fits none is an ``unknown_format`` error. With
``kind="steps"`` the layout is told the same way (ours by default). A preference row without a prompt has an *implicit* prompt,
extracted with :func:`rlhf.data.convert.extract_implicit_prompt`; a ranking without ``ranks``
lists its responses best first. Other column names map through ``columns`` (our field → file
column).

Rows are checked with plain type tests (no per-row model objects: JSON Lines read at some
10⁵ rows/s). A bad row stops the load with ``file:line: field: what is wrong``; with
``skip_bad`` it is skipped and counted by reason. Whatever a file holds, the only exception
that escapes is :class:`~rlhf.data.errors.DataError`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rlhf.data.convert import extract_implicit_prompt
from rlhf.data.errors import DataError, describe_value
from rlhf.data.records import (
    RECORD_TYPES,
    ROLES,
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    Record,
    RecordKind,
    Text,
    TextRecord,
    is_blank,
    unicode_problem,
)
from rlhf.data.steps import (
    answer_text,
    from_math_shepherd,
    from_prm800k,
    step_labels,
    step_record,
    step_texts,
)

logger = logging.getLogger("rlhf.data")

MAX_KEPT_ERRORS = 20


@dataclass
class LoadResult:
    """What :func:`read_records` read."""

    records: list[Record] = field(default_factory=list)
    kind_counts: Counter[str] = field(default_factory=Counter)  # records per kind
    skipped: Counter[str] = field(default_factory=Counter)  # skipped rows per DataError.reason
    errors: list[DataError] = field(default_factory=list)  # the first skipped rows' errors
    source: str = ""
    # with keep_rows: each record's row as read (before `columns` renaming), for fields no
    # record kind keeps, e.g. a prompt's ground-truth answer; rows[i] is records[i]'s
    rows: list[Mapping[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


# ---------------------------------------------------------------------------------------------
# Values: one parser per field type, (value, field name, from_text) -> value or _Invalid.
# ``from_text``: the value comes from a CSV cell, so numbers, booleans and lists arrive as text.


class _Invalid(Exception):
    """A bad row; :func:`read_records` adds the file and line."""

    def __init__(self, field: str | None, reason: str, message: str) -> None:
        super().__init__(message)
        self.field, self.reason, self.message = field, reason, message


def _wrong_type(field: str | None, expected: str, value: Any) -> _Invalid:
    return _Invalid(field, "wrong_type", f"expected {expected}, got {describe_value(value)}")


def _unicode(text: str, field: str) -> str:
    """``text``, unless it is not valid Unicode (:func:`~rlhf.data.records.unicode_problem`)."""
    problem = unicode_problem(text)
    if problem is not None:
        raise _Invalid(field, "not_unicode", problem)
    return text


def _from_json_cell(value: str) -> Any:
    """A CSV cell holding JSON (a list of messages, of ranks, ...); the text itself if it is not."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return value


def _messages(value: Any, field: str, from_text: bool) -> tuple[Message, ...]:
    if from_text and isinstance(value, str):
        value = _from_json_cell(value)
    if not isinstance(value, list | tuple):
        raise _wrong_type(field, "a list of messages", value)
    messages = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            raise _wrong_type(where, "a message {role, content}", item)
        role, content = item.get("role"), item.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise _Invalid(f"{where}.{missing}", "missing_field", "missing")
        if not isinstance(role, str) or role not in ROLES:
            raise _Invalid(
                f"{where}.role", "unknown_role",
                f"unknown role {describe_value(role)}; expected one of {', '.join(sorted(ROLES))}",
            )  # fmt: skip
        if not isinstance(content, str):
            raise _wrong_type(f"{where}.content", "text", content)
        messages.append(Message(role, _unicode(content, f"{where}.content")))
    return tuple(messages)


def _text(value: Any, field: str, from_text: bool) -> Text:
    if isinstance(value, str):
        if from_text and value.startswith("["):
            decoded = _from_json_cell(value)
            if isinstance(decoded, list) and decoded and all(isinstance(m, dict) for m in decoded):
                return _messages(decoded, field, False)
        return _unicode(value, field)
    if isinstance(value, list | tuple):
        return _messages(value, field, False)
    raise _wrong_type(field, "text or a list of messages", value)


def _number(value: Any, field: str, from_text: bool) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _wrong_type(field, "a number", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(field, "a number", value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _wrong_type(field, "a finite number", value)
    return number


_TRUTH = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _label(value: Any, field: str, from_text: bool) -> bool:
    if from_text and isinstance(value, str):
        value = _TRUTH.get(value.strip().lower(), value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _wrong_type(field, "true or false", value)


def _list(value: Any, field: str, from_text: bool, what: str) -> list | tuple:
    if from_text and isinstance(value, str):
        value = _from_json_cell(value)
    if not isinstance(value, list | tuple):
        raise _wrong_type(field, what, value)
    return value


def _responses(value: Any, field: str, from_text: bool) -> tuple[Text, ...]:
    items = _list(value, field, from_text, "a list of responses")
    responses = tuple(_text(item, f"{field}[{i}]", False) for i, item in enumerate(items))
    for index, response in enumerate(responses):
        if is_blank(response):
            raise _Invalid(f"{field}[{index}]", "empty_response", "empty response")
    return responses


def _ranks(value: Any, field: str, from_text: bool) -> tuple[int, ...]:
    items = _list(value, field, from_text, "a list of ranks")
    ranks = []
    for index, rank in enumerate(items):
        if isinstance(rank, float) and rank.is_integer():
            rank = int(rank)  # Parquet and pandas store integer lists with gaps as floats
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise _wrong_type(f"{field}[{index}]", "a rank 0, 1, 2, ... (0 = best)", rank)
        ranks.append(rank)
    return tuple(ranks)


def _as_invalid(error: DataError) -> _Invalid:
    return _Invalid(error.field, error.reason, error.message)


def _checked(check: Callable[[Any, str], Any], json_cell: bool) -> Callable[[Any, str, bool], Any]:
    """A field parser from a check of :mod:`rlhf.data.steps`, which raises DataError.
    ``json_cell``: the field holds a list or an object, which a CSV cell holds as JSON."""

    def parse(value: Any, field: str, from_text: bool) -> Any:
        if json_cell and from_text and isinstance(value, str):
            value = _from_json_cell(value)
        try:
            return check(value, field)
        except DataError as error:
            raise _as_invalid(error) from None

    return parse


def _scale(value: Any, field: str, from_text: bool) -> tuple[float, float]:
    items = _list(value, field, from_text, "a scale [low, high]")
    if len(items) == 2:
        low, high = (_number(item, f"{field}[{i}]", False) for i, item in enumerate(items))
        if low < high:
            return low, high
    raise _wrong_type(field, "a scale [low, high] with low < high", items)


# ---------------------------------------------------------------------------------------------
# Kinds: the fields each kind reads and how its record is built from them.


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    parse: Callable[[Any, str, bool], Any]
    required: bool = True
    empty: str | None = None  # the reason a blank value is an error under, if it is one
    aliases: tuple[str, ...] = ()  # other column names read when ``name`` is absent
    text: bool = False  # a Text field: all of a row's Text fields share one format
    many: bool = False  # a tuple of Text


def _response(name: str) -> _Field:
    return _Field(name, _text, empty="empty_response", text=True)


_PROMPT = _Field("prompt", _text, text=True)


def _build_preference(values: dict[str, Any], parser: _RowParser) -> PreferenceRecord:
    prompt, chosen, rejected = values.get("prompt"), values["chosen"], values["rejected"]
    if chosen == rejected:
        raise _Invalid("rejected", "chosen_equals_rejected", "identical to chosen")
    if prompt is None:
        try:
            prompt, chosen, rejected = extract_implicit_prompt(chosen, rejected)
        except DataError as error:
            raise _Invalid(error.field, error.reason, error.message) from None
    return PreferenceRecord(prompt, chosen, rejected, values.get("margin"))


def _build_ranking(values: dict[str, Any], parser: _RowParser) -> RankingRecord:
    responses, ranks = values["responses"], values.get("ranks")
    if len(responses) < 2:
        message = f"a ranking needs two responses or more, got {len(responses)}"
        raise _Invalid("responses", "too_few_responses", message)
    if ranks is None:
        ranks = tuple(range(len(responses)))
    elif len(ranks) != len(responses):
        raise _Invalid(
            "ranks", "ranks_mismatch", f"{len(ranks)} ranks for {len(responses)} responses"
        )
    elif len(set(ranks)) == 1:
        raise _Invalid("ranks", "ranks_all_tied", "all ranks are equal: the ranking orders nothing")
    return RankingRecord(values["prompt"], responses, ranks)


def _build_rating(values: dict[str, Any], parser: _RowParser) -> RatingRecord:
    scale = values.get("scale") or parser.rating_scale
    if scale is None:
        raise _Invalid(
            "scale", "missing_scale",
            "no rating scale: add a 'scale' column [low, high] or pass rating_scale=(low, high)",
        )  # fmt: skip
    score, (low, high) = values["score"], scale
    if not low <= score <= high:
        raise _Invalid(
            "score", "rating_off_scale", f"{score:g} is outside the scale [{low:g}, {high:g}]"
        )
    return RatingRecord(values["prompt"], values["response"], score, scale)


def _converted(convert: Callable[[dict[str, Any]], Record]) -> Callable[..., Record]:
    """A build from a conversion of :mod:`rlhf.data.steps`, which raises DataError."""

    def build(values: dict[str, Any], parser: _RowParser) -> Record:
        try:
            return convert(values)
        except DataError as error:
            raise _as_invalid(error) from None

    return build


# a published layout's fields, checked by its conversion
def _as_is(value: Any, field: str, from_text: bool) -> Any:
    return value


def _json_value(value: Any, field: str, from_text: bool) -> Any:
    return _from_json_cell(value) if from_text and isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class _Kind:
    fields: tuple[_Field, ...]
    build: Callable[[dict[str, Any], _RowParser], Record]


_KINDS: dict[str, _Kind] = {
    "text": _Kind(
        (_Field("text", _text, empty="empty_text", text=True),), lambda v, _: TextRecord(v["text"])
    ),
    "prompt": _Kind((_PROMPT,), lambda v, _: PromptRecord(v["prompt"])),
    "completion": _Kind(
        (_PROMPT, _response("completion")),
        lambda v, _: CompletionRecord(v["prompt"], v["completion"]),
    ),
    "conversation": _Kind(
        (_Field("messages", _messages, empty="empty_text"),),
        lambda v, _: ConversationRecord(v["messages"]),
    ),
    "preference": _Kind(
        (
            _Field("prompt", _text, required=False, text=True),
            _response("chosen"),
            _response("rejected"),
            _Field("margin", _number, required=False),
        ),
        _build_preference,
    ),
    "ranking": _Kind(
        (
            _PROMPT,
            _Field("responses", _responses, text=True, many=True),
            _Field("ranks", _ranks, required=False),
        ),
        _build_ranking,
    ),
    "rating": _Kind(
        (
            _PROMPT,
            _response("response"),
            _Field("score", _number, aliases=("rating",)),
            _Field("scale", _scale, required=False),
        ),
        _build_rating,
    ),
    "binary": _Kind(
        (_PROMPT, _response("completion"), _Field("label", _label)),
        lambda v, _: BinaryRecord(v["prompt"], v["completion"], v["label"]),
    ),
    "edit": _Kind(
        (_PROMPT, _response("original"), _response("edited")),
        lambda v, _: EditRecord(v["prompt"], v["original"], v["edited"]),
    ),
    "steps": _Kind(
        (
            _PROMPT,
            _Field("steps", _checked(step_texts, json_cell=True)),
            _Field("labels", _checked(step_labels, json_cell=True), required=False),
            _Field("answer", _checked(answer_text, json_cell=False), required=False),
        ),
        _converted(
            lambda v: step_record(v["prompt"], v["steps"], v.get("labels"), v.get("answer"))
        ),
    ),
    # published layouts, read as they are (not kinds: each gives `steps` records)
    "PRM800K": _Kind(
        (_Field("question", _json_value), _Field("label", _json_value)),
        _converted(lambda v: from_prm800k(v["question"], v["label"])),
    ),
    "Math-Shepherd": _Kind(
        (_Field("input", _as_is), _Field("label", _as_is)),
        _converted(lambda v: from_math_shepherd(v["input"], v["label"])),
    ),
}
# The layouts step records come in, ours first, told apart by their columns as in _DETECTION.
_STEP_LAYOUTS = (
    ("steps", ("steps",)),
    ("PRM800K", ("question", "label")),
    ("Math-Shepherd", ("input", "label")),
)
# Telling a row's kind from the columns it fills: the first rule whose columns are all present.
_DETECTION: tuple[tuple[str, frozenset[str]], ...] = tuple(
    (kind, frozenset(columns))
    for kind, columns in (
        ("preference", ("chosen",)),
        ("preference", ("rejected",)),
        ("ranking", ("responses",)),
        ("edit", ("edited",)),
        ("edit", ("original",)),
        ("rating", ("response", "score")),
        ("rating", ("response", "rating")),
        *_STEP_LAYOUTS,
        ("binary", ("completion", "label")),
        ("completion", ("completion",)),
        ("conversation", ("messages",)),
        ("text", ("text",)),
        ("prompt", ("prompt",)),
    )
)
# A kind given to the reader that comes in several layouts: its detection rules.
_LAYOUTS: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {
    "steps": tuple((layout, frozenset(columns)) for layout, columns in _STEP_LAYOUTS)
}


def _columns_of(row: Mapping[str, Any]) -> str:
    # backslashreplace: a lone surrogate in a name could not be printed
    names = [
        str(name)[:30].encode("utf-8", "backslashreplace").decode("utf-8")
        for name, value in row.items()
        if value is not None
    ]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "none"


class _RowParser:
    """Turns rows (dicts) into records; one per :func:`read_records` call."""

    def __init__(
        self,
        kind: str | None,
        columns: Mapping[str, str] | None,
        rating_scale: tuple[float, float] | None,
    ) -> None:
        self.kind = kind
        self.rating_scale = rating_scale
        self.columns = dict(columns or {})
        self._rename = {column: name for name, column in self.columns.items()}
        # our field names mapped to another column: a file column of that name is not read
        self._hidden = set(self.columns) - set(self.columns.values())
        self._detected: dict[tuple[str, ...], str] = {}  # columns present -> kind
        # the kind (or layout) every row is read as, or else the rules telling it from the columns
        self._fixed = None if kind is None or kind in _LAYOUTS else kind
        self._rules = _DETECTION if kind is None else _LAYOUTS.get(kind, ())

    def parse(self, row: Any, from_text: bool) -> Record:
        if not isinstance(row, dict):
            raise _wrong_type(None, "an object of named fields", row)
        if self.columns:
            row = {self._rename.get(k, k): v for k, v in row.items() if k not in self._hidden}
        kind = self._fixed or self._detect(row)
        spec = _KINDS[kind]
        values: dict[str, Any] = {}
        aliased: dict[str, str] | None = None
        conversational = False
        for spec_field in spec.fields:
            name, value = spec_field.name, row.get(spec_field.name)
            if value is None and spec_field.aliases:
                for alias in spec_field.aliases:
                    if row.get(alias) is not None:
                        name, value, aliased = alias, row[alias], {spec_field.name: alias}
                        break
            if value is None:
                if spec_field.required:
                    needs = ", ".join(f.name for f in spec.fields if f.required)
                    message = f"missing (a {kind} row needs {needs}; it has {_columns_of(row)})"
                    raise _Invalid(name, "missing_field", message)
                continue
            value = spec_field.parse(value, name, from_text)
            if spec_field.empty and is_blank(value):
                raise _Invalid(name, spec_field.empty, "empty")
            values[spec_field.name] = value
            conversational = conversational or (spec_field.text and not isinstance(value, str))
        if conversational:
            _check_one_format(values, spec.fields)
        try:
            return spec.build(values, self)
        except _Invalid as error:
            if aliased:
                error.field = aliased.get(error.field, error.field)
            raise

    def _detect(self, row: dict[str, Any]) -> str:
        if None in row.values():
            present = tuple(name for name, value in row.items() if value is not None)
        else:
            present = tuple(row)
        kind = self._detected.get(present)
        if kind is None:
            # a given kind's own layout when no other fits: its missing field is then reported
            rules = self._rules
            kind = next((kind for kind, needed in rules if needed.issubset(present)), self.kind)
            if kind is None:
                raise _Invalid(
                    None, "unknown_format",
                    f"cannot tell the kind of row from its columns ({_columns_of(row)}); expected "
                    "TRL columns (text | messages | prompt [+ completion [+ label]] | "
                    "[prompt +] chosen + rejected), ours (responses + ranks, response + score, "
                    "original + edited, steps + labels), PRM800K (question + label) or "
                    "Math-Shepherd (input + label); map others with columns={our_field: "
                    "your_column}",
                )  # fmt: skip
            if len(self._detected) < 1024:  # rows with random keys must not grow it forever
                self._detected[present] = kind
        return kind

    def error(self, invalid: _Invalid, source: str, line: int | None) -> DataError:
        """The located error, naming the file's own column."""
        field_name = invalid.field
        if field_name and self.columns:
            head, bracket, rest = field_name.partition("[")
            field_name = self.columns.get(head, head) + bracket + rest
        return DataError(source, line, field_name, invalid.message, reason=invalid.reason)


def _check_one_format(values: dict[str, Any], fields: tuple[_Field, ...]) -> None:
    """Plain-text and conversational fields do not mix within a row (TRL's rule too)."""
    first: tuple[str, bool] | None = None
    for spec_field in fields:
        if not spec_field.text or spec_field.name not in values:
            continue
        value = values[spec_field.name]
        for index, text in enumerate(value if spec_field.many else (value,)):
            plain = isinstance(text, str)
            if first is None:
                first = (spec_field.name, plain)
            elif plain != first[1]:
                where = f"{spec_field.name}[{index}]" if spec_field.many else spec_field.name
                formats = ("a message list", "plain text")
                message = f"{formats[plain]} while {first[0]} is {formats[first[1]]}"
                raise _Invalid(where, "mixed_formats", message + "; use one format per row")


# ---------------------------------------------------------------------------------------------
# Sources: each yields (line, row) with a row that failed to decode given as an _Invalid.

_Rows = Iterator[tuple[int, Any]]


def _file_error(path: Path | str, message: str, reason: str, line: int | None = None) -> DataError:
    return DataError(str(path), line, None, message, reason=reason)


def _open(path: Path, mode: str, **kwargs: Any) -> Any:
    try:
        return open(path, mode, **kwargs)
    except OSError as error:
        reason = "not_found" if isinstance(error, FileNotFoundError) else "bad_file"
        raise _file_error(path, f"cannot open: {error.strerror or error}", reason) from None


def _bad_json(error: Exception) -> _Invalid:
    if isinstance(error, json.JSONDecodeError):
        return _Invalid(None, "bad_json", f"invalid JSON: {error.msg} (column {error.colno})")
    if isinstance(error, UnicodeError):
        return _Invalid(None, "bad_json", "invalid JSON: not UTF-8 text")
    return _Invalid(None, "bad_json", "invalid JSON: nested too deeply")


_decode_json = json.JSONDecoder().decode  # json.loads without its per-call checks


def _jsonl_rows(path: Path) -> _Rows:
    with _open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, _decode_json(line.decode("utf-8-sig"))
            except (ValueError, RecursionError) as error:
                yield number, _bad_json(error)


def _json_rows(path: Path) -> _Rows:
    with _open(path, "rb") as file:
        data = file.read()
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:
        if getattr(error, "msg", None) == "Extra data":
            # JSON Lines under a .json name, as `datasets.Dataset.to_json` writes them
            yield from _jsonl_rows(path)
            return
        line = getattr(error, "lineno", None)
        raise _file_error(path, _bad_json(error).message, "bad_json", line) from None
    if isinstance(value, dict):
        value = value["data"] if isinstance(value.get("data"), list) else [value]
    if not isinstance(value, list):
        message = f'expected a JSON array of rows or {{"data": [...]}}, got {describe_value(value)}'
        raise _file_error(path, message, "unknown_format")
    yield from enumerate(value, 1)


def _csv_rows(path: Path, delimiter: str) -> _Rows:
    # the default limit (128 KiB a cell) is below some real transcripts; process-wide setting
    csv.field_size_limit(2**31 - 1)
    with _open(path, "r", encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file, delimiter=delimiter)
        try:
            header = next(reader, None)
            end = reader.line_num
            for cells in reader:
                start, end = end + 1, reader.line_num  # a quoted cell may span lines
                if not cells:
                    continue
                if header is None or len(cells) != len(header):
                    message = f"{len(cells)} cells where the header has {len(header or ())}"
                    yield start, _Invalid(None, "bad_csv", message)
                    continue
                # an empty cell is a missing value (pandas writes nulls so)
                yield start, {name: cell or None for name, cell in zip(header, cells, strict=True)}
        except csv.Error as error:
            raise _file_error(
                path, f"unreadable CSV: {error}", "bad_csv", reader.line_num
            ) from None
        except UnicodeError:
            raise _file_error(path, "not UTF-8 text", "bad_file", reader.line_num + 1) from None


def _parquet_rows(path: Path) -> _Rows:
    import pyarrow.parquet as pq

    line = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                line += 1
                yield line, row
    except Exception as error:  # pyarrow raises a zoo of types (ArrowInvalid, OSError, ...)
        where = line + 1 if line else None  # None: the file itself is unreadable
        raise _file_error(path, f"cannot read Parquet: {error}", "bad_file", where) from None


def _dataset_rows(dataset: Any, source: str) -> _Rows:
    line = 0
    try:
        for batch in dataset.iter(batch_size=1024):
            names = list(batch)
            for values in zip(*batch.values(), strict=True):
                line += 1
                yield line, dict(zip(names, values, strict=True))
    except Exception as error:  # whatever `datasets` / pyarrow raise while decoding
        where = line + 1 if line else None
        raise _file_error(source, f"cannot read the dataset: {error}", "bad_file", where) from None


_FILE_READERS: dict[str, tuple[Callable[[Path], _Rows], bool]] = {
    # suffix: (reader, from_text)
    ".jsonl": (_jsonl_rows, False),
    ".ndjson": (_jsonl_rows, False),
    ".json": (_json_rows, False),
    ".parquet": (_parquet_rows, False),
    ".csv": (partial(_csv_rows, delimiter=","), True),
    ".tsv": (partial(_csv_rows, delimiter="\t"), True),
}

# the words `datasets` recognises as each split in data file names
_SPLIT_WORDS = {
    "train": {"train", "training"},
    "validation": {"validation", "valid", "val", "dev"},
    "test": {"test", "testing", "eval", "evaluation"},
}
_ANY_SPLIT_WORD = set().union(*_SPLIT_WORDS.values())


def _file_source(path: Path) -> tuple[str, _Rows, bool]:
    reader = _FILE_READERS.get(path.suffix.lower())
    if reader is None:
        message = (
            f"unsupported file type {path.suffix or '(no suffix)'!r}; expected "
            f"{', '.join(_FILE_READERS)}, a dataset folder or a Hugging Face hub name"
        )
        raise _file_error(path, message, "unknown_format")
    rows, from_text = reader
    return str(path), rows(path), from_text


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``split`` in a folder, named as `datasets` names them (train.jsonl,
    data/train-00000-of-00001.parquet, ...); a folder naming no split is all training data."""
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in _FILE_READERS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise _file_error(folder, f"no data files ({', '.join(_FILE_READERS)})", "not_found")

    def words(path: Path) -> set[str]:
        name = path.relative_to(folder).with_suffix("").as_posix().lower()
        return set(re.split(r"[^a-z]+", name))

    wanted = _SPLIT_WORDS.get(split, {split.lower()})
    chosen = [path for path in files if words(path) & wanted]
    if chosen:
        return chosen
    if split == "train" and not any(words(path) & _ANY_SPLIT_WORD for path in files):
        return files
    names = ", ".join(path.relative_to(folder).as_posix() for path in files[:10])
    message = f"no data files for split {split!r} (found {names})"
    raise DataError(str(folder), None, "split", message, reason="not_found")


def _saved_dataset(folder: Path, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as error:
        raise _file_error(folder, f"cannot load the saved dataset: {error}", "bad_file") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            message = f"no split {split!r} (has {', '.join(loaded)})"
            raise DataError(str(folder), None, "split", message, reason="not_found")
        return loaded[split]
    return loaded


def _hub_dataset(name: str, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, unknown name, missing split, ...
        message = f"not a local file or folder, and the Hugging Face hub cannot give it: {error}"
        raise _file_error(name, message, "not_found") from None


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _sources(source: str, split: str) -> Iterator[tuple[str, _Rows, bool]]:
    """(file name, rows, from_text) for each file of ``source``."""
    path = Path(source)
    if path.is_file():
        yield _file_source(path)
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            yield source, _dataset_rows(_saved_dataset(path, split), source), False
        else:
            for file in _split_files(path, split):
                yield _file_source(file)
    elif _HUB_NAME.fullmatch(source) and path.suffix.lower() not in _FILE_READERS:
        yield source, _dataset_rows(_hub_dataset(source, split), source), False
    else:
        raise _file_error(source, "no such file or folder", "not_found")


def _checked_scale(scale: Any, source: str) -> tuple[float, float] | None:
    if scale is None:
        return None
    try:
        return _scale(list(scale), "rating_scale", False)
    except (_Invalid, TypeError) as error:
        message = error.message if isinstance(error, _Invalid) else "expected (low, high)"
        raise DataError(source, None, "rating_scale", message, reason="wrong_type") from None


# ---------------------------------------------------------------------------------------------


def read_records(
    source: str | os.PathLike[str],
    kind: RecordKind | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    skip_bad: bool = False,
    rating_scale: tuple[float, float] | None = None,
    split: str = "train",
    limit: int | None = None,
    max_errors: int = MAX_KEPT_ERRORS,
    keep_rows: bool = False,
) -> LoadResult:
    """Read and check every row of ``source``.

    ``source``: a .jsonl / .json / .parquet / .csv / .tsv file, a folder saved with
    ``datasets.save_to_disk``, a folder of data files (those of ``split``), or else a Hugging
    Face hub dataset name (``split`` of it). ``kind``: the kind every row must be; ``None``
    tells each row's kind from its columns. ``columns``: our field name → the file's column
    name. ``rating_scale``: ``(low, high)`` for ratings whose rows carry no ``scale``.
    ``limit``: stop after this many records. A bad row raises :class:`DataError`; with
    ``skip_bad`` it is skipped, counted by reason in ``skipped`` (the first ``max_errors``
    errors kept) and a summary is logged to the ``rlhf.data`` logger. A source with no rows at
    all (an empty or blank file, a CSV header alone, ``[]``) raises :class:`DataError`
    (``no_rows``): nothing can be trained on it. ``keep_rows``: keep each record's row as read
    in ``rows`` too.
    """
    name = os.fspath(source)
    if kind is not None and kind not in RECORD_TYPES:
        raise DataError(
            name, None, "kind", f"unknown kind {kind!r}; expected one of {', '.join(RECORD_TYPES)}",
            reason="unknown_kind",
        )  # fmt: skip
    parser = _RowParser(kind, columns, _checked_scale(rating_scale, name))
    result = LoadResult(source=name)
    parse, keep = parser.parse, result.records.append
    has_rows = False
    for file, line, row, from_text in _located_rows(_sources(name, split)):
        has_rows = True
        if limit is not None and len(result.records) >= limit:
            break
        try:
            if isinstance(row, _Invalid):
                raise row
            record = parse(row, from_text)
        except _Invalid as invalid:
            error = parser.error(invalid, file, line)
            if not skip_bad:
                raise error from None
            result.skipped[error.reason] += 1
            if len(result.errors) < max_errors:
                result.errors.append(error)
            continue
        keep(record)
        if keep_rows:
            result.rows.append(row)
        result.kind_counts[record.kind] += 1
    if not has_rows:
        raise DataError(name, None, None, "no rows", reason="no_rows")
    if result.skipped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in result.skipped.most_common())
        logger.warning(
            "%s: skipped %d bad rows (%s); first: %s",
            name, result.skipped.total(), reasons, result.errors[0] if result.errors else "-",
        )  # fmt: skip
    return result


def _located_rows(
    sources: Iterable[tuple[str, _Rows, bool]],
) -> Iterator[tuple[str, int, Any, bool]]:
    for file, rows, from_text in sources:
        for line, row in rows:
            yield file, line, row, from_text


def write_records(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    """Write records as JSON Lines, one canonical ``to_dict()`` row each (readable by
    :func:`read_records`, by TRL and by ``datasets.load_dataset("json", ...)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a lone surrogate (valid in a JSON string, not in UTF-8) is written as its
    # \uXXXX escape rather than failing the whole write; the readers report that row (not_unicode)
    with path.open("w", encoding="utf-8", errors="backslashreplace") as file:
        for record in records:
            file.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
