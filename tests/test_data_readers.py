"""Readers: every file format, TRL column detection, validation errors with file:line, real data."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from rlhf.data.check import check_data
from rlhf.data.errors import DataError
from rlhf.data.readers import read_records, write_records
from rlhf.data.records import (
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

SHARED = Path(__file__).parents[1].parent / "shared"
HH_TRAIN = SHARED / "data" / "hh-rlhf-harmless" / "train.jsonl"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (the ../shared assets are not beside this checkout)")
    return path


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# --- TRL dataset formats load unchanged ------------------------------------------------------

TRL_ROWS = [
    ({"text": "The sky is blue."}, TextRecord("The sky is blue.")),
    (
        {"messages": [user("Hi"), assistant("Hello")]},
        ConversationRecord((Message("user", "Hi"), Message("assistant", "Hello"))),
    ),
    ({"prompt": "The sky is"}, PromptRecord("The sky is")),
    ({"prompt": [user("Sky?")]}, PromptRecord((Message("user", "Sky?"),))),
    ({"prompt": "The sky is", "completion": " blue."}, CompletionRecord("The sky is", " blue.")),
    (
        {"prompt": [user("Sky?")], "completion": [assistant("Blue.")]},
        CompletionRecord((Message("user", "Sky?"),), (Message("assistant", "Blue."),)),
    ),
    (
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        PreferenceRecord("The sky is", " blue.", " green."),
    ),
    (
        {"prompt": "Q", "chosen": "a", "rejected": "b", "margin": 2},
        PreferenceRecord("Q", "a", "b", 2.0),
    ),
    (  # implicit prompt, standard
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        PreferenceRecord("The sky is ", "blue.", "green."),
    ),
    (  # implicit prompt, conversational
        {
            "chosen": [user("Sky?"), assistant("Blue.")],
            "rejected": [user("Sky?"), assistant("Green.")],
        },
        PreferenceRecord(
            (Message("user", "Sky?"),),
            (Message("assistant", "Blue."),),
            (Message("assistant", "Green."),),
        ),
    ),
    (
        {"prompt": "The sky is", "completion": " green.", "label": False},
        BinaryRecord("The sky is", " green.", False),
    ),
    (
        {"prompt": "Q", "responses": ["a", "b", "c"], "ranks": [2, 0, 1]},
        RankingRecord("Q", ("a", "b", "c"), (2, 0, 1)),
    ),
    (  # no ranks: listed best first
        {"prompt": "Q", "responses": ["a", "b"]},
        RankingRecord("Q", ("a", "b"), (0, 1)),
    ),
    (
        {"prompt": "Q", "response": "a", "score": 4, "scale": [1, 5]},
        RatingRecord("Q", "a", 4.0, (1.0, 5.0)),
    ),
    (
        {"prompt": "Q", "response": "a", "rating": 2, "scale": [1, 5]},
        RatingRecord("Q", "a", 2.0, (1.0, 5.0)),
    ),
    ({"prompt": "Q", "original": "teh", "edited": "the"}, EditRecord("Q", "teh", "the")),
    (  # extra columns are ignored
        {"prompt": "Q", "completion": "a", "id": 7, "source": "web"},
        CompletionRecord("Q", "a"),
    ),
]


@pytest.mark.parametrize(("row", "record"), TRL_ROWS)
def test_trl_rows_load_unchanged(tmp_path, row, record):
    path = jsonl(tmp_path / "data.jsonl", [row])
    assert read_records(path).records == [record]
    assert read_records(path, record.kind).records == [record]


def test_mixed_kinds_in_one_file_are_counted(tmp_path):
    path = jsonl(tmp_path / "mixed.jsonl", [row for row, _ in TRL_ROWS])
    result = read_records(path)
    assert result.records == [record for _, record in TRL_ROWS]
    assert result.kind_counts["preference"] == 4 and result.kind_counts["rating"] == 2
    assert len(result) == len(TRL_ROWS) and list(result) == result.records


def test_columns_map_our_fields_to_the_files(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4", "prompt": "unused"}])
    result = read_records(path, columns={"prompt": "question", "completion": "answer"})
    assert result.records == [CompletionRecord("2+2?", "4")]
    with pytest.raises(DataError) as caught:
        jsonl(path, [{"question": "2+2?", "answer": ""}])
        read_records(path, columns={"prompt": "question", "completion": "answer"})
    assert str(caught.value) == f"{path}:1: answer: empty"  # the file's column is named


def test_gsm8k_loads_through_a_column_mapping():
    path = shared_file(GSM8K_TRAIN)
    result = read_records(path, columns={"prompt": "question", "completion": "answer"}, limit=100)
    assert len(result) == 100 and result.kind_counts == {"completion": 100}
    assert result.records[0].completion.split("#### ")[-1] == "72"


# --- validation -----------------------------------------------------------------------------

BAD_ROWS = [
    ({"prompt": "Q", "chosen": "a"}, "rejected", "missing_field"),
    ({"prompt": "Q", "chosen": None, "rejected": "b"}, "chosen", "missing_field"),
    ({"prompt": 3, "completion": "a"}, "prompt", "wrong_type"),
    ({"prompt": "Q", "chosen": "a", "rejected": "b", "margin": "big"}, "margin", "wrong_type"),
    ({"prompt": "Q", "completion": "a", "label": "yes"}, "label", "wrong_type"),
    ({"prompt": "Q", "completion": "  "}, "completion", "empty_response"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "chosen", "empty_response"),
    ({"text": ""}, "text", "empty_text"),
    ({"messages": []}, "messages", "empty_text"),
    ({"prompt": "Q", "chosen": "a", "rejected": "a"}, "rejected", "chosen_equals_rejected"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unknown_role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_field"),
    ({"messages": ["hi"]}, "messages[0]", "wrong_type"),
    ({"prompt": [user("Q")], "completion": "a"}, "completion", "mixed_formats"),
    ({"prompt": "Q", "responses": ["a"], "ranks": [0]}, "responses", "too_few_responses"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranks": [0]}, "ranks", "ranks_mismatch"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranks": [1, 1]}, "ranks", "ranks_all_tied"),
    ({"prompt": "Q", "responses": ["a", "b"], "ranks": [0, -1]}, "ranks[1]", "wrong_type"),
    ({"prompt": "Q", "responses": ["a", ""]}, "responses[1]", "empty_response"),
    ({"prompt": "Q", "response": "a", "score": 6, "scale": [1, 5]}, "score", "rating_off_scale"),
    ({"prompt": "Q", "response": "a", "rating": 0, "scale": [1, 5]}, "rating", "rating_off_scale"),
    ({"prompt": "Q", "response": "a", "score": 3}, "scale", "missing_scale"),
    ({"prompt": "Q", "response": "a", "score": 3, "scale": [5, 1]}, "scale", "wrong_type"),
    ({"chosen": "a b\n", "rejected": "a b\nc"}, "chosen", "empty_response"),
    ({"question": "Q", "answer": "a"}, None, "unknown_format"),
    ([1, 2], None, "wrong_type"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_ROWS)
def test_a_bad_row_stops_the_load_with_file_line_field(tmp_path, row, field, reason):
    good = {"prompt": "fine", "completion": "row"}
    path = jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DataError) as caught:
        read_records(path)
    error = caught.value
    assert (error.source, error.line, error.field, error.reason) == (str(path), 3, field, reason)
    prefix = f"{path}:3: {field}: " if field else f"{path}:3: "
    assert str(error).startswith(prefix) and len(str(error)) > len(prefix)


def test_explicit_kind_that_does_not_fit_names_the_missing_field(tmp_path):
    path = jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q", "completion": "a"}])
    with pytest.raises(DataError, match=r"sft.jsonl:1: chosen: missing \(a preference row needs"):
        read_records(path, "preference")
    with pytest.raises(DataError, match="unknown kind 'pairs'") as caught:
        read_records(path, "pairs")  # type: ignore[arg-type]
    assert caught.value.reason == "unknown_kind"


def test_rating_scale_argument_applies_when_rows_have_none(tmp_path):
    path = jsonl(tmp_path / "ratings.jsonl", [{"prompt": "Q", "response": "a", "score": 7}])
    assert read_records(path, rating_scale=(0, 10)).records == [
        RatingRecord("Q", "a", 7.0, (0.0, 10.0))
    ]
    with pytest.raises(DataError, match=r"score: 7 is outside the scale \[1, 5\]"):
        read_records(path, rating_scale=(1, 5))
    with pytest.raises(DataError, match="rating_scale"):
        read_records(path, rating_scale=(5, 1))


def test_skip_bad_counts_reasons_and_logs(tmp_path, caplog):
    rows = [{"prompt": "Q", "completion": "a"}] * 3 + [row for row, _, _ in BAD_ROWS]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "{not json\n\n")
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        result = read_records(path, skip_bad=True)
    assert len(result) == 3
    assert sum(result.skipped.values()) == len(BAD_ROWS) + 1
    assert result.skipped["bad_json"] == 1 and result.skipped["missing_field"] == 3
    assert len(result.errors) == 20 and result.errors[0].line == 4
    assert "skipped 27 bad rows" in caplog.text and "missing_field 3" in caplog.text


def test_limit_stops_early(tmp_path):
    path = jsonl(tmp_path / "x.jsonl", [{"text": str(i)} for i in range(10)])
    assert [r.text for r in read_records(path, limit=3).records] == ["0", "1", "2"]


# --- file formats ---------------------------------------------------------------------------

ROWS = [
    {"prompt": "Q1", "chosen": "good", "rejected": "bad"},
    {"prompt": "Q2", "chosen": "fine", "rejected": "poor", "margin": 1.5},
]
RECORDS = [PreferenceRecord("Q1", "good", "bad"), PreferenceRecord("Q2", "fine", "poor", 1.5)]


def test_json_array_data_object_and_jsonl_named_json(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps(ROWS, indent=2))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ROWS}))
    jsonl(tmp_path / "lines.json", ROWS)
    for name in ("array.json", "wrapped.json", "lines.json"):
        assert read_records(tmp_path / name).records == RECORDS, name
    (tmp_path / "bad.json").write_text(json.dumps([ROWS[0], {"prompt": "Q"}, {"chosen": "x"}]))
    with pytest.raises(DataError, match=r"bad.json:3: rejected: missing"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('[{"prompt": "Q",\n "chosen": }]')
    with pytest.raises(DataError, match=r"broken.json:2: invalid JSON") as caught:
        read_records(tmp_path / "broken.json")
    assert caught.value.reason == "bad_json"


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n  \n" + json.dumps({"prompt": 1}) + "\n")
    with pytest.raises(DataError, match=r"gaps.jsonl:4: prompt: expected text"):
        read_records(path)


def test_csv_and_tsv(tmp_path):
    path = tmp_path / "prefs.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "chosen", "rejected", "margin"])
        writer.writerow(["Q1", "good", "bad", ""])  # empty cell: no margin
        writer.writerow(["Q2", "fine", "poor", "1.5"])
        writer.writerow(["Q3\nspans two lines", "x", "x", ""])  # line 4-5
    assert read_records(path, skip_bad=True).records == RECORDS
    with pytest.raises(DataError, match=r"prefs.csv:4: rejected: identical"):
        read_records(path)
    tsv = tmp_path / "binary.tsv"
    tsv.write_text("prompt\tcompletion\tlabel\nQ\ta\ttrue\nQ\tb\t0\n")
    assert read_records(tsv).records == [
        BinaryRecord("Q", "a", True),
        BinaryRecord("Q", "b", False),
    ]


def test_csv_cells_may_hold_json_lists(tmp_path):
    path = tmp_path / "chat.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "responses", "ranks"])
        writer.writerow(
            [json.dumps([user("Hi")]), json.dumps([[assistant("a")], [assistant("b")]]), "[1, 0]"]
        )
        writer.writerow(["[not json, just text]", '["a", "b"]', "[0, 1]"])
        writer.writerow(["Q", '["a", "b"]', "[0]"])
    result = read_records(path, skip_bad=True)
    hi, a, b = Message("user", "Hi"), Message("assistant", "a"), Message("assistant", "b")
    assert result.records == [
        RankingRecord((hi,), ((a,), (b,)), (1, 0)),
        RankingRecord("[not json, just text]", ("a", "b"), (0, 1)),
    ]
    assert result.errors[0].line == 4 and result.errors[0].reason == "ranks_mismatch"


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("prompt,completion\nQ,a\nQ\n")
    with pytest.raises(DataError, match=r"short.csv:3: 1 cells where the header has 2"):
        read_records(path)


def test_parquet_with_conversations(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    rows = [
        {"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("Go")]},
        {"prompt": [user("Hi")], "chosen": [assistant("Hey")], "rejected": [assistant("Hey")]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    result = read_records(tmp_path / "prefs.parquet", skip_bad=True)
    hi = (Message("user", "Hi"),)
    assert result.records == [
        PreferenceRecord(hi, (Message("assistant", "Hello"),), (Message("assistant", "Go"),))
    ]
    assert str(result.errors[0]).startswith(f"{tmp_path / 'prefs.parquet'}:2: rejected:")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet"):
        read_records(tmp_path / "junk.parquet")


def test_datasets_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"margin": None, **ROWS[0]}, ROWS[1]])
    dataset.save_to_disk(str(tmp_path / "single"))
    assert read_records(tmp_path / "single").records == RECORDS
    datasets.DatasetDict({"train": dataset, "test": dataset.select([1])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert read_records(tmp_path / "dict", split="test").records == RECORDS[1:]
    with pytest.raises(DataError, match="no split 'validation'"):
        read_records(tmp_path / "dict", split="validation")


def test_folder_of_data_files_picks_the_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    jsonl(folder / "train-00000-of-00002.jsonl", ROWS[:1])
    jsonl(folder / "train-00001-of-00002.jsonl", ROWS[1:])
    jsonl(folder / "test.jsonl", [{"prompt": "T", "completion": "t"}])
    (folder / "README.md").write_text("# not data")
    assert read_records(folder).records == RECORDS
    assert read_records(folder, split="test").records == [CompletionRecord("T", "t")]
    with pytest.raises(DataError, match="no data files for split 'validation'"):
        read_records(folder, split="validation")
    plain = tmp_path / "plain"
    plain.mkdir()
    jsonl(plain / "prefs.jsonl", ROWS)
    assert read_records(plain).records == RECORDS  # no split in the names: all is train


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or folder") as caught:
        read_records(tmp_path / "absent.jsonl")
    assert caught.value.reason == "not_found"
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_records(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files"):
        read_records(tmp_path / "empty")


# --- real data ------------------------------------------------------------------------------


def test_hh_rlhf_harmless_loads_as_preferences():
    result = read_records(shared_file(HH_TRAIN))
    assert len(result) == 1303 and result.kind_counts == {"preference": 1303}
    assert not result.skipped
    first = result.records[0]
    assert isinstance(first, PreferenceRecord)
    assert first.prompt.startswith("\n\nHuman:") and first.prompt.endswith("\n\nAssistant:")


def test_hh_rlhf_implicit_prompt_is_recovered(tmp_path):
    path = shared_file(HH_TRAIN)
    originals = [json.loads(line) for line in path.read_text().splitlines()[:25]]
    implicit = [
        {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
        for row in originals
    ]
    result = read_records(jsonl(tmp_path / "implicit.jsonl", implicit), "preference")
    for row, record in zip(originals, result.records, strict=True):
        assert record.prompt.endswith("\n\nAssistant:")
        assert record.prompt == row["prompt"]
        assert (record.chosen, record.rejected) == (row["chosen"], row["rejected"])


# --- check_data -----------------------------------------------------------------------------


def test_check_data_reports_counts_errors_and_examples(tmp_path):
    from rich.console import Console

    rows = [*ROWS, {"prompt": "Q", "chosen": "a", "rejected": "a"}, {"text": "[b]plain[/b]"}]
    path = jsonl(tmp_path / "check.jsonl", rows)
    report = check_data(path, examples=3, max_errors=5)
    assert report.kind_counts == {"preference": 2, "text": 1}
    assert report.skipped == {"chosen_equals_rejected": 1}
    assert report.rows == 4 and not report.ok
    assert report.errors[0].line == 3 and len(report.examples) == 3
    assert json.loads(report.examples[0][1]) == ROWS[0]
    console = Console(record=True, width=120)
    report.render(console)
    shown = console.export_text()
    assert "check.jsonl:3: rejected: identical to chosen" in shown
    assert "chosen_equals_rejected" in shown and "preference" in shown
    assert "[b]plain[/b]" in shown  # data is shown as written, never read as rich markup


def test_write_then_check_clean_file(tmp_path):
    write_records(tmp_path / "out" / "clean.jsonl", RECORDS)
    report = check_data(tmp_path / "out" / "clean.jsonl", examples=0)
    assert report.ok and report.rows == 2 and report.examples == []
