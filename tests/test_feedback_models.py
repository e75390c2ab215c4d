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


class Named:
    """A served model that signs its replies: "<name>: reply i to <last message>"."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, prompts: list, n: int) -> list[list[str]]:
        out = []
        for prompt in prompts:
            last = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            out.append([f"{self.name}: reply {i} to {last}" for i in range(n)])
        return out


@pytest.fixture
def two_models(tmp_path):
    from fastapi.testclient import TestClient

    from rlhf.feedback.app import create_app
    from tests.test_feedback_api import Api, bearer

    app = create_app(str(tmp_path / "fb.db"), sampler={"old": Named("old"), "new": Named("new")})
    with TestClient(app) as client:
        api = Api(app, client, None, str(tmp_path / "fb.db"))
        api.admin = bearer(app.state.feedback.admin_token)
        yield api


def test_a_chat_campaign_pits_two_served_models(two_models):
    api = two_models
    health = api.call("GET", "/api/health", None, 200).json()
    assert health["models"] == ["old", "new"]
    body = {"name": "old-vs-new", "task_type": "chat", "source_jsonl": '{"prompt": "Hi?"}\n'}
    for models, message in [
        (["old", "old"], "models: two different models"),
        (["old", "gone"], "models: this server does not serve gone (it serves old, new)"),
    ]:
        refused = api.call(
            "POST", "/api/admin/campaigns", api.admin, 422, json=body | {"models": models}
        )
        assert refused.json()["detail"].startswith(message)
    pairwise = body | {"task_type": "pairwise", "models": ["old", "new"]}
    assert "a chat campaign's" in api.call("POST", "/api/admin/campaigns", api.admin, 422,
                                           json=pairwise).json()["detail"]  # fmt: skip
    campaign = api.call("POST", "/api/admin/campaigns", api.admin, 201,
                        json=body | {"models": ["old", "new"]}).json()  # fmt: skip

    person = api.annotator("alice")
    assignment = api.next(person, campaign["id"])
    chosen_models = []
    for turn_index, message in enumerate(["", "And then?"]):
        turn = api.say(person, assignment["id"], message).json()["turn"]
        shown = [c["text"] for c in turn["candidates"]]
        last = "Hi?" if turn_index == 0 else message
        assert sorted(shown) == [f"new: reply 0 to {last}", f"old: reply 0 to {last}"]
        pick = turn_index  # the first shown, then the second: whichever model each is
        chosen_models.append(shown[pick].split(":")[0])
        api.choose(person, assignment["id"], turn_index, pick)
    rows = api.export(campaign["id"], "preference")
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [
        (m, "old" if m == "new" else "new") for m in chosen_models
    ]
    assert [c.model_a for c in comparisons_from_rows(rows)] == chosen_models


def test_a_pairwise_campaign_sampled_from_two_served_models(two_models):
    api = two_models
    prompts = '{"prompt": "Q1?"}\n{"prompt": "Q2?"}\n'
    body = {"name": "sampled", "task_type": "pairwise",
            "sample": {"prompts_jsonl": prompts, "models": ["new", "old"]}}  # fmt: skip
    campaign = api.call("POST", "/api/admin/campaigns", api.admin, 201, json=body).json()
    assert campaign["items"] == 2
    rank = body | {"name": "r", "task_type": "rank"}
    refused = api.call("POST", "/api/admin/campaigns", api.admin, 422, json=rank).json()
    assert refused["detail"] == "sample.models: two models' replies make pairwise items"
    person = api.annotator("bob")
    while (assignment := api.next(person, campaign["id"])) is not None:
        shown = [r["text"] for r in assignment["responses"]]
        new_side = 1 if shown[0].startswith("new") else 8  # 1: A much better, 8: B
        api.label(person, assignment["id"], choice=new_side)
    rows = api.export(campaign["id"])
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [("new", "old")] * 2


def test_serve_names_its_models():
    from rlhf.cli.feedback import served_models

    assert served_models(["runs/sft/model"]) == {"model": "runs/sft/model"}
    assert served_models(["old=runs/r1/model", "new=runs/r2/model"]) == {
        "old": "runs/r1/model", "new": "runs/r2/model",
    }  # fmt: skip
    with pytest.raises(ValueError, match="name each: NAME=PATH"):
        served_models(["runs/a", "runs/b"])
    with pytest.raises(ValueError, match="'old' is named twice"):
        served_models(["old=a", "old=b"])


def test_create_campaign_command_takes_two_models_for_chat(tmp_path):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "Hi?"}\n', encoding="utf-8")
    db = str(tmp_path / "fb.db")
    runner = CliRunner()
    base = ["feedback", "create-campaign", str(source), "--db", db, "--name"]
    done = runner.invoke(app, [*base, "duel", "--task", "chat", "--models", "old,new"])
    assert done.exit_code == 0, done.output
    refused = runner.invoke(app, [*base, "bad", "--task", "pairwise", "--models", "old,new"])
    assert refused.exit_code != 0 and "for a chat campaign" in refused.output
    engine = make_engine(database_url(db))
    with session_factory(engine)() as session:
        from sqlalchemy import select

        from rlhf.feedback.db import Campaign

        campaign = session.scalar(select(Campaign).where(Campaign.name == "duel"))
        assert campaign.settings == {"models": ["old", "new"]}
    engine.dispose()
