"""Fuzzing the readers: whatever a file holds, the only exception is DataError; and every valid
record survives a write/read round trip."""

from __future__ import annotations

import csv
import io
import json
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.data.errors import DataError
from rlhf.data.readers import read_records, write_records
from rlhf.data.records import (
    RECORD_TYPES,
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    TextRecord,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OUR_COLUMNS = [
    "text", "messages", "prompt", "completion", "label", "chosen", "rejected", "margin",
    "responses", "ranks", "response", "score", "rating", "scale", "original", "edited",
    "role", "content",
]  # fmt: skip
KINDS = st.sampled_from([None, *RECORD_TYPES])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["user", "assistant", "system", "tool", "", " ", "[1, 2]", "true"])
)
keys = st.sampled_from(OUR_COLUMNS) | st.text(max_size=8)
message_dicts = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "tool"]),
        "content": st.text(max_size=8),
    }
)
json_values = st.recursive(
    json_scalars | st.lists(message_dicts, max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
texts = st.text(max_size=6) | st.lists(message_dicts, max_size=2)
# values that often fit a field (and sometimes do not), so that rows get deep into validation
NEAR_VALUES = {
    "responses": st.lists(texts, max_size=3),
    "ranks": st.lists(st.integers(-1, 3), max_size=3),
    "scale": st.lists(st.integers(0, 6), max_size=3),
    "label": st.booleans() | st.integers(0, 2),
    **dict.fromkeys(["margin", "score", "rating"], st.integers(-1, 7) | st.floats()),
}
COLUMN_SETS = [
    ("text",), ("messages",), ("prompt",), ("prompt", "completion"),
    ("prompt", "completion", "label"), ("prompt", "chosen", "rejected"), ("chosen", "rejected"),
    ("prompt", "chosen", "rejected", "margin"), ("prompt", "responses", "ranks"),
    ("prompt", "responses"), ("prompt", "response", "score", "scale"),
    ("prompt", "response", "rating"), ("prompt", "original", "edited"),
]  # fmt: skip
near_rows = st.sampled_from(COLUMN_SETS).flatmap(
    lambda columns: st.fixed_dictionaries(
        {name: NEAR_VALUES.get(name, texts) | json_values for name in columns}
    )
)
rows = st.dictionaries(keys, json_values, max_size=6) | near_rows


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def read_only_data_errors(path: Path, kind, skip_bad: bool):
    try:
        return read_records(path, kind, skip_bad=skip_bad, rating_scale=(1, 5))
    except DataError:
        return None


@FUZZ
@given(
    data=st.binary(max_size=300),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet"]),
    skip_bad=st.booleans(),
)
def test_random_bytes(workdir, data, suffix, skip_bad):
    path = workdir / f"bytes{suffix}"
    path.write_bytes(data)
    read_only_data_errors(path, None, skip_bad)


@FUZZ
@given(values=st.lists(json_values, min_size=1, max_size=5), kind=KINDS)
def test_random_json_values(workdir, values, kind):
    lines = workdir / "values.jsonl"
    lines.write_text("".join(json.dumps(value) + "\n" for value in values))
    read_only_data_errors(lines, kind, False)
    result = read_only_data_errors(lines, kind, True)
    assert result is not None  # with skip_bad every row is either a record or counted
    assert len(result.records) + sum(result.skipped.values()) == len(values)
    whole = workdir / "values.json"
    whole.write_text(json.dumps(values[0]))
    read_only_data_errors(whole, kind, True)


@FUZZ
@given(objects=st.lists(rows, min_size=1, max_size=5), kind=KINDS)
def test_random_objects(workdir, objects, kind):
    path = workdir / "objects.json"
    path.write_text(json.dumps(objects))
    result = read_records(path, kind, skip_bad=True, rating_scale=(1, 5))
    assert len(result.records) + sum(result.skipped.values()) == len(objects)
    assert sum(result.kind_counts.values()) == len(result.records)
    for error in result.errors:
        assert str(error).startswith(f"{path}:") and error.line is not None


cells = st.text(alphabet=string.printable, max_size=12) | st.sampled_from(
    ['[{"role": "user", "content": "x"}]', "[1, 0]", "[]", "true", "3.5", "nan", "", '["a", "b"]']
)


@FUZZ
@given(
    header=st.lists(st.sampled_from(OUR_COLUMNS) | st.text(max_size=5), min_size=1, max_size=5),
    body=st.lists(st.lists(cells, max_size=6), max_size=5),
    kind=KINDS,
)
def test_random_csv(workdir, header, body, kind):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(body)
    path = workdir / "random.csv"
    path.write_text(buffer.getvalue())
    read_only_data_errors(path, kind, False)
    read_only_data_errors(path, kind, True)


# --- round trip -----------------------------------------------------------------------------

words = st.text(min_size=1, max_size=12).filter(lambda s: s.strip())
messages = st.lists(
    st.builds(Message, st.sampled_from(["system", "user", "assistant"]), st.text(max_size=8)),
    min_size=1,
    max_size=3,
).map(tuple)
finite = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def records(draw):
    conversational = draw(st.booleans())
    text = messages if conversational else st.text(max_size=12)
    response = (
        messages.filter(lambda ms: any(m.content.strip() for m in ms)) if conversational else words
    )
    kind = draw(st.sampled_from(sorted(RECORD_TYPES)))
    prompt = draw(text)
    if kind == "text":
        return TextRecord(draw(response))
    if kind == "prompt":
        return PromptRecord(prompt)
    if kind == "conversation":
        return ConversationRecord(
            draw(messages.filter(lambda ms: any(m.content.strip() for m in ms)))
        )
    if kind == "completion":
        return CompletionRecord(prompt, draw(response))
    if kind == "binary":
        return BinaryRecord(prompt, draw(response), draw(st.booleans()))
    if kind == "edit":
        return EditRecord(prompt, draw(response), draw(response))
    if kind == "preference":
        chosen, rejected = draw(st.lists(response, min_size=2, max_size=2, unique=True))
        return PreferenceRecord(prompt, chosen, rejected, draw(st.none() | finite))
    if kind == "ranking":
        responses = tuple(draw(st.lists(response, min_size=2, max_size=4)))
        ranks = draw(
            st.lists(st.integers(0, 3), min_size=len(responses), max_size=len(responses)).filter(
                lambda r: len(set(r)) > 1
            )
        )
        return RankingRecord(prompt, responses, tuple(ranks))
    low = draw(finite)
    high = draw(st.floats(low, 2e6).filter(lambda h: h > low))
    return RatingRecord(prompt, draw(response), draw(st.floats(low, high)), (low, high))


@FUZZ
@given(written=st.lists(records(), min_size=1, max_size=6))  # no rows: an error
def test_round_trip(workdir, written):
    path = workdir / "round.jsonl"
    write_records(path, written)
    assert read_records(path).records == written
