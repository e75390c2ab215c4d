"""Model-against-model campaigns: rows naming each response's model, the export naming the
chosen and rejected models, and `rlhf feedback ratings` turning the labels into ratings."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.eval.ratings import Comparison, comparisons_from_rows
from rlhf.feedback import service
from rlhf.feedback.campaigns import SourceError, parse_source
from rlhf.feedback.db import database_url, make_engine, migrate, session_factory
from rlhf.feedback.service.assignments import next_assignment
from rlhf.feedback.service.labels import submit_label

ROWS = [
    {"prompt": f"Question {i}?", "responses": [f"old answer {i}", f"new answer {i}"],
     "models": ["round-0", "round-1"]}
    for i in range(6)
]  # fmt: skip


def test_rows_name_each_response_s_model():
    row = {"prompt": "Q?", "responses": ["a", "b", "c"], "models": ["m0", "m1", " m2 "]}
    items = parse_source("pairwise", json.dumps(row))
    assert [item.source["models"] for item in items] == [["m0", "m1"], ["m0", "m2"], ["m1", "m2"]]
    (ranked,) = parse_source("rank", json.dumps(row))
    assert ranked.source["models"] == ["m0", "m1", "m2"]
    assert (
        "models" not in parse_source("pairwise", json.dumps(ROWS[0] | {"models": None}))[0].source
    )
    bad = [
        (row | {"models": ["m0", "m1"]}, "pairwise", "line 1: models: expected a list of 3"),
        (row | {"models": ["m0", 3, "m2"]}, "pairwise", r"line 1: models\[1\]"),
        (row | {"models": ["m0", " ", "m2"]}, "rank", r"line 1: models\[1\]"),
        (
            {"prompt": "Q?", "responses": ["a"], "models": ["m0"]},
            "thumbs",
            "only pairwise and rank",
        ),
    ]
    for value, task, message in bad:
        with pytest.raises(SourceError, match=message):
            parse_source(task, json.dumps(value))


def test_comparisons_from_export_rows():
    rows = [
        {"chosen_model": "b", "rejected_model": "a"},
        {"chosen_model": "a", "rejected_model": "a"},  # same model: no comparison
        {"chosen": "x", "rejected": "y"},  # names no models
        {"models": ["a", "b", "c"], "ranks": [1, 0, 1]},
    ]
    assert comparisons_from_rows(rows) == [
        Comparison("b", "a", 1.0),
        Comparison("a", "b", 0.0),  # b ranked better
        Comparison("a", "c", 0.5),  # equal ranks
        Comparison("b", "c", 1.0),
    ]
    with pytest.raises(ValueError, match="row 0: models needs a ranks list"):
        comparisons_from_rows([{"models": ["a", "b"]}])


def test_labels_become_ratings_per_model(tmp_path):
    """A person who always prefers round-1's reply: the export names the models, and the
    ratings put round-1 above round-0 with a perfect record."""
    db = str(tmp_path / "feedback.db")
    engine = make_engine(database_url(db))
    migrate(engine)
    sessions = session_factory(engine)
    items = parse_source("pairwise", "\n".join(json.dumps(row) for row in ROWS))
    with sessions() as session:
        campaign = service.create_campaign(
            session, service.CampaignSpec("versus", "pairwise", "", 1, "text"), items
        )
        user, _ = service.create_user(session, "ann", "annotator")
        while (assignment := next_assignment(session, user, campaign)) is not None:
            shown = [assignment.order.index(k) for k in range(2)]  # display slot of each reply
            choice = 1 if shown[1] == 0 else 8  # round-1's reply (index 1), much better
            submit_label(
                session, user, assignment.id, {"choice": choice, "client_id": uuid.uuid4().hex}
            )
        session.commit()
        rows = list(service.export_rows(session, campaign))
    assert len(rows) == 6
    assert all(r["chosen_model"] == "round-1" and r["rejected_model"] == "round-0" for r in rows)
    assert all(r["chosen"].startswith("new answer") for r in rows)
    result = CliRunner().invoke(
        app, ["feedback", "ratings", "versus", "--db", db, "--anchor", "round-0"]
    )
    assert result.exit_code == 0, result.output
    assert "round-1" in result.output and "1.00 ± 0.00" in result.output
    lines = [line for line in result.output.splitlines() if "round-" in line]
    assert "round-1" in lines[0]  # the stronger model first
    refused = CliRunner().invoke(app, ["feedback", "ratings", "nope", "--db", db])
    assert refused.exit_code == 1 and "no campaign 'nope'" in refused.output
    twice = CliRunner().invoke(app, ["feedback", "ratings", "versus", "1", "--db", db])
    assert twice.exit_code == 1 and "named twice" in twice.output
