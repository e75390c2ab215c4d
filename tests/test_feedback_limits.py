"""Size limits of the feedback app (rlhf.feedback.limits): the request body, refused with a 413
while it is read, and each text field, refused with a 422 naming it (issue 14: an annotator
stored a 20 MB edit; an unauthenticated 200 MB login body was read in full).

The body limit is a property of the ASGI layer, so the first tests talk ASGI to the app the
way a server does, and count how much of the body it takes. None of this depends on the
database, so these tests run on SQLite only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rlhf.cli import app as cli
from rlhf.feedback.app import create_app
from rlhf.feedback.limits import (
    MAX_BODY_BYTES,
    MAX_CAMPAIGN_NAME,
    MAX_GUIDELINES,
    MAX_TEXT,
    MAX_UPLOAD_BYTES,
)

CHUNK = 64 * 1024  # what uvicorn hands over at a time, about


def asgi_post(
    app: Any, path: str, size: int, content_length: int | None = None
) -> tuple[int, dict, int]:
    """POST ``size`` bytes in 64 KiB chunks to the ASGI ``app`` as a server passes a chunked
    upload on (with a Content-Length header if given); the answer's status and JSON, and
    how many body bytes the app took."""
    headers = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }  # fmt: skip
    taken = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        chunk = min(CHUNK, size - taken)
        taken += chunk
        return {"type": "http.request", "body": b" " * chunk, "more_body": taken < size}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # in a thread of its own: another test's Playwright session may hold this thread's loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, app(scope, receive, send)).result()
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return sent[0]["status"], json.loads(body), taken


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return create_app(str(tmp_path / "fb.db"))


def test_a_declared_oversized_body_is_refused_unread(app: Any) -> None:
    # (the test sends less than it declares, so that without the limit it fails, not swaps)
    status, answer, taken = asgi_post(app, "/api/login", 4 * CHUNK, content_length=200 * 2**20)
    assert (status, taken) == (413, 0)
    assert answer == {
        "detail": f"request body: over this server's limit of {MAX_BODY_BYTES:,} bytes"
    }
    # a campaign upload may be larger, but not without end
    upload = "/api/admin/campaigns"
    status, _, taken = asgi_post(app, upload, 4 * CHUNK, content_length=MAX_UPLOAD_BYTES + 1)
    assert (status, taken) == (413, 0)


@pytest.mark.parametrize(
    ("path", "limit"), [("/api/login", MAX_BODY_BYTES), ("/api/admin/campaigns", MAX_UPLOAD_BYTES)]
)
def test_a_chunked_body_is_cut_at_the_limit(app: Any, path: str, limit: int) -> None:
    status, answer, taken = asgi_post(app, path, limit + 8 * CHUNK)
    assert status == 413 and f"limit of {limit:,} bytes" in answer["detail"]
    assert limit < taken <= limit + CHUNK  # read no further than the chunk that passed it


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A served app with limits of 2,000 bytes (100,000 for uploads), and its admin."""
    with TestClient(
        create_app(str(tmp_path / "fb.db"), max_body_bytes=2_000, max_upload_bytes=100_000)
    ) as client:
        yield client, {"Authorization": f"Bearer {client.app.state.feedback.admin_token}"}


def campaign(name: str, rows: int, size: int) -> dict[str, Any]:
    lines = [
        json.dumps({"prompt": f"p{i}", "responses": [f"a{i}" + "x" * size, f"b{i}"]})
        for i in range(rows)
    ]
    return {"name": name, "task_type": "pairwise", "source_jsonl": "\n".join(lines)}


def test_the_limits_are_set_per_server(small: tuple[TestClient, dict[str, str]]) -> None:
    client, admin = small
    response = client.post("/api/login", json={"token": "x" * 3_000})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body: over this server's limit of 2,000 bytes"}
    assert response.headers["x-content-type-options"] == "nosniff"  # the Guard's headers too
    assert client.post("/api/login", json={"token": "x" * 100}).status_code == 401  # under it
    # the campaign upload has the larger limit
    made = client.post("/api/admin/campaigns", json=campaign("c1", 20, 2_000), headers=admin)
    assert made.status_code == 201, made.text
    response = client.post("/api/admin/campaigns", json=campaign("c2", 60, 2_000), headers=admin)
    assert response.status_code == 413 and "100,000 bytes" in response.json()["detail"]
    # other admin requests keep the small one
    response = client.post("/api/admin/users", json={"name": "x" * 3_000}, headers=admin)
    assert response.status_code == 413


# ------------------------------------------------------------------------------ text fields


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(str(tmp_path / "fb.db"))) as client:
        yield client, {"Authorization": f"Bearer {client.app.state.feedback.admin_token}"}


def test_an_edit_over_the_text_limit_is_refused_naming_the_field(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = served
    source = json.dumps({"prompt": "p", "responses": ["a"]})
    body = {"name": "e", "task_type": "edit", "source_jsonl": source}
    campaign_id = client.post("/api/admin/campaigns", json=body, headers=admin).json()["id"]
    made = client.post("/api/admin/users", json={"name": "ann"}, headers=admin).json()
    annotator = {"Authorization": f"Bearer {made['token']}"}
    item = client.get(f"/api/campaigns/{campaign_id}/next", headers=annotator).json()
    url = f"/api/assignments/{item['assignment']['id']}/label"
    label = {"client_id": "edit-000001", "text": "y" * (MAX_TEXT + 1)}
    response = client.post(url, json=label, headers=annotator)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        f"text: {MAX_TEXT + 1:,} characters, over the limit of {MAX_TEXT:,}"
    )
    label = {"client_id": "edit-000002", "text": "y" * MAX_TEXT}
    assert client.post(url, json=label, headers=annotator).status_code == 200


def test_campaign_texts_over_their_limits_are_refused_naming_the_field(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, admin = served
    long = json.dumps({"prompt": "p", "responses": ["a", "b" * (MAX_TEXT + 1)]})
    body = {"name": "c", "task_type": "pairwise", "source_jsonl": long}
    response = client.post("/api/admin/campaigns", json=body, headers=admin)
    assert response.status_code == 422
    assert response.json()["detail"] == (
        f"source: line 1: responses[1]: {MAX_TEXT + 1:,} characters, over the limit of {MAX_TEXT:,}"
    )
    good = json.dumps({"prompt": "p", "responses": ["a", "b"]})
    for field, size in (("name", MAX_CAMPAIGN_NAME), ("guidelines", MAX_GUIDELINES)):
        body = {"name": "c", "task_type": "pairwise", "source_jsonl": good, field: "g" * (size + 1)}
        response = client.post("/api/admin/campaigns", json=body, headers=admin)
        assert response.status_code == 422 and response.json()["detail"].startswith(f"{field}:")


def test_the_command_line_keeps_the_same_limits(tmp_path: Path) -> None:
    source = tmp_path / "candidates.jsonl"
    source.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("g" * (MAX_GUIDELINES + 1))
    db = str(tmp_path / "fb.db")
    runner = CliRunner()
    create = ["feedback", "create-campaign", str(source), "--db", db, "--task", "pairwise"]
    result = runner.invoke(cli, [*create, "--name", "c", "--guidelines", str(guidelines)])
    assert result.exit_code == 1
    assert f"guidelines: {MAX_GUIDELINES + 1:,} characters, over the limit" in result.output
    result = runner.invoke(cli, [*create, "--name", "n" * (MAX_CAMPAIGN_NAME + 1)])
    assert result.exit_code == 1 and f"name: at most {MAX_CAMPAIGN_NAME}" in result.output
    assert runner.invoke(cli, [*create, "--name", "c"]).exit_code == 0
