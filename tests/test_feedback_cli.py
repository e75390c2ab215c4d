"""`rlhf feedback add-user | create-campaign | export` on a SQLite file, and the sampler that
`rlhf feedback serve --model` gives the app (a real tiny model)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rlhf.cli import app, feedback_sampler
from rlhf.data.readers import read_records

runner = CliRunner()


def rlhf(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_accounts_campaign_and_export_from_the_command_line(tmp_path):
    db = str(tmp_path / "fb.db")
    source = tmp_path / "candidates.jsonl"
    rows = [{"prompt": f"Say {word}.", "responses": [word, word.upper()]} for word in "ab"]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = rlhf("feedback", "add-user", "alice", "--db", db)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[0]
    assert token.startswith("rlhf_")
    assert rlhf("feedback", "add-user", "alice", "--db", db).exit_code == 1  # taken
    result = rlhf("feedback", "add-user", "[/bold]", "--db", db)  # a name is not markup
    assert result.exit_code == 0 and "'[/bold]'" in result.output

    result = rlhf(
        "feedback", "create-campaign", str(source), "--db", db, "--name", "c1",
        "--task", "pairwise", "--k", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 items" in result.output

    from rlhf.feedback.app import create_app

    with TestClient(create_app(db)) as client:  # the annotator labels both items
        headers = {"Authorization": f"Bearer {token}"}
        for n in range(2):
            assignment = client.get("/api/campaigns/1/next", headers=headers).json()["assignment"]
            body = {"client_id": f"cli-test-{n:04d}", "choice": 1}  # A much better
            assert client.post(
                f"/api/assignments/{assignment['id']}/label", json=body, headers=headers
            ).status_code == 200  # fmt: skip

    out = tmp_path / "labels.jsonl"
    result = rlhf("feedback", "export", "c1", "--db", db, "-o", str(out))
    assert result.exit_code == 0, result.output
    records = list(read_records(str(out)))
    assert len(records) == 2 and all(r.kind == "preference" and r.margin == 3.0 for r in records)
    assert rlhf("feedback", "export", "nope", "--db", db, "-o", str(out)).exit_code == 1


def test_a_bad_campaign_file_is_refused_naming_its_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "ok", "responses": ["a", "b"]}\n{"prompt": "x"}\n')
    result = rlhf(
        "feedback", "create-campaign", str(source), "--db", str(tmp_path / "fb.db"),
        "--name", "c", "--task", "rank",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "line 2: responses: missing" in result.output


def test_a_campaign_file_with_identical_responses_is_refused_naming_its_line(tmp_path):
    source = tmp_path / "candidates.jsonl"
    rows = [{"prompt": "ok", "responses": ["a", "b"]}, {"prompt": "x", "responses": ["y", "y"]}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    db = tmp_path / "fb.db"
    result = rlhf(
        "feedback", "create-campaign", str(source), "--db", str(db), "--name", "c",
        "--task", "pairwise",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "line 2: responses[1]: the same text as responses[0]" in result.output
    assert "candidates.jsonl" in result.output


def test_the_served_model_samples_replies_to_text_and_conversations(tiny_model_dir):
    sample = feedback_sampler(str(tiny_model_dir), "float32", "cpu", 8, 1.0, 1.0, seed=0)
    conversation = [{"role": "user", "content": "1+2="}]
    replies = sample(["2+3=", conversation], 2)
    assert [len(r) for r in replies] == [2, 2]
    assert all(isinstance(text, str) for group in replies for text in group)
    # a fresh seed per call: asking again gives new candidates, not the same ones
    assert sample(["2+3="], 4) != sample(["2+3="], 4)


def test_serve_says_what_stops_it_before_serving(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        db = tmp_path / "fb.db"
        result = rlhf("feedback", "serve", "--db", str(db), "--port", port)
        assert result.exit_code == 1
        assert f"cannot listen on 127.0.0.1:{port}" in result.output
        assert not db.exists()  # no admin made whose token nobody saw

    unreachable = "postgresql+psycopg://rlhf@127.0.0.1:1/feedback"
    result = rlhf("feedback", "serve", "--db", unreachable, "--port", "0")
    assert result.exit_code == 1
    assert "cannot open the database" in result.output and "Traceback" not in result.output
    result = rlhf("feedback", "serve", "--db", "postgresql+asyncpg://x@h/db", "--port", "0")
    assert result.exit_code == 1 and "pip install 'rlhf[postgres]'" in result.output


def test_serve_passes_its_body_limit_to_the_app(tmp_path, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from rlhf.cli import app

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda web, **options: served.update(web=web))
    db = str(tmp_path / "feedback.db")
    result = CliRunner().invoke(
        app, ["feedback", "serve", "--db", db, "--port", "0", "--max-body", "2048"]
    )
    assert result.exit_code == 0, result.output
    with TestClient(served["web"]) as client:
        answer = client.post("/api/login", content=b"x" * 4096)
    assert answer.status_code == 413
    assert "2,048 bytes" in answer.text
    refused = CliRunner().invoke(app, ["feedback", "serve", "--max-body", "10"])
    assert refused.exit_code == 2 and "--max-body" in refused.output
