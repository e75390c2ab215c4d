"""The ``steps`` task of the feedback app: people label each step of a solution correct,
incorrect or neutral (PRM800K's interface), and the export is step records `rlhf prm` reads.

Units (label checks, agreement units, export records, campaign rows), then the API on a SQLite
file, the command line, and the pages in Debian's Chromium (tests/test_feedback_e2e.py's live
server and helpers).
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rlhf.cli import app as cli
from rlhf.data.readers import read_records
from rlhf.data.records import Message, StepRecord
from rlhf.feedback.campaigns import SourceError, parse_source
from rlhf.feedback.tasks import (
    EXPORT_FORMATS,
    TASK_TYPES,
    LabelError,
    agreement_units,
    check_gold,
    export_records,
    normalise_label,
    shown_value,
)
from tests import test_feedback_e2e as e2e
from tests.test_feedback_api import Api, serve
from tests.test_feedback_e2e import (
    Live,
    by,
    expect_item,
    history,
    log_in,
    open_campaign,
    serve_live,
)

with contextlib.suppress(ImportError):  # the `browser` fixture skips (or fails under CI) then
    from playwright.sync_api import expect

# the pages in a fresh context each, whose uncaught and console errors must stay none
page_of = e2e.page_of

# ------------------------------------------------------------------------------ the data

OURS = {
    "prompt": "What is 2 + 3 * 4?",
    "steps": ["3 * 4 = 12.", "2 + 12 = 15.", "So the answer is 15.", "Done."],
    "labels": [1, -1, None, None],  # checked on import, neither shown nor kept
    "answer": "14",
}
PRM800K = {
    "question": {"problem": "What is 1 + 1?", "ground_truth_answer": "2"},
    "label": {
        "steps": [
            {"completions": [{"text": "1 + 1 = 2.", "rating": 1}], "chosen_completion": 0},
            {"completions": [{"text": "The answer is 2.", "rating": 1}], "chosen_completion": 0},
            {"completions": [{"text": "Check: 2 - 1 = 1.", "rating": 0}]},
        ],
        "finish_reason": "solution",
    },
}
SHEPHERD = {
    "input": "What is 2 * 3? Step 1: 2 * 3 = 6. ки\nStep 2: The answer is 6. ки",
    "label": "What is 2 * 3? Step 1: 2 * 3 = 6. +\nStep 2: The answer is 6. +",
}
CHAT = {"prompt": [{"role": "user", "content": "Halve 10."}], "steps": ["10 / 2 = 5."]}
ROWS = [OURS, PRM800K, SHEPHERD, CHAT]


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ------------------------------------------------------------------------- label checking


@pytest.mark.parametrize(
    "labels",
    [
        [1, 1, 1, 1],
        [1, 0, 1, 0],
        [-1, None, None, None],  # stopped at the first incorrect step
        [1, 0, -1, None],
        [1, -1, 1, None],  # went on after it, then stopped
        [1, -1, -1, 0],
    ],
)
def test_valid_step_labels_are_stored_as_given(labels: list[int | None]) -> None:
    value = normalise_label("steps", {"labels": labels}, [0, 1, 2, 3])
    assert value == {"labels": labels}
    assert shown_value("steps", value, [0, 1, 2, 3]) == value


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "labels: expected a list of 3 step labels, each 1 (correct), -1 (incorrect), 0 (neutral) or null; got null"),
        ({"labels": [1, 1]}, "labels: expected a list of 3 step labels"),
        ({"labels": "1,1,1"}, "labels: expected a list of 3 step labels"),
        ({"labels": [1, 2, 1]}, "labels[1]: expected 1 (correct), -1 (incorrect), 0 (neutral) or null, got 2"),
        ({"labels": [1, 1, True]}, "labels[2]: expected 1 (correct), -1 (incorrect), 0 (neutral) or null, got true"),
        ({"labels": [1.0, 1, 1]}, "labels[0]: expected"),
        ({"labels": [0.5, 1, 1]}, "labels[0]: expected"),  # soft labels come from rollouts, not people
        ({"labels": ["correct", 1, 1]}, "labels[0]: expected"),
        ({"labels": [None, None, None]}, "labels[0]: step 1 is unlabelled; label every step up to the first incorrect one"),
        ({"labels": [1, None, -1]}, "labels[1]: step 2 is unlabelled; label every step up to the first incorrect one (only the steps after it may stay null)"),
        ({"labels": [1, 0, None]}, "labels[2]: step 3 is unlabelled"),
    ],
)  # fmt: skip
def test_bad_step_labels_name_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelError) as caught:
        normalise_label("steps", payload, [0, 1, 2])
    assert str(caught.value).startswith(message), str(caught.value)


def test_steps_is_a_task_with_its_export_and_no_gold() -> None:
    assert "steps" in TASK_TYPES and EXPORT_FORMATS["steps"] == ("steps",)
    with pytest.raises(LabelError, match="gold: steps tasks take no gold answer"):
        check_gold("steps", [1, 1], 2, "gold")


def test_each_step_is_a_nominal_agreement_unit() -> None:
    units = agreement_units(
        "steps",
        {
            7: [{"labels": [1, -1, None]}, {"labels": [1, 0, 1]}],
            9: [{"labels": [0]}, {"labels": [0]}, {"labels": [-1]}],
        },
    )
    assert units.level == "nominal"
    assert units.units == [[1, 1], [-1, 0], [None, 1], [0, 0, -1]]


# ----------------------------------------------------------------------------------- export


def test_export_is_one_step_record_per_label(tmp_path: Path) -> None:
    labels = {"labels": [1, -1, None]}
    (record,) = export_records("steps", "steps", "Q", ["a", "b", "c"], labels, answer="12")
    assert record == StepRecord("Q", ("a", "b", "c"), (1, -1, None), "12")
    assert record.to_dict() == {
        "prompt": "Q", "steps": ["a", "b", "c"], "labels": [1, -1, None], "answer": "12",
    }  # fmt: skip
    messages = [{"role": "user", "content": "Q"}]
    (chat,) = export_records("steps", "steps", messages, ["a"], {"labels": [0]})
    assert chat == StepRecord((Message("user", "Q"),), ("a",), (0,), None)
    assert "answer" not in chat.to_dict()
    with pytest.raises(LabelError, match="format: steps campaigns export as steps"):
        list(export_records("steps", "preference", "Q", ["a"], {"labels": [1]}))

    # the rows read back, with the extra columns of an export, told from their columns or not
    path = tmp_path / "steps.jsonl"
    rows = [{**r.to_dict(), "campaign": "c", "item": 1, "annotator": "a1"} for r in (record, chat)]
    path.write_text(jsonl(rows))
    for kind in (None, "steps"):
        assert list(read_records(path, kind)) == [record, chat]  # type: ignore[arg-type]


# ------------------------------------------------------------------------ campaign sources


def test_steps_rows_in_every_layout_become_one_item_each() -> None:
    items = parse_source("steps", jsonl(ROWS))
    assert [(item.prompt, item.responses, item.gold, item.source) for item in items] == [
        (OURS["prompt"], OURS["steps"], None, {"line": 1, "answer": "14"}),
        (
            "What is 1 + 1?",
            ["1 + 1 = 2.", "The answer is 2.", "Check: 2 - 1 = 1."],
            None,
            {"line": 2, "answer": "2"},
        ),
        ("What is 2 * 3?", ["Step 1: 2 * 3 = 6.", "Step 2: The answer is 6."], None, {"line": 3}),
        (CHAT["prompt"], CHAT["steps"], None, {"line": 4}),
    ]
    # Math-Shepherd without "Step 1:": the problem is in the first step and the prompt empty
    (item,) = parse_source("steps", jsonl([{"input": "Q? A. ки", "label": "Q? A. +"}]))
    assert (item.prompt, item.responses) == ("", ["Q? A."])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p"}, "line 1: steps: missing (a steps row is ours {prompt, steps, [labels, answer]}, PRM800K's {question, label} or Math-Shepherd's {input, label})"),
        ({"prompt": "p", "responses": ["a"]}, "line 1: steps: missing"),
        ({"steps": ["a"]}, "line 1: prompt: missing"),
        ({"prompt": 3, "steps": ["a"]}, "line 1: prompt: expected text or a list of messages, got int"),
        ({"prompt": "p", "steps": []}, "line 1: steps: no steps"),
        ({"prompt": "p", "steps": "a"}, "line 1: steps: expected a list of steps (text)"),
        ({"prompt": "p", "steps": ["a", " "]}, "line 1: steps[1]: empty step"),
        ({"prompt": "p", "steps": ["a", 2]}, "line 1: steps[1]: expected text, got 2"),
        ({"prompt": "p", "steps": ["a"], "labels": [1, 1]}, "line 1: labels: 2 labels for 1 steps"),
        ({"prompt": "p", "steps": ["a"], "labels": [2]}, "line 1: labels[0]: expected 1 (correct)"),
        ({"prompt": "p", "steps": ["a"], "answer": " "}, "line 1: answer: empty"),
        ({"prompt": "p", "steps": ["a"], "gold": [1]}, "line 1: gold: steps tasks take no gold answer"),
        ({"question": {"problem": 3}, "label": {"steps": []}}, "line 1: question.problem: expected text, got 3"),
        ({"question": {"problem": "p"}, "label": {"steps": [{"completions": [{"text": "a", "rating": 5}]}]}}, "line 1: label.steps[0].completions[0].rating: expected 1 (correct)"),
        ({"input": "no tags", "label": "no tags"}, "line 1: input: no steps"),
        ({"input": "Step 1: a ки", "label": "Step 1: a ?"}, "line 1: label: step 1 ends with '?'"),
        ({"prompt": "p", "steps": ["a\x00"]}, "line 1: steps[0]: contains a NUL character"),
    ],
)  # fmt: skip
def test_bad_steps_rows_name_line_and_field(row: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_source("steps", json.dumps({"prompt": "fine", "steps": ["ok"]}) + "\n" + jsonl([row]))
    expected = message.replace("line 1", "line 2", 1)
    assert str(caught.value).startswith(expected), str(caught.value)


# ----------------------------------------------------------------------------------- the API


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with serve(str(tmp_path / "fb.db")) as api:
        yield api


def label(api: Api, who: Any, assignment: dict[str, Any], labels: Any, expect: int = 200) -> Any:
    return api.label(who, assignment["id"], expect, labels=labels).json()


def test_steps_campaign_through_the_api(api: Api, tmp_path: Path) -> None:
    campaign = api.campaign("steps", ROWS, k=2)
    assert (campaign["task_type"], campaign["items"], campaign["export_formats"]) == (
        "steps", 4, ["steps"],
    )  # fmt: skip
    alice, bob = api.annotator("alice"), api.annotator("bob")

    # the item: the prompt, the steps in their own order, the known answer
    first = api.next(alice, campaign["id"])
    assert first["task_type"] == "steps" and first["answer"] == "14"
    assert first["prompt"] == [
        {"role": "user", "text": OURS["prompt"], "html": "What is 2 + 3 * 4?"}
    ]
    assert [step["text"] for step in first["responses"]] == OURS["steps"]

    # refused labels name the field, and leave the item to be labelled
    for labels, message in [
        ([1, -1, None], "labels: expected a list of 4 step labels"),
        ([1, None, -1, None], "labels[1]: step 2 is unlabelled"),
        ([1, 1, 1, 3], "labels[3]: expected 1 (correct), -1 (incorrect), 0 (neutral) or null"),
    ]:
        detail = label(api, alice, first, labels, expect=422)["detail"]
        assert detail.startswith(message), detail
    assert api.next(alice, campaign["id"])["id"] == first["id"]

    # alice stops at the first incorrect step; bob labels every step
    label(api, alice, first, [1, -1, None, None])
    label(api, bob, api.next(bob, campaign["id"]), [1, -1, -1, 0])
    second = api.next(alice, campaign["id"])
    assert [s["text"] for s in second["responses"]] == [
        "1 + 1 = 2.", "The answer is 2.", "Check: 2 - 1 = 1.",
    ]  # fmt: skip
    label(api, alice, second, [1, 1, 0])
    label(api, bob, api.next(bob, campaign["id"]), [1, 1, 1])
    third = api.next(alice, campaign["id"])
    assert "answer" in third and third["answer"] is None
    label(api, alice, third, [-1, None])
    chat = api.next(alice, campaign["id"])
    assert chat["prompt"][0]["text"] == "Halve 10."
    label(api, alice, chat, [1])
    assert api.next(alice, campaign["id"]) is None

    # alice's history, as she saw it
    mine = api.call("GET", f"/api/me/labels?campaign_id={campaign['id']}", alice, 200).json()
    assert [row["value"] for row in mine] == [
        {"labels": [1]}, {"labels": [-1, None]}, {"labels": [1, 1, 0]},
        {"labels": [1, -1, None, None]},
    ]  # fmt: skip

    # agreement: one nominal unit per step of the items both labelled (a null is missing)
    alpha = api.stats(campaign["id"])["stats"]["alpha"]
    assert (alpha["level"], alpha["units"]) == ("nominal", 7)

    # the export: one step record per label, null where alice stopped
    text = api.export_text(campaign["id"])
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 6
    assert rows[0] == {
        "prompt": OURS["prompt"], "steps": OURS["steps"], "labels": [1, -1, None, None],
        "answer": "14", "campaign": campaign["name"], "item": rows[0]["item"],
        "annotator": f"a{alice.id}",
    }  # fmt: skip
    assert [(row["annotator"], row["labels"]) for row in rows[1:4]] == [
        (f"a{bob.id}", [1, -1, -1, 0]), (f"a{alice.id}", [1, 1, 0]), (f"a{bob.id}", [1, 1, 1]),
    ]  # fmt: skip
    assert rows[5]["prompt"] == CHAT["prompt"] and "answer" not in rows[5]
    assert api.detail_of(
        "GET", f"/api/admin/campaigns/{campaign['id']}/export", api.admin, 422,
        params={"format": "preference"},
    ) == "format: steps campaigns export as steps"  # fmt: skip

    # ... which the readers `rlhf prm` uses read back unchanged
    from rlhf.recipes.prm import true_first_error

    path = tmp_path / "steps.jsonl"
    path.write_text(text)
    records = list(read_records(path))
    assert all(isinstance(record, StepRecord) for record in records)
    assert records[0] == StepRecord(OURS["prompt"], tuple(OURS["steps"]), (1, -1, None, None), "14")
    assert records[5].prompt == (Message("user", "Halve 10."),)
    assert [true_first_error(record.labels) for record in records[:4]] == [
        (True, 1), (True, 1), (True, None), (True, None),
    ]  # fmt: skip
    assert list(read_records(path, "steps")) == records


def test_steps_campaign_refusals(api: Api) -> None:
    body = {"name": "s", "task_type": "steps", "source_jsonl": jsonl([OURS, {"prompt": "p"}])}
    detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
    assert detail.startswith("source: line 2: steps: missing (a steps row is ours"), detail
    body = {"name": "s", "task_type": "steps", "sample": {"prompts_jsonl": '{"prompt": "p"}'}}
    detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
    assert detail.startswith("sample: a steps campaign labels solutions already split"), detail
    assert api.sampler.calls == []


def test_steps_campaign_from_the_command_line(tmp_path: Path) -> None:
    db, source, out = tmp_path / "fb.db", tmp_path / "solutions.jsonl", tmp_path / "labels.jsonl"
    source.write_text(jsonl([PRM800K, SHEPHERD]))
    runner = CliRunner()
    args = ["feedback", "create-campaign", str(source), "--db", str(db), "--name", "prm-v1"]
    result = runner.invoke(cli, [*args, "--task", "steps"])
    assert result.exit_code == 0, result.output
    assert "2 items" in result.output

    with serve(str(db)) as api:
        alice = api.annotator("alice")
        api.label_all(alice, 1, lambda a: {"labels": [1] * len(a["responses"])})

    result = runner.invoke(cli, ["feedback", "export", "prm-v1", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = list(read_records(out))
    assert [(record.steps, record.labels, record.answer) for record in records] == [
        (("1 + 1 = 2.", "The answer is 2.", "Check: 2 - 1 = 1."), (1, 1, 1), "2"),
        (("Step 1: 2 * 3 = 6.", "Step 2: The answer is 6."), (1, 1), None),
    ]


# --------------------------------------------------------------------------------- the pages

PAGE_ROWS = [
    {
        "prompt": "What is 2 + 3 * 4?",
        "steps": ["3 * 4 = 12.", "2 + 12 = 15.", "So the answer is 15.", "Done."],
    },
    {
        "prompt": "What is 1 + 1?",
        "steps": ["1 + 1 = 2.", "Twice 1 is 2.", "The answer is 3."],
        "answer": "2",
    },
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The live server with one steps campaign (page_of serves its pages)."""
    with serve_live(
        tmp_path_factory.mktemp("steps") / "fb.db", {"steps": ("steps", PAGE_ROWS, {})}
    ) as live:
        yield live


def pressed(page: Any, step: int, name: str) -> None:
    """Step ``step`` shows ``name`` chosen and its other two buttons not."""
    for other in ("correct", "incorrect", "neutral"):
        state = "true" if other == name else "false"
        expect(by(page, f"step-{step}-{other}")).to_have_attribute("aria-pressed", state)


def test_annotator_labels_steps_by_mouse_and_keyboard(page_of: Any, live: Live) -> None:
    page = page_of()
    log_in(page, live.alice, "/annotate")
    expect(by(page, f"campaign-{live.campaigns['steps']}")).to_contain_text("steps")
    open_campaign(page, live, "steps")
    expect(by(page, "shortcuts")).to_contain_text(
        "1 or + correct · 2 or - incorrect · 3 or 0 neutral"
    )

    # by mouse: correct, neutral, incorrect, and the last step left unlabelled
    expect_item(page, PAGE_ROWS[0]["prompt"], done=0)
    for i, text in enumerate(PAGE_ROWS[0]["steps"]):
        expect(by(page, f"step-{i}").locator(".text")).to_have_text(text)
    expect(by(page, "answer")).to_have_count(0)
    expect(by(page, "step-0")).to_have_attribute("aria-current", "step")
    by(page, "step-0-correct").click()
    expect(by(page, "step-1")).to_have_attribute("aria-current", "step")
    by(page, "step-1-neutral").click()
    by(page, "step-2-incorrect").click()
    pressed(page, 0, "correct")
    pressed(page, 1, "neutral")
    pressed(page, 2, "incorrect")
    expect(by(page, "step-3-correct")).to_have_attribute("aria-pressed", "false")
    expect(by(page, "step-tally")).to_have_text(
        "3 of 4 steps labelled · step 3 is incorrect: the steps after it may stay unlabelled"
    )
    by(page, "submit").click()

    # by keyboard: 3 k 1 ↓ 2, Enter refused (step 2 unlabelled), 0, Enter
    expect_item(page, PAGE_ROWS[1]["prompt"], done=1)
    expect(by(page, "answer")).to_have_text("Known answer: 2")
    for key in ("3", "k", "1", "ArrowDown", "2"):
        page.keyboard.press(key)
    pressed(page, 0, "correct")
    pressed(page, 2, "incorrect")
    page.keyboard.press("Enter")
    expect(by(page, "error")).to_contain_text("Label step 2: every step up to the first incorrect")
    expect(by(page, "step-1")).to_have_attribute("aria-current", "step")
    page.keyboard.press("0")
    pressed(page, 1, "neutral")
    page.keyboard.press("Enter")
    expect(by(page, "done-message")).to_be_visible()
    expect(history(page)).to_have_text(["steps + 0 −", "steps + 0 − ·"])

    # a reload keeps every label
    page.reload()
    expect(by(page, "campaign-name")).to_have_text("steps")
    expect(by(page, "progress")).to_have_text("done 2 · remaining 0")
    expect(history(page)).to_have_text(["steps + 0 −", "steps + 0 − ·"])

    mine = [r for r in live.export("steps") if r["annotator"] == f"a{live.alice_id}"]
    assert [(row["labels"], row.get("answer")) for row in mine] == [
        ([1, 0, -1, None], None), ([1, 0, -1], "2"),
    ]  # fmt: skip


def test_admin_creates_and_exports_a_steps_campaign(
    page_of: Any, live: Live, tmp_path: Path
) -> None:
    page = page_of()
    log_in(page, live.admin, "/admin")
    by(page, "new-name").fill("shepherd")
    by(page, "new-task").select_option("steps")
    source = {
        "name": "shepherd.jsonl",
        "mimeType": "application/json",
        "buffer": jsonl([SHEPHERD]).encode(),
    }
    by(page, "source-file").set_input_files(source)
    by(page, "create-campaign").click()
    expect(by(page, "toast")).to_have_text("created shepherd: 1 items")
    expect(page.locator("#detail-name")).to_have_text("shepherd · steps")
    campaign_id = next(
        c["id"] for c in live.call("GET", "/api/admin/campaigns").json() if c["name"] == "shepherd"
    )

    item = live.call("GET", f"/api/campaigns/{campaign_id}/next", live.bob).json()["assignment"]
    body = {"client_id": uuid.uuid4().hex, "labels": [1, -1]}
    live.call("POST", f"/api/assignments/{item['id']}/label", live.bob, json=body)

    by(page, f"admin-campaign-{campaign_id}").click()
    expect(by(page, "count-labels")).to_have_text("1")
    expect(by(page, "export-format")).to_have_value("steps")
    with page.expect_download() as download:
        by(page, "export").click()
    export = tmp_path / download.value.suggested_filename
    download.value.save_as(export)
    assert export.name == "shepherd.jsonl"
    (record,) = read_records(export)
    assert record == StepRecord(
        "What is 2 * 3?", ("Step 1: 2 * 3 = 6.", "Step 2: The answer is 6."), (1, -1)
    )
    assert re.fullmatch(r"a\d+", json.loads(export.read_text())["annotator"])
