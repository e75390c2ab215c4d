"""Step records: our rows, PRM800K and Math-Shepherd rows as they are, errors with file:line."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from rlhf.data.errors import DataError
from rlhf.data.readers import read_records, write_records
from rlhf.data.records import RECORD_TYPES, Message, StepRecord


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_one(tmp_path: Path, row: dict, kind: str | None = None) -> StepRecord:
    result = read_records(jsonl(tmp_path / "steps.jsonl", [row]), kind)  # type: ignore[arg-type]
    assert result.kind_counts == {"steps": 1}
    return result.records[0]


def error_of(tmp_path: Path, row: object, kind: str | None = None) -> DataError:
    """The error of ``row`` read as line 2, after a good row."""
    good = {"prompt": "Q", "steps": ["fine"]}
    path = jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as caught:
        read_records(path, kind)  # type: ignore[arg-type]
    assert caught.value.line == 2
    return caught.value


def assert_names_field(
    tmp_path: Path, row: object, field: str, reason: str, message: str | None
) -> None:
    """``row``, read with the kind told from its columns and with ``kind="steps"``, stops the
    load with ``file:2: field: message`` (any non-empty message when ``message`` is None)."""
    for kind in (None, "steps"):
        error = error_of(tmp_path, row, kind)
        assert (error.source, error.field, error.reason) == (
            str(tmp_path / "bad.jsonl"),
            field,
            reason,
        )
        prefix = f"{tmp_path / 'bad.jsonl'}:2: {field}: "
        assert str(error).startswith(prefix) and len(str(error)) > len(prefix)
        if message is not None:
            assert str(error) == prefix + message


# --- ours -----------------------------------------------------------------------------------

OUR_ROWS = [
    (
        {"prompt": "2 + 3 * 4?", "steps": ["3 * 4 = 12", "2 + 12 = 14"], "labels": [1, 1]},
        StepRecord("2 + 3 * 4?", ("3 * 4 = 12", "2 + 12 = 14"), (1, 1)),
    ),
    (
        {"prompt": "Q", "steps": ["a", "b", "c"], "labels": [1, -1, None], "answer": "12"},
        StepRecord("Q", ("a", "b", "c"), (1, -1, None), "12"),
    ),
    (  # no labels: every step unlabelled
        {"prompt": "Q", "steps": ["a", "b"]},
        StepRecord("Q", ("a", "b"), (None, None)),
    ),
    (  # neutral, and integer labels stored as floats (Parquet, pandas)
        {"prompt": "Q", "steps": ["a", "b"], "labels": [0, -1.0], "answer": None},
        StepRecord("Q", ("a", "b"), (0, -1)),
    ),
    (  # a conversational prompt
        {"prompt": [{"role": "user", "content": "Q"}], "steps": ["a"], "labels": [0]},
        StepRecord((Message("user", "Q"),), ("a",), (0,)),
    ),
]


@pytest.mark.parametrize(("row", "record"), OUR_ROWS)
def test_our_step_rows(tmp_path, row, record):
    assert read_one(tmp_path, row) == record
    assert read_one(tmp_path, row, "steps") == record


def test_steps_is_a_registered_kind():
    assert RECORD_TYPES["steps"] is StepRecord and StepRecord.kind == "steps"


def test_to_dict_and_round_trip(tmp_path):
    records = [record for _, record in OUR_ROWS]
    assert records[1].to_dict() == {
        "prompt": "Q",
        "steps": ["a", "b", "c"],
        "labels": [1, -1, None],
        "answer": "12",
    }
    assert "answer" not in records[0].to_dict()  # only when known
    path = tmp_path / "out" / "steps.jsonl"
    write_records(path, records)
    assert read_records(path).records == records
    assert read_records(path, "steps").records == records
    assert json.loads(path.read_text().splitlines()[1]) == records[1].to_dict()


def test_steps_in_csv_cells_and_mapped_columns(tmp_path):
    path = tmp_path / "steps.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["question", "completions", "labels", "answer"])
        writer.writerow(["Q", '["a", "b"]', "[1, null]", "12"])  # the answer stays text
        writer.writerow(["Q", '["a"]', "", ""])  # empty cells: absent
    result = read_records(path, columns={"prompt": "question", "steps": "completions"})
    assert result.records == [
        StepRecord("Q", ("a", "b"), (1, None), "12"),
        StepRecord("Q", ("a",), (None,)),
    ]
    jsonl(path := tmp_path / "mapped.jsonl", [{"question": "Q", "completions": ["a", " "]}])
    with pytest.raises(DataError) as caught:
        read_records(path, columns={"prompt": "question", "steps": "completions"})
    assert str(caught.value) == f"{path}:1: completions[1]: empty step"  # the file's column


BAD_OUR_ROWS = [
    ({"prompt": "Q", "steps": "a"}, "steps", "wrong_type", "expected a list of steps (text), got 'a'"),
    ({"prompt": "Q", "steps": []}, "steps", "empty_response", "no steps"),
    ({"prompt": "Q", "steps": ["a", ""]}, "steps[1]", "empty_response", "empty step"),
    ({"prompt": "Q", "steps": ["a", 3]}, "steps[1]", "wrong_type", "expected text, got 3"),
    ({"prompt": "Q", "steps": ["\ud800"]}, "steps[0]", "not_unicode", None),
    ({"prompt": "Q", "steps": ["a", "b"], "labels": [1]}, "labels", "labels_mismatch",
     "1 labels for 2 steps; give one label a step (null: none)"),
    ({"prompt": "Q", "steps": ["a"], "labels": [1, 1]}, "labels", "labels_mismatch", None),
    ({"prompt": "Q", "steps": ["a"], "labels": []}, "labels", "labels_mismatch", None),
    ({"prompt": "Q", "steps": ["a"], "labels": [True]}, "labels[0]", "wrong_type",
     "expected 1 (correct), -1 (incorrect), 0 (neutral), a soft estimate strictly between 0 and 1 (P(correct)) or null (unlabelled), got true"),
    ({"prompt": "Q", "steps": ["a", "b"], "labels": [1, 2]}, "labels[1]", "wrong_type", None),
    ({"prompt": "Q", "steps": ["a"], "labels": [1.5]}, "labels[0]", "wrong_type", None),
    ({"prompt": "Q", "steps": ["a"], "labels": ["+"]}, "labels[0]", "wrong_type", None),
    ({"prompt": "Q", "steps": ["a"], "labels": 1}, "labels", "wrong_type", None),
    ({"prompt": "Q", "steps": ["a"], "answer": 12}, "answer", "wrong_type", "expected text, got 12"),
    ({"prompt": "Q", "steps": ["a"], "answer": " "}, "answer", "empty_response",
     "empty; leave the answer out (or null) when it is unknown"),
    ({"steps": ["a"]}, "prompt", "missing_field", None),
    ({"prompt": 3, "steps": ["a"]}, "prompt", "wrong_type", None),
]  # fmt: skip


@pytest.mark.parametrize(("row", "field", "reason", "message"), BAD_OUR_ROWS)
def test_a_bad_step_row_names_file_line_field(tmp_path, row, field, reason, message):
    assert_names_field(tmp_path, row, field, reason, message)


def test_kind_steps_on_another_row_names_the_missing_field(tmp_path):
    error = error_of(tmp_path, {"prompt": "Q", "completion": "a"}, "steps")
    assert str(error) == (
        f"{tmp_path / 'bad.jsonl'}:2: steps: missing (a steps row needs prompt, steps; "
        "it has prompt, completion)"
    )
    error = error_of(tmp_path, {"question": "Q", "answer": "a"})  # neither ours nor PRM800K
    assert error.reason == "unknown_format" and "steps + labels" in str(error)


def test_skip_bad_counts_bad_step_rows(tmp_path, caplog):
    rows = [row for row, _ in OUR_ROWS] + [row for row, *_ in BAD_OUR_ROWS]
    path = jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="rlhf.data"):
        result = read_records(path, skip_bad=True)
    assert result.records == [record for _, record in OUR_ROWS]
    assert result.skipped == {"wrong_type": 9, "empty_response": 3, "labels_mismatch": 3, "not_unicode": 1, "missing_field": 1}  # fmt: skip
    assert result.errors[0].line == len(OUR_ROWS) + 1
    assert "skipped 17 bad rows" in caplog.text


# --- PRM800K --------------------------------------------------------------------------------


def completion(text: str, rating: int | None, flagged: bool | None = None) -> dict:
    return {"text": text, "rating": rating, "flagged": flagged}


def prm800k_row(steps: list[dict], finish_reason: str = "found_error") -> dict:
    """A row as github.com/openai/prm800k's data/*.jsonl hold them (its README's example, cut)."""
    return {
        "labeler": "340d89bc-f5b7-45e9-b272-909ba68ee363",
        "timestamp": "2023-01-22T04:34:27.052924",
        "generation": 9,
        "is_quality_control_question": False,
        "is_initial_screening_question": False,
        "question": {
            "problem": "What is the greatest common factor of $20 !$ and $200,\\!000$?",
            "ground_truth_solution": "... $2^6 \\cdot 5^4=\\boxed{40,\\!000}$.",
            "ground_truth_answer": "40,\\!000",
            "pre_generated_steps": ["I want to find ...", "One way ..."],
            "pre_generated_answer": "320,000",
            "pre_generated_verifier_score": 0.010779580529581414,
        },
        "label": {"steps": steps, "total_time": 278270, "finish_reason": finish_reason},
    }


def step(completions: list[dict] | None, chosen: int | None, human: dict | None = None) -> dict:
    return {"completions": completions, "human_completion": human, "chosen_completion": chosen}


PRM800K_STEPS = [
    step([completion("I want to find the largest ...", 0)], 0),
    step([completion("Factor both numbers.", 1), completion("Guess.", -1)], 0),
    # phase 1: every completion rated -1, the labeller wrote the step (rated null: counts +1)
    step(
        [completion("$200,\\!000 = 2^9 5^4$.", -1), completion("Wrong too.", -1)],
        None,
        {"text": "$200,\\!000 = 2^6 5^5$.", "rating": None, "source": "human", "flagged": False},
    ),
    step([completion("An unrated step.", None)], 0),
    # the last step: the first error ends the labelling, no completion chosen
    step([completion("So the answer is $320,\\!000$.", -1), completion("Alt.", 0, False)], None),
]


def test_prm800k_rows_read_as_they_are(tmp_path):
    expected = StepRecord(
        "What is the greatest common factor of $20 !$ and $200,\\!000$?",
        (
            "I want to find the largest ...",
            "Factor both numbers.",
            "$200,\\!000 = 2^6 5^5$.",
            "An unrated step.",
            "So the answer is $320,\\!000$.",
        ),
        (0, 1, 1, None, -1),
        "40,\\!000",
    )
    assert read_one(tmp_path, prm800k_row(PRM800K_STEPS)) == expected
    assert read_one(tmp_path, prm800k_row(PRM800K_STEPS), "steps") == expected


def test_prm800k_choices_of_the_followed_step(tmp_path):
    # a human completion carrying its own rating keeps it
    row = prm800k_row([step([completion("a", -1)], None, completion("mine", 0))])
    assert read_one(tmp_path, row).labels == (0,)
    # a step without any completion ends the solution there (it happens in the data)
    row = prm800k_row(
        [step([completion("a", 1)], 0), step(None, None), step([completion("b", 1)], 0)]
    )
    assert read_one(tmp_path, row).steps == ("a",)
    # a blank or missing ground truth answer: not known
    row = prm800k_row([step([completion("a", 1)], 0)], "solution")
    row["question"]["ground_truth_answer"] = " "
    assert read_one(tmp_path, row) == StepRecord(row["question"]["problem"], ("a",), (1,))
    del row["question"]["ground_truth_answer"]
    assert read_one(tmp_path, row).answer is None


def test_prm800k_parquet_with_nested_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [prm800k_row(PRM800K_STEPS), prm800k_row([step([completion("a", 1)], 3)])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prm800k.parquet")
    result = read_records(tmp_path / "prm800k.parquet", skip_bad=True)
    assert result.records[0].labels == (0, 1, 1, None, -1)
    assert str(result.errors[0]) == (
        f"{tmp_path / 'prm800k.parquet'}:2: label.steps[0].chosen_completion: "
        "3 is not an index of the step's 1 completions"
    )


def prm800k_bad(**changes) -> dict:
    row = prm800k_row([step([completion("a", 1)], 0), step([completion("b", -1)], 0)])
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = row
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return row


BAD_PRM800K_ROWS = [
    (prm800k_bad(question="Q"), "question", "wrong_type",
     "expected a PRM800K question {problem, ground_truth_answer}, got 'Q'"),
    (prm800k_bad(question__problem=None), "question.problem", "missing_field", "missing"),
    (prm800k_bad(question__problem=["P"]), "question.problem", "wrong_type", None),
    (prm800k_bad(question__ground_truth_answer=40), "question.ground_truth_answer", "wrong_type",
     "expected text, got 40"),
    (prm800k_bad(label=[]), "label", "wrong_type", None),
    (prm800k_bad(label__steps=None), "label.steps", "missing_field", "missing"),
    (prm800k_bad(label__steps=[]), "label.steps", "empty_response", "no steps"),
    (prm800k_bad(label__steps=[step(None, None)]), "label.steps", "empty_response", "no steps"),
    (prm800k_bad(label__steps__1="b"), "label.steps[1]", "wrong_type", None),
    (prm800k_bad(label__steps__1__completions="b"), "label.steps[1].completions", "wrong_type",
     None),
    (prm800k_bad(label__steps__1__chosen_completion=1), "label.steps[1].chosen_completion",
     "wrong_type", "1 is not an index of the step's 1 completions"),
    (prm800k_bad(label__steps__1__chosen_completion=True), "label.steps[1].chosen_completion",
     "wrong_type", "expected an index or null, got true"),
    (prm800k_bad(label__steps__1__completions__0__rating=2),
     "label.steps[1].completions[0].rating", "wrong_type",
     "expected 1 (correct), -1 (incorrect), 0 (neutral), a soft estimate strictly between 0 and 1 (P(correct)) or null (unlabelled), got 2"),
    (prm800k_bad(label__steps__1__completions__0__rating=False),
     "label.steps[1].completions[0].rating", "wrong_type", None),
    (prm800k_bad(label__steps__1__completions__0__text=""),
     "label.steps[1].completions[0].text", "empty_response", "empty step"),
    (prm800k_bad(label__steps__1__completions__0__text=None),
     "label.steps[1].completions[0].text", "missing_field", "missing"),
    (prm800k_bad(label__steps__1__completions__0=7), "label.steps[1].completions[0]",
     "wrong_type", "expected a completion {text, rating}, got 7"),
    (prm800k_bad(label__steps__1__chosen_completion=None, label__steps__1__human_completion={}),
     "label.steps[1].human_completion.text", "missing_field", "missing"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "field", "reason", "message"), BAD_PRM800K_ROWS)
def test_a_bad_prm800k_row_names_file_line_field(tmp_path, row, field, reason, message):
    assert_names_field(tmp_path, row, field, reason, message)


# --- Math-Shepherd --------------------------------------------------------------------------

DUCKS = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' "
    "market?"
)
DUCK_STEPS = (
    "Step 1: Janet's ducks lay 16 eggs per day.",
    "Step 2: She eats three for breakfast every morning, so she has 16 - 3 = 13 eggs left.",
    "Step 3: She bakes muffins for her friends every day with four eggs, so she has 13 - 4 = 9 "
    "eggs left.",
    "Step 4: She sells the remainder at the farmers' market daily for $2 per fresh duck egg, so "
    "she makes 9 * $2 = $18 every day at the farmers' market. The answer is: 18",
)


def shepherd_row(problem: str, steps: tuple[str, ...], marks: str, tail: str = "") -> dict:
    """A row as huggingface.co/datasets/peiyi9979/Math-Shepherd holds them."""

    def text(tags: str | list[str]) -> str:
        return (
            problem + " " + "\n".join(f"{s} {t}" for s, t in zip(steps, tags, strict=True)) + tail
        )

    return {"input": text(["ки"] * len(steps)), "label": text(marks), "task": "GSM8K"}


def test_math_shepherd_rows_read_as_they_are(tmp_path):
    row = shepherd_row(DUCKS, DUCK_STEPS, "+++-")
    assert row["input"].endswith("The answer is: 18 ки")
    assert (
        row["label"].endswith("The answer is: 18 -") and "eggs per day. +\nStep 2:" in row["label"]
    )
    expected = StepRecord(DUCKS, DUCK_STEPS, (1, 1, 1, -1))
    assert read_one(tmp_path, row) == expected
    assert read_one(tmp_path, row, "steps") == expected


def test_math_shepherd_problem_and_first_step(tmp_path):
    # lower case "step 1:"
    row = shepherd_row("Find x.", ("step 1: x = 2.", "step 2: The answer is: 2"), "+-")
    assert read_one(tmp_path, row) == StepRecord("Find x.", ("step 1: x = 2.", "step 2: The answer is: 2"), (1, -1))  # fmt: skip
    # no "Step 1:": the first step holds the problem, the prompt is empty
    row = shepherd_row("Find x. x = 2.", ("So x is 2. The answer is: 2",), "+")
    assert read_one(tmp_path, row) == StepRecord("", ("Find x. x = 2. So x is 2. The answer is: 2",), (1,))  # fmt: skip
    # a tag inside the problem (an annotation slip) is dropped with its mark
    row = {
        "input": "Mr. Rocky ки sells jugs. Step 1: 2 * 3 = 6. ки\nStep 2: 6 + 1 = 7 ки",
        "label": "Mr. Rocky + sells jugs. Step 1: 2 * 3 = 6. -\nStep 2: 6 + 1 = 7 +",
    }
    assert read_one(tmp_path, row) == StepRecord(
        "Mr. Rocky  sells jugs.", ("Step 1: 2 * 3 = 6.", "Step 2: 6 + 1 = 7"), (-1, 1)
    )
    # text after the last tag: a last step without a label
    row = shepherd_row("Q?", ("Step 1: a",), "+", tail="\nStep 2: b")
    assert read_one(tmp_path, row) == StepRecord("Q?", ("Step 1: a", "Step 2: b"), (1, None))


BAD_SHEPHERD_ROWS = [
    (  # the label marks one step fewer than the input tags
        {"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b"},
        "label", "labels_mismatch",
        "does not mark the 2 step tags of input one to one: label should be input with each ки "
        "replaced by + or - (26 characters), it has 24",
    ),
    (  # one step more
        {"input": "Q? Step 1: a ки", "label": "Q? Step 1: a +\nStep 2: b -"},
        "label", "labels_mismatch", None,
    ),
    (  # same length, but no mark where the tag is
        {"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b  "},
        "label", "labels_mismatch", "step 2 ends with ' ' where input has its tag ки; expected + or -",
    ),
    ({"input": "Q? Step 1: a", "label": "Q? Step 1: a"}, "input", "empty_response",
     "no steps: no step tag ки marks where a step ends"),
    ({"input": "Q? Step 1: a ки ки", "label": "Q? Step 1: a + +"}, "input", "empty_response",
     "step 2 is empty"),
    ({"input": ["Q"], "label": "Q"}, "input", "wrong_type", "expected text, got ['Q']"),
    ({"input": "Q? Step 1: a ки", "label": 1}, "label", "wrong_type", "expected text, got 1"),
    ({"input": "Q? Step 1: a ки", "label": ""}, "label", "empty_response", "empty"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "field", "reason", "message"), BAD_SHEPHERD_ROWS)
def test_a_bad_math_shepherd_row_names_file_line_field(tmp_path, row, field, reason, message):
    assert_names_field(tmp_path, row, field, reason, message)


def test_layouts_mix_in_one_file_and_skip_bad(tmp_path):
    rows = [
        OUR_ROWS[1][0],
        prm800k_row(PRM800K_STEPS),
        shepherd_row(DUCKS, DUCK_STEPS, "+++-"),
        BAD_SHEPHERD_ROWS[0][0],
        BAD_PRM800K_ROWS[0][0],
    ]
    result = read_records(jsonl(tmp_path / "mixed.jsonl", rows), "steps", skip_bad=True)
    assert [len(record.steps) for record in result.records] == [3, 5, 4]
    assert result.skipped == {"labels_mismatch": 1, "wrong_type": 1}
    assert [error.line for error in result.errors] == [4, 5]


def test_soft_labels_are_read_as_estimates(tmp_path):
    path = tmp_path / "soft.jsonl"
    path.write_text('{"prompt": "Q", "steps": ["a", "b"], "labels": [0.25, 1]}\n')
    (record,) = read_records(path).records
    assert record.labels == (0.25, 1)
