"""Records: canonical rows, round trips through JSON Lines, and the DataError format."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

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
    StepRecord,
    TextRecord,
    is_blank,
)

CHAT = (Message("system", "Be brief."), Message("user", "Hi!"))
REPLY = (Message("assistant", "Hello."),)
OTHER = (Message("assistant", "Go away."),)

ONE_OF_EACH = [
    TextRecord("Once upon a time."),
    TextRecord(CHAT + REPLY),
    PromptRecord("2 + 2 ="),
    PromptRecord(CHAT),
    CompletionRecord("2 + 2 =", " 4"),
    CompletionRecord(CHAT, REPLY),
    ConversationRecord(CHAT + REPLY),
    PreferenceRecord("Q?", " yes", " no"),
    PreferenceRecord(CHAT, REPLY, OTHER, margin=2.5),
    RankingRecord("Q?", ("a", "b", "c"), (1, 0, 1)),
    RankingRecord(CHAT, (REPLY, OTHER), (0, 1)),
    RatingRecord("Q?", "a", 4.0, (1.0, 5.0)),
    RatingRecord(CHAT, REPLY, -0.5, (-1.0, 1.0)),
    BinaryRecord("Q?", "a", True),
    BinaryRecord(CHAT, OTHER, False),
    EditRecord("Q?", "teh answer", "the answer"),
    EditRecord(CHAT, OTHER, REPLY),
    StepRecord("Q?", ("a", "b"), (1, None), "12"),
    StepRecord(CHAT, ("a",), (-1,)),
]


def test_every_kind_is_registered_with_its_class():
    assert set(RECORD_TYPES) == {
        "text", "prompt", "completion", "conversation", "preference", "ranking", "rating",
        "binary", "edit", "steps",
    }  # fmt: skip
    for kind, cls in RECORD_TYPES.items():
        assert cls.kind == kind
    assert {type(record).kind for record in ONE_OF_EACH} == set(RECORD_TYPES)


def test_records_are_frozen_and_hashable():
    record = PreferenceRecord(CHAT, REPLY, OTHER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.chosen = "x"  # type: ignore[misc]
    assert hash(record) == hash(PreferenceRecord(CHAT, REPLY, OTHER))


def test_to_dict_uses_trl_column_names_and_message_dicts():
    assert PreferenceRecord(CHAT, REPLY, OTHER).to_dict() == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert PreferenceRecord("Q", "a", "b", margin=1.0).to_dict()["margin"] == 1.0
    assert BinaryRecord("Q", "a", False).to_dict() == {
        "prompt": "Q",
        "completion": "a",
        "label": False,
    }
    assert RatingRecord("Q", "a", 3.0, (1.0, 5.0)).to_dict()["scale"] == [1.0, 5.0]


def test_round_trip_through_jsonl(tmp_path):
    path = tmp_path / "all.jsonl"
    write_records(path, ONE_OF_EACH)
    result = read_records(path)
    assert result.records == ONE_OF_EACH
    assert sum(result.kind_counts.values()) == len(ONE_OF_EACH)
    for record in ONE_OF_EACH:  # and with the kind given
        write_records(path, [record])
        assert read_records(path, record.kind).records == [record]


def test_write_records_survives_lone_surrogates(tmp_path):
    record = CompletionRecord("bad \ud800 text", "ok")
    write_records(tmp_path / "x.jsonl", [record])
    # written as its escape, and read back as the bad row it is (no tokenizer can read it)
    with pytest.raises(DataError, match=r"x.jsonl:1: prompt: not valid Unicode"):
        read_records(tmp_path / "x.jsonl")


def test_is_blank():
    assert is_blank("  \n") and not is_blank(" a")
    assert is_blank(()) and is_blank((Message("assistant", " "),))
    assert not is_blank(REPLY)


def test_data_error_reads_file_line_field_message():
    error = DataError("train.jsonl", 7, "chosen", "empty", reason="empty_response")
    assert str(error) == "train.jsonl:7: chosen: empty"
    assert (error.source, error.line, error.field, error.message, error.reason) == (
        "train.jsonl", 7, "chosen", "empty", "empty_response",
    )  # fmt: skip
    assert isinstance(error, ValueError)
    assert str(DataError("x.json", None, None, "no such file")) == "x.json: no such file"
    assert str(DataError(None, None, "chosen", "empty")) == "chosen: empty"
    moved = DataError(None, None, "chosen", "empty", reason="r").at("f.jsonl", 3)
    assert str(moved) == "f.jsonl:3: chosen: empty" and moved.reason == "r"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.reason == "empty_response"
