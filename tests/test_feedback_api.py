"""The feedback web app's JSON API (rlhf.feedback.app), end to end through HTTP.

Every test runs twice: on a SQLite file and on a fresh PostgreSQL database (tests/services.py).
The model is a fake sampler whose replies name the prompt they answer, so a test can tell from
a shown text which response it is.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import text
from starlette.routing import BaseRoute

from rlhf.data.readers import read_records
from rlhf.feedback.api import state as state_module
from rlhf.feedback.app import create_app
from rlhf.feedback.db import SCHEMA_VERSION, SchemaError, database_url, make_engine, utcnow
from rlhf.feedback.service.assignments import ASSIGNMENT_TIMEOUT

# --------------------------------------------------------------------------------- helpers


class FakeSampler:
    """``n`` replies per prompt, "reply i to <last message>"; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], int]] = []
        self._lock = threading.Lock()

    def __call__(self, prompts: list[Any], n: int) -> list[list[str]]:
        with self._lock:
            self.calls.append((prompts, n))
        replies = []
        for prompt in prompts:
            last = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            replies.append([f"reply {i} to {last}" for i in range(n)])
        return replies


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_client_id() -> str:
    return uuid.uuid4().hex


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def rows_of(n: int, responses: int = 2, tag: str = "p") -> list[dict[str, Any]]:
    """``n`` source rows with prompts "<tag> i" and responses "<tag> i / r j"."""
    return [
        {"prompt": f"{tag} {i}", "responses": [f"{tag} {i} / r {j}" for j in range(responses)]}
        for i in range(n)
    ]


def shown_texts(assignment: dict[str, Any]) -> list[str]:
    return [response["text"] for response in assignment["responses"]]


def prompt_text(assignment: dict[str, Any]) -> str:
    return assignment["prompt"][-1]["text"]


@dataclass
class Person:
    id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


Who = Person | dict[str, str] | None


@dataclass
class Api:
    """One app on one database, with its admin, and shortcuts for the common requests."""

    app: Any
    client: TestClient
    sampler: FakeSampler
    db_url: str
    _names: Iterator[int] = field(default_factory=itertools.count)
    _clients: list[TestClient] = field(default_factory=list)

    admin: dict[str, str] = field(default_factory=dict)  # the first admin's Bearer header

    def call(
        self, method: str, url: str, who: Who = None, expect: int | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = who.headers if isinstance(who, Person) else dict(who or {})
        response = self.client.request(method, url, headers=headers, **kwargs)
        if expect is not None:
            assert response.status_code == expect, (method, url, response.text)
        return response

    def detail_of(self, method: str, url: str, who: Who, expect: int, **kwargs: Any) -> str:
        return self.call(method, url, who, expect, **kwargs).json()["detail"]

    def annotator(self, name: str | None = None, role: str = "annotator") -> Person:
        name = name or f"ann{next(self._names)}"
        body = {"name": name, "role": role}
        made = self.call("POST", "/api/admin/users", self.admin, 201, json=body).json()
        return Person(made["id"], name, made["token"])

    def campaign(self, task: str, rows: list[Any], k: int = 1, **extra: Any) -> dict[str, Any]:
        body = {
            "name": f"{task}-{next(self._names)}",
            "task_type": task,
            "k": k,
            "source_jsonl": jsonl(rows),
            **extra,
        }
        return self.call("POST", "/api/admin/campaigns", self.admin, 201, json=body).json()

    def next(self, who: Who, campaign_id: int) -> dict[str, Any] | None:
        return self.call("GET", f"/api/campaigns/{campaign_id}/next", who, 200).json()["assignment"]

    def label(
        self, who: Who, assignment_id: int, expect: int | None = 200, client_id: str = "", **value
    ) -> httpx.Response:
        body = {"client_id": client_id or new_client_id(), **value}
        return self.call("POST", f"/api/assignments/{assignment_id}/label", who, expect, json=body)

    def label_all(
        self, who: Who, campaign_id: int, value: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Ask for work and label it with ``value(assignment)`` until none is left."""
        done = []
        while (assignment := self.next(who, campaign_id)) is not None:
            self.label(who, assignment["id"], **value(assignment))
            done.append(assignment)
        return done

    def say(
        self,
        who: Who,
        assignment_id: int,
        message: str = "",
        expect: int | None = 200,
        client_id: str = "",
    ) -> httpx.Response:
        body = {"client_id": client_id or new_client_id(), "message": message}
        return self.call("POST", f"/api/assignments/{assignment_id}/chat", who, expect, json=body)

    def choose(
        self,
        who: Who,
        assignment_id: int,
        turn: int,
        choice: int,
        expect: int | None = 200,
        client_id: str = "",
    ) -> httpx.Response:
        body = {"client_id": client_id or new_client_id(), "turn": turn, "choice": choice}
        return self.call("POST", f"/api/assignments/{assignment_id}/choose", who, expect, json=body)

    def export_text(self, campaign_id: int, fmt: str | None = None) -> str:
        params = {"format": fmt} if fmt else {}
        url = f"/api/admin/campaigns/{campaign_id}/export"
        return self.call("GET", url, self.admin, 200, params=params).text

    def export(self, campaign_id: int, fmt: str | None = None) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.export_text(campaign_id, fmt).splitlines()]

    def stats(self, campaign_id: int) -> dict[str, Any]:
        return self.call("GET", f"/api/admin/campaigns/{campaign_id}", self.admin, 200).json()

    def browser(self, token: str | None = None) -> TestClient:
        """A client of its own (own cookie jar), logged in by cookie when given a token."""
        client = TestClient(self.app)
        self._clients.append(client)
        if token is not None:
            assert client.post("/api/login", json={"token": token}).status_code == 200
        return client


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "fb.db")
    return request.getfixturevalue("fresh_postgres_url")


@contextmanager
def serve(db_url: str) -> Iterator[Api]:
    """The app with a fake model on ``db_url``, started (migrations, first admin) and stopped."""
    sampler = FakeSampler()
    app = create_app(db_url, sampler=sampler)
    with TestClient(app) as client:
        api = Api(app, client, sampler, db_url)
        if app.state.feedback.admin_token:
            api.admin = bearer(app.state.feedback.admin_token)
        yield api
        for other in api._clients:
            other.close()


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with serve(db_url) as api:
        assert api.app.state.feedback.admin_token.startswith("rlhf_")
        yield api


@pytest.fixture
def alternating_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Display orders alternate: identity, reversed, identity, ... (instead of random)."""
    calls = itertools.count()

    class Alternating:
        def shuffle(self, order: list[int]) -> None:
            if next(calls) % 2:
                order.reverse()

    monkeypatch.setattr(random, "SystemRandom", Alternating)  # the service shuffles with it


def by_prompt(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped = defaultdict(list)
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        grouped[prompt].append(row)
    return grouped


def read_back(tmp_path: Path, name: str, export: str) -> list[Any]:
    """The export text as the training commands read it."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text(export)
    return list(read_records(path))


THUMB = {"up": True}

# ------------------------------------------------------------------------- health, pages


def test_health_and_pages(api: Api) -> None:
    assert api.call("GET", "/api/health", None, 200).json() == {
        "ok": True,
        "schema_version": SCHEMA_VERSION,
        "model": True,
        "models": ["model"],
    }
    for page in ("/login", "/annotate", "/admin"):
        response = api.call("GET", page, None, 200)
        assert response.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
    annotator = api.annotator()
    for who, where in ((None, "/login"), (api.admin, "/admin"), (annotator, "/annotate")):
        response = api.call("GET", "/", who, 303, follow_redirects=False)
        assert response.headers["location"] == where


# ---------------------------------------------------------------------------------- auth


def set_cookie(response: httpx.Response) -> str:
    (cookie,) = response.headers.get_list("set-cookie")
    assert cookie.startswith("rlhf_session=")
    return cookie


def test_login_sets_a_strict_http_only_cookie(api: Api) -> None:
    annotator = api.annotator("alice")
    browser = api.browser()
    response = browser.post("/api/login", json={"token": f"  {annotator.token} "})
    assert response.status_code == 200
    assert response.json() == {"name": "alice", "role": "annotator"}
    attributes = [part.strip().lower() for part in set_cookie(response).split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert browser.get("/api/me").json() == {"name": "alice", "role": "annotator"}
    assert api.call("GET", "/api/me", annotator, 200).json()["name"] == "alice"  # Bearer
    # behind a TLS-terminating proxy the cookie is Secure
    response = api.call(
        "POST", "/api/login", {"X-Forwarded-Proto": "https"}, 200, json={"token": annotator.token}
    )
    assert "secure" in set_cookie(response).lower().split("; ")


def test_secure_cookies_forced(api: Api) -> None:
    annotator = api.annotator()
    with TestClient(create_app(api.db_url, secure_cookies=True)) as client:
        response = client.post("/api/login", json={"token": annotator.token})
        assert response.status_code == 200
        attributes = [part.strip().lower() for part in set_cookie(response).split(";")]
        assert {"secure", "httponly", "samesite=strict"} <= set(attributes)


def test_login_refusals(api: Api) -> None:
    assert "unknown token" in api.detail_of("POST", "/api/login", None, 401, json={"token": "x"})
    admin_token = api.app.state.feedback.admin_token
    assert api.detail_of("POST", "/api/login", None, 401, json={"token": admin_token + "x"})
    assert "token" in api.detail_of("POST", "/api/login", None, 422, json={"token": ""})
    assert "token" in api.detail_of("POST", "/api/login", None, 422, json={})
    body = {"token": admin_token, "remember": True}
    assert "remember" in api.detail_of("POST", "/api/login", None, 422, json=body)
    assert api.detail_of("GET", "/api/me", bearer("rlhf_nope"), 401)
    assert api.detail_of("GET", "/api/me", {"Cookie": "rlhf_session=forged"}, 401)


def test_logout_closes_the_session(api: Api) -> None:
    annotator = api.annotator()
    browser = api.browser(annotator.token)
    cookie = browser.cookies["rlhf_session"]
    assert browser.get("/api/me").status_code == 200
    response = browser.post("/api/logout")
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert browser.get("/api/me").status_code == 401
    # closed on the server, not only forgotten by this browser
    assert api.call("GET", "/api/me", {"Cookie": f"rlhf_session={cookie}"}, 401)
    assert api.call("POST", "/api/logout", None, 200).json() == {"ok": True}  # harmless
    assert api.call("GET", "/api/me", annotator, 200)  # the token itself still works


PUBLIC = {("GET", "/api/health"), ("POST", "/api/login"), ("POST", "/api/logout")}
CLIENT_ID = "c" * 12
ANNOTATOR_ENDPOINTS = [
    ("GET", "/api/me", None),
    ("GET", "/api/campaigns", None),
    ("GET", "/api/campaigns/{campaign_id}/next", None),
    ("POST", "/api/assignments/{assignment_id}/label", {"client_id": CLIENT_ID, "up": True}),
    ("POST", "/api/assignments/{assignment_id}/skip", {"reason": "unclear"}),
    ("POST", "/api/assignments/{assignment_id}/chat", {"client_id": CLIENT_ID, "message": "hi"}),
    (
        "POST",
        "/api/assignments/{assignment_id}/choose",
        {"client_id": CLIENT_ID, "turn": 0, "choice": 0},
    ),
    ("POST", "/api/assignments/{assignment_id}/finish", None),
    ("GET", "/api/me/labels", None),
]
ADMIN_ENDPOINTS = [
    ("GET", "/api/admin/users", None),
    ("POST", "/api/admin/users", {"name": "mallory", "role": "admin"}),
    ("POST", "/api/admin/users/{user_id}/token", None),
    ("PATCH", "/api/admin/users/{user_id}", {"active": False}),
    ("GET", "/api/admin/campaigns", None),
    (
        "POST",
        "/api/admin/campaigns",
        {"name": "x", "task_type": "thumbs", "source_jsonl": '{"prompt": "p", "response": "r"}'},
    ),
    ("GET", "/api/admin/campaigns/{campaign_id}", None),
    ("PATCH", "/api/admin/campaigns/{campaign_id}", {"status": "closed"}),
    ("GET", "/api/admin/campaigns/{campaign_id}/export", None),
    ("GET", "/api/admin/loops", None),
    ("POST", "/api/admin/loops/{loop_id}/start", None),
]


def concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "1", path)


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """The app's routes, its routers' included: newer FastAPI keeps an included router as
    one entry of ``app.routes`` (holding ``original_router``) instead of copying its routes."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def test_endpoint_lists_cover_the_app(api: Api) -> None:
    routes = {
        (method, route.path)
        for route in api_routes(api.app.routes)
        if route.path.startswith("/api")
        for method in route.methods
    }
    listed = {(method, path) for method, path, _ in ANNOTATOR_ENDPOINTS + ADMIN_ENDPOINTS}
    assert routes - PUBLIC == listed


def test_every_protected_endpoint_needs_credentials(api: Api) -> None:
    api.campaign("thumbs", rows_of(1, 1))
    for method, path, body in ANNOTATOR_ENDPOINTS + ADMIN_ENDPOINTS:
        for who in (None, bearer("rlhf_wrong"), {"Cookie": "rlhf_session=wrong"}):
            detail = api.detail_of(method, concrete(path), who, 401, json=body)
            assert "log in" in detail, (method, path, detail)


def test_annotators_cannot_use_admin_endpoints(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(1, 1))
    annotator = api.annotator()
    for method, path, body in ADMIN_ENDPOINTS:
        detail = api.detail_of(method, concrete(path), annotator, 403, json=body)
        assert detail == "admins only", (method, path)
    # nothing happened: the admin is active, no account or campaign was added or changed
    users = api.call("GET", "/api/admin/users", api.admin, 200).json()
    assert [(u["name"], u["active"]) for u in users] == [("admin", True), (annotator.name, True)]
    (row,) = api.call("GET", "/api/admin/campaigns", api.admin, 200).json()
    assert row["id"] == campaign["id"] and row["status"] == "active"


def test_deactivated_account_is_locked_out(api: Api) -> None:
    annotator = api.annotator()
    browser = api.browser(annotator.token)
    url = f"/api/admin/users/{annotator.id}"
    assert api.call("PATCH", url, api.admin, 200, json={"active": False}).json()["active"] is False
    assert api.call("GET", "/api/me", annotator, 401)
    assert browser.get("/api/me").status_code == 401
    assert api.call("POST", "/api/login", None, 401, json={"token": annotator.token})
    assert api.call("PATCH", url, api.admin, 200, json={"active": True}).json()["active"] is True
    assert api.call("GET", "/api/me", annotator, 200)
    assert browser.get("/api/me").status_code == 200


def test_rotated_token_ends_old_token_and_sessions(api: Api) -> None:
    annotator = api.annotator()
    browser = api.browser(annotator.token)
    rotated = api.call("POST", f"/api/admin/users/{annotator.id}/token", api.admin, 200).json()
    assert rotated["token"].startswith("rlhf_") and rotated["token"] != annotator.token
    assert api.call("GET", "/api/me", annotator, 401)
    assert browser.get("/api/me").status_code == 401
    assert api.call("POST", "/api/login", None, 401, json={"token": annotator.token})
    assert (
        api.call("GET", "/api/me", bearer(rotated["token"]), 200).json()["name"] == annotator.name
    )
    assert api.browser(rotated["token"]).get("/api/me").status_code == 200


# ----------------------------------------------------------------------------- campaigns


def test_campaigns_of_every_task_type(api: Api) -> None:
    expected = {  # task: (source rows, items)
        "pairwise": (rows_of(2, responses=3), 6),  # K=3: 3 pairs per row
        "rank": (rows_of(2, responses=3), 2),
        "rate": (rows_of(2, responses=3), 6),
        "thumbs": ([*rows_of(1, 2), {"prompt": "q", "response": "only"}], 3),
        "edit": ([*rows_of(1, 2), {"prompt": "q", "completion": "only"}], 3),
        "chat": (
            [
                {"prompt": "Hello"},
                {"prompt": ""},
                {"prompt": [{"role": "system", "content": "Be brief."}]},
            ],
            3,
        ),
    }
    made = {}
    for task, (rows, items) in expected.items():
        campaign = api.campaign(task, rows, k=2, guidelines=f"how to {task}")
        assert (campaign["task_type"], campaign["items"], campaign["labels"]) == (task, items, 0)
        assert campaign["k"] == 2 and campaign["status"] == "active"
        assert campaign["guidelines"] == f"how to {task}"
        made[task] = campaign
    listed = api.call("GET", "/api/admin/campaigns", api.admin, 200).json()
    assert [(c["task_type"], c["items"]) for c in listed] == [
        (task, items) for task, (_, items) in expected.items()
    ]
    assert {c["task_type"]: c["export_formats"][0] for c in listed} == {
        "pairwise": "preference",
        "rank": "ranking",
        "rate": "rating",
        "thumbs": "binary",
        "edit": "completion",
        "chat": "preference",
    }
    annotator = api.annotator()
    mine = api.call("GET", "/api/campaigns", annotator, 200).json()
    assert [(c["name"], c["progress"]) for c in mine] == [
        (made[task]["name"], {"done": 0, "remaining": items})
        for task, (_, items) in expected.items()
    ]
    # the pairs of a K=3 row are all its pairs, each once
    pairs = set()
    while (assignment := api.next(annotator, made["pairwise"]["id"])) is not None:
        pairs.add(frozenset(shown_texts(assignment)))
        api.label(annotator, assignment["id"], choice=1)
    assert pairs == {
        frozenset({f"p {i} / r {a}", f"p {i} / r {b}"})
        for i in range(2)
        for a, b in ((0, 1), (0, 2), (1, 2))
    }


BAD_SOURCES = [  # (task, source, text the message must contain)
    ("pairwise", '{"prompt": "p", "responses": ["a", "b"]}\n{"prompt": "p",', "line 2: not JSON"),
    ("pairwise", '{"prompt": "p", "responses": ["a", "b"]}\n\n[1, 2]', "line 3: expected a JSON object"),
    ("rate", '{"responses": ["a"]}', "line 1: prompt: missing"),
    ("rate", '{"prompt": "  ", "responses": ["a"]}', "line 1: prompt: empty"),
    ("rate", '{"prompt": "p", "responses": "a"}', "line 1: responses: expected a non-empty list"),
    ("thumbs", '{"prompt": "p", "responses": ["a", 3]}', "line 1: responses[1]: expected a string"),
    ("thumbs", '{"prompt": "p"}', "line 1: responses: missing"),
    ("rank", '{"prompt": "p", "responses": ["a"]}', "line 1: responses: a rank task takes 2 to 9"),
    ("pairwise", '{"prompt": "p", "responses": ["a"]}', "line 1: responses: a pairwise task needs at least 2"),
    ("pairwise", '{"prompt": "p", "responses": ["a", "b"], "gold": 2}', "line 1: gold"),
    ("rank", '{"prompt": "p", "responses": ["a", "b", "c"], "gold": 3}', "line 1: gold"),
    ("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": [1]}', "line 1: gold: one answer per response"),
    ("rate", '{"prompt": "p", "responses": ["a", "b"], "gold": [1, 6]}', "line 1: gold[1]"),
    ("thumbs", '{"prompt": "p", "responses": ["a"], "gold": 1}', "line 1: gold[0]"),
    ("chat", '{"prompt": "hi", "gold": 0}', "line 1: gold: chat tasks take no gold answer"),
    ("edit", '{"prompt": "p", "responses": ["a"], "gold": "b"}', "line 1: gold[0]"),
    ("chat", '{"prompt": [{"role": "bot", "content": "x"}]}', "line 1: prompt[0]: role must be"),
    ("thumbs", "\n  \n", "the source has no rows"),
]  # fmt: skip


def test_bad_sources_name_line_and_field(api: Api) -> None:
    for task, source, expected in BAD_SOURCES:
        body = {"name": "bad", "task_type": task, "source_jsonl": source}
        detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
        assert detail.startswith("source: ") and expected in detail, (task, source, detail)
    assert api.call("GET", "/api/admin/campaigns", api.admin, 200).json() == []


def test_campaign_refusals(api: Api) -> None:
    source = jsonl(rows_of(1))
    good = {"name": "dup", "task_type": "pairwise", "source_jsonl": source}
    api.call("POST", "/api/admin/campaigns", api.admin, 201, json=good)
    sample = {"prompts_jsonl": '{"prompt": "p"}'}
    cases = [  # (changes to the good body, status, text in the message)
        ({}, 409, "name: a campaign named 'dup' exists"),
        ({"name": "n", "task_type": "essay"}, 422, "task_type"),
        ({"name": "n", "k": 0}, 422, "k: 1 to 50"),
        ({"name": "n", "k": 51}, 422, "k: 1 to 50"),
        ({"name": "n", "render": "html"}, 422, "render"),
        ({"name": ""}, 422, "name"),
        ({"name": "   "}, 422, "name"),
        ({"name": "n", "owner": "me"}, 422, "owner"),
        ({"name": "n", "sample": sample}, 422, "exactly one of source_jsonl or sample"),
        ({"name": "n", "source_jsonl": None}, 422, "exactly one of source_jsonl or sample"),
        ({"name": "n", "source_jsonl": None, "sample": {**sample, "n": 10}}, 422, "sample.n"),
        (
            {"name": "n", "source_jsonl": None, "sample": {"prompts_jsonl": ""}},
            422,
            "prompts_jsonl",
        ),
    ]
    for change, status, expected in cases:
        detail = api.detail_of(
            "POST", "/api/admin/campaigns", api.admin, status, json={**good, **change}
        )
        assert expected in detail, (change, detail)
    assert [c["name"] for c in api.call("GET", "/api/admin/campaigns", api.admin, 200).json()] == [
        "dup"
    ]


def test_duplicate_name_with_spaces_says_it_exists(api: Api) -> None:
    api.campaign("thumbs", rows_of(1, 1), name="dup")
    body = {"name": " dup ", "task_type": "thumbs", "source_jsonl": jsonl(rows_of(1, 1))}
    assert "exists" in api.detail_of("POST", "/api/admin/campaigns", api.admin, 409, json=body)


def test_campaign_sampled_from_the_model(api: Api) -> None:
    prompts = jsonl([{"prompt": "Name a colour."}, {"prompt": "Name a fruit.", "extra": 1}])
    body = {
        "name": "sampled",
        "task_type": "pairwise",
        "sample": {"prompts_jsonl": prompts, "n": 3},
    }
    campaign = api.call("POST", "/api/admin/campaigns", api.admin, 201, json=body).json()
    assert campaign["items"] == 6  # 2 prompts x 3 pairs of 3 samples
    assert api.sampler.calls == [(["Name a colour.", "Name a fruit."], 3)]
    annotator = api.annotator()
    assignment = api.next(annotator, campaign["id"])
    assert prompt_text(assignment) == "Name a colour."
    assert set(shown_texts(assignment)) == {
        "reply 0 to Name a colour.",
        "reply 1 to Name a colour.",
    }
    body = {"name": "rated", "task_type": "rate", "sample": {"prompts_jsonl": prompts, "n": 2}}
    assert api.call("POST", "/api/admin/campaigns", api.admin, 201, json=body).json()["items"] == 4
    body = {"name": "empty", "task_type": "rate", "sample": {"prompts_jsonl": '{"prompt": ""}'}}
    assert "non-empty" in api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
    body = {"name": "one", "task_type": "pairwise", "sample": {"prompts_jsonl": prompts, "n": 1}}
    assert "at least 2" in api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)


def test_identical_responses_are_refused_at_upload_and_sampling(api: Api) -> None:
    """Issue 14: a pairwise item of two identical responses was accepted; its export had
    chosen = rejected, which rm and dpo refuse. The whole upload is refused, naming the line."""
    rows = [*rows_of(1), {"prompt": "q", "responses": ["same", "other", "same "]}]
    for task in ("pairwise", "rank"):
        body = {"name": f"dup-{task}", "task_type": task, "source_jsonl": jsonl(rows)}
        detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
        assert detail.startswith("source: line 2: responses[2]: the same text as responses[0]")
    assert api.call("GET", "/api/admin/campaigns", api.admin, 200).json() == []
    # a model that says the same twice: the prompt's line is named
    api.app.state.feedback.samplers = {"model": lambda prompts, n: [["same"] * n for _ in prompts]}
    prompts = jsonl([{"prompt": "Name a colour."}])
    body = {"name": "s", "task_type": "pairwise", "sample": {"prompts_jsonl": prompts, "n": 2}}
    detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
    assert detail.startswith("source: line 1: responses[1]: the same text as responses[0]")


def test_server_without_a_model(db_url: str) -> None:
    app = create_app(db_url)
    with TestClient(app) as client:
        admin = bearer(app.state.feedback.admin_token)
        assert client.get("/api/health").json()["model"] is False
        body = {"name": "s", "task_type": "rate", "sample": {"prompts_jsonl": '{"prompt": "p"}'}}
        response = client.post("/api/admin/campaigns", json=body, headers=admin)
        assert response.status_code == 503 and "no model" in response.json()["detail"]
        # a chat campaign can be made from a source, but a turn needs the model
        body = {"name": "c", "task_type": "chat", "source_jsonl": '{"prompt": "hi"}'}
        campaign = client.post("/api/admin/campaigns", json=body, headers=admin).json()
        token = client.post("/api/admin/users", json={"name": "a"}, headers=admin).json()["token"]
        assignment = client.get(f"/api/campaigns/{campaign['id']}/next", headers=bearer(token))
        assignment_id = assignment.json()["assignment"]["id"]
        body = {"client_id": CLIENT_ID, "message": ""}
        response = client.post(
            f"/api/assignments/{assignment_id}/chat", json=body, headers=bearer(token)
        )
        assert response.status_code == 503 and "no model" in response.json()["detail"]


# ---------------------------------------------------------------------------- assignment


def test_k_distinct_annotators_per_item(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(4, 1), k=2)
    a, b, c = (api.annotator() for _ in range(3))
    first = [api.next(a, campaign["id"])]
    api.label(a, first[0]["id"], **THUMB)
    first.append(api.next(a, campaign["id"]))
    api.label(a, first[1]["id"], **THUMB)
    assert [prompt_text(x) for x in first] == ["p 0", "p 1"]  # served in source order
    assert [prompt_text(x) for x in api.label_all(b, campaign["id"], lambda _: THUMB)] == [
        "p 0",
        "p 1",
        "p 2",
        "p 3",
    ]
    # c gets only the items still short of k = 2
    assert [prompt_text(x) for x in api.label_all(c, campaign["id"], lambda _: THUMB)] == [
        "p 2",
        "p 3",
    ]
    for who in (a, b, c):
        response = api.call("GET", f"/api/campaigns/{campaign['id']}/next", who, 200).json()
        assert response["assignment"] is None and "nothing left" in response["message"]
    labellers = {
        prompt: [row["annotator"] for row in rows]
        for prompt, rows in by_prompt(api.export(campaign["id"])).items()
    }
    assert {prompt: sorted(names) for prompt, names in labellers.items()} == {
        "p 0": sorted([f"a{a.id}", f"a{b.id}"]),
        "p 1": sorted([f"a{a.id}", f"a{b.id}"]),
        "p 2": sorted([f"a{b.id}", f"a{c.id}"]),
        "p 3": sorted([f"a{b.id}", f"a{c.id}"]),
    }
    stats = api.stats(campaign["id"])["stats"]
    assert (stats["items"], stats["complete_items"], stats["labels"]) == (4, 4, 8)


def test_a_pending_assignment_comes_back_and_holds_its_place(api: Api) -> None:
    campaign = api.campaign("rank", rows_of(2, responses=5), k=1)
    a, b = api.annotator(), api.annotator()
    first = api.next(a, campaign["id"])
    again = api.next(a, campaign["id"])
    assert again == first  # a reload shows the same item in the same order
    assert sorted(shown_texts(first)) == [f"p 0 / r {j}" for j in range(5)]  # a permutation
    assert all(r["html"] == r["text"] for r in first["responses"])  # plain text: escaped only
    assert first["status"] == "pending" and first["progress"] == {"done": 0, "remaining": 2}
    # with k = 1 the pending item is taken: b gets the other, then nothing
    assert prompt_text(api.next(b, campaign["id"])) == "p 1"
    assert api.next(a, campaign["id"])["id"] == first["id"]
    assert api.call("GET", "/api/campaigns/999/next", a, 404)


CHOICES = [  # (choice on the 1..8 scale, shown side it prefers, margin)
    (1, 0, 3),
    (2, 0, 2),
    (3, 0, 1),
    (4, 0, 0),
    (5, 1, 0),
    (6, 1, 1),
    (7, 1, 2),
    (8, 1, 3),
]


def test_pairwise_choice_maps_to_the_original_order(
    api: Api, alternating_order: None, tmp_path: Path
) -> None:
    campaign = api.campaign("pairwise", rows_of(2 * len(CHOICES)), k=1)
    annotator = api.annotator()
    expected, seen = {}, set()
    for choice, side, margin in [*CHOICES, *reversed(CHOICES)]:
        assignment = api.next(annotator, campaign["id"])
        shown = shown_texts(assignment)
        seen.add((choice, shown == sorted(shown)))
        api.label(annotator, assignment["id"], choice=choice)
        expected[prompt_text(assignment)] = (shown[side], shown[1 - side], float(margin), choice)
    assert seen == {(choice, same) for choice, _, _ in CHOICES for same in (True, False)}
    rows = by_prompt(api.export(campaign["id"]))
    for prompt, (chosen, rejected, margin, _) in expected.items():
        (row,) = rows[prompt]
        assert (row["chosen"], row["rejected"], row["margin"]) == (chosen, rejected, margin)
    records = read_back(tmp_path, "pairwise", api.export_text(campaign["id"]))
    assert {r.kind for r in records} == {"preference"}
    assert sorted(r.margin for r in records) == sorted(float(m) for _, _, m in CHOICES * 2)
    # the annotator's own history shows the choice as they made it (display order)
    mine = api.call("GET", "/api/me/labels", annotator, 200).json()
    assert {row["prompt"]: row["value"]["choice"] for row in mine} == {
        prompt: choice for prompt, (_, _, _, choice) in expected.items()
    }


def test_rank_maps_to_the_original_order(api: Api, alternating_order: None) -> None:
    campaign = api.campaign("rank", rows_of(2, responses=4), k=1)
    annotator = api.annotator()
    submitted = [4, 1, 4, 2]  # ties allowed, gaps closed: dense [2, 0, 2, 1]
    for _ in range(2):  # identity, then reversed display order
        assignment = api.next(annotator, campaign["id"])
        shown = shown_texts(assignment)
        api.label(annotator, assignment["id"], ranks=submitted)
        (row,) = by_prompt(api.export(campaign["id"]))[prompt_text(assignment)]
        rank_of = dict(zip(row["responses"], row["ranks"], strict=True))
        assert row["responses"] == sorted(shown)  # exported in the original order
        assert [rank_of[text] for text in shown] == [2, 0, 2, 1]
    mine = api.call("GET", "/api/me/labels", annotator, 200).json()
    assert [row["value"] for row in mine] == [{"ranks": [3, 1, 3, 2]}] * 2  # dense, 1 = best


# -------------------------------------------------------------------------------- labels


def test_idempotent_labels(api: Api) -> None:
    campaign = api.campaign("rate", rows_of(1, 3), k=2)
    a, b = api.annotator(), api.annotator()
    first = api.next(a, campaign["id"])
    client_id = new_client_id()
    ack = api.label(a, first["id"], client_id=client_id, rating=4).json()
    assert ack["duplicate"] is False
    retry = api.label(a, first["id"], client_id=client_id, rating=4).json()
    assert retry == {"label_id": ack["label_id"], "duplicate": True}
    assert api.label(a, first["id"], client_id=client_id, rating=1).json()["duplicate"] is True
    detail = api.label(a, first["id"], 409, rating=2).json()["detail"]
    assert "already labelled" in detail
    second = api.next(a, campaign["id"])
    assert second["id"] != first["id"]
    detail = api.label(a, second["id"], 409, client_id=client_id, rating=4).json()["detail"]
    assert detail.startswith("client_id: already used")
    assert api.next(a, campaign["id"])["id"] == second["id"]  # still pending
    # client ids are per annotator: b may use the same one
    b_first = api.next(b, campaign["id"])
    assert api.label(b, b_first["id"], client_id=client_id, rating=5).json()["duplicate"] is False
    rows = api.export(campaign["id"])
    assert sorted(row["score"] for row in rows) == [4.0, 5.0]
    assert api.stats(campaign["id"])["stats"]["labels"] == 2


def test_malformed_labels_are_refused_naming_the_field(api: Api) -> None:
    annotator = api.annotator()
    assignments = {
        task: api.next(annotator, api.campaign(task, rows_of(1, 3 if task == "rank" else 2))["id"])
        for task in ("pairwise", "rank", "rate", "thumbs", "edit")
    }
    cases = [  # (task, payload without client_id, text in the message)
        ("pairwise", {"choice": 0}, "choice: 0 is outside 1..8"),
        ("pairwise", {"choice": 9}, "choice: 9 is outside 1..8"),
        ("pairwise", {"choice": "2"}, "choice: expected a whole number"),
        ("pairwise", {"choice": True}, "choice: expected a whole number"),
        ("pairwise", {"choice": 2.5}, "choice: expected a whole number"),
        ("pairwise", {}, "choice: expected a whole number"),
        ("rank", {"ranks": [1, 2]}, "ranks: expected a list of 3"),
        ("rank", {"ranks": "123"}, "ranks: expected a list of 3"),
        ("rank", {"ranks": [2, 2, 2]}, "ranks: all responses tied"),
        ("rank", {"ranks": [1, 0, 2]}, "ranks[1]: expected 1..3"),
        ("rank", {"ranks": [1, 4, 2]}, "ranks[1]: expected 1..3"),
        ("rank", {"ranks": [1, "2", 3]}, "ranks[1]: expected 1..3"),
        ("rate", {"rating": 6}, "rating: 6 is outside 1..5"),
        ("rate", {"rating": 0}, "rating: 0 is outside 1..5"),
        ("thumbs", {"up": "yes"}, "up: expected true or false"),
        ("thumbs", {"up": 1}, "up: expected true or false"),
        ("edit", {"text": ""}, "text: the edited response is empty"),
        ("edit", {"text": " \n "}, "text: the edited response is empty"),
        ("edit", {"text": 5}, "text: the edited response is empty"),
    ]
    for task, payload, expected in cases:
        detail = api.label(annotator, assignments[task]["id"], 422, **payload).json()["detail"]
        assert expected in detail, (task, payload, detail)
    url = f"/api/assignments/{assignments['thumbs']['id']}/label"
    client_cases = [
        ({"up": True}, "client_id: 8 to 64 letters"),
        ({"up": True, "client_id": "short"}, "client_id: 8 to 64 letters"),
        ({"up": True, "client_id": "x" * 65}, "client_id: 8 to 64 letters"),
        ({"up": True, "client_id": 12345678}, "client_id: 8 to 64 letters"),
    ]
    for body, expected in client_cases:
        assert expected in api.detail_of("POST", url, annotator, 422, json=body)
    headers = {**annotator.headers, "Content-Type": "application/json"}
    assert api.detail_of("POST", url, headers, 422, content=b'{"up": tru') == "body: not valid JSON"
    assert api.call("POST", url, annotator, json=[{"up": True}]).status_code in (400, 422)
    assert api.call("POST", url, annotator).status_code == 422  # no body at all
    # strict bodies refuse fields they do not know
    aid = assignments["thumbs"]["id"]
    strict = [
        (f"/api/assignments/{aid}/skip", {"reason": "r", "why": 1}),
        (f"/api/assignments/{aid}/chat", {"client_id": CLIENT_ID, "message": "m", "x": 1}),
        (
            f"/api/assignments/{aid}/choose",
            {"client_id": CLIENT_ID, "turn": 0, "choice": 0, "x": 1},
        ),
        ("/api/admin/users", {"name": "n", "email": "e"}),
    ]
    for url, body in strict:
        who = api.admin if "admin" in url else annotator
        assert "Extra inputs" in api.detail_of("POST", url, who, 422, json=body), url
    strict_patch = [
        (f"/api/admin/users/{annotator.id}", {"active": True, "role": "admin"}),
        (
            f"/api/admin/campaigns/{assignments['rate']['campaign_id']}",
            {"status": "paused", "k": 3},
        ),
    ]
    for url, body in strict_patch:
        assert "Extra inputs" in api.detail_of("PATCH", url, api.admin, 422, json=body)
    # the refusals left everything as it was: each item still takes its one valid label
    valid = {
        "pairwise": {"choice": 2},
        "rank": {"ranks": [1, 2, 3]},
        "rate": {"rating": 5},
        "thumbs": {"up": False, "extra": "ignored"},
        "edit": {"text": "better"},
    }
    for task, assignment in assignments.items():
        assert api.next(annotator, assignment["campaign_id"])["id"] == assignment["id"]
        api.label(annotator, assignment["id"], **valid[task])
    assert api.call("GET", "/api/me", annotator, 200).json()["role"] == "annotator"


def test_other_annotators_assignments_are_not_found(api: Api) -> None:
    owner, intruder = api.annotator(), api.annotator()
    chat = api.next(owner, api.campaign("chat", [{"prompt": "hi"}])["id"])
    thumbs = api.next(owner, api.campaign("thumbs", rows_of(1, 1))["id"])
    api.say(owner, chat["id"])
    for assignment_id in (chat["id"], thumbs["id"], 9999):
        for path, body in [
            ("label", {"client_id": CLIENT_ID, "up": True}),
            ("skip", {"reason": "mine now"}),
            ("chat", {"client_id": CLIENT_ID, "message": "hello"}),
            ("choose", {"client_id": CLIENT_ID, "turn": 0, "choice": 0}),
            ("finish", None),
        ]:
            url = f"/api/assignments/{assignment_id}/{path}"
            detail = api.detail_of("POST", url, intruder, 404, json=body)
            assert detail == f"no assignment {assignment_id} of yours"
    # the owner's work is untouched
    assert api.next(owner, chat["campaign_id"])["turns"][0]["chosen"] is None
    assert api.next(owner, thumbs["campaign_id"])["status"] == "pending"
    assert api.call("GET", "/api/me/labels", owner, 200).json() == []


def test_chat_assignments_take_no_plain_label(api: Api) -> None:
    annotator = api.annotator()
    chat = api.next(annotator, api.campaign("chat", [{"prompt": "hi"}])["id"])
    detail = api.label(annotator, chat["id"], 422, choice=1).json()["detail"]
    assert "chat endpoints" in detail


# ---------------------------------------------------------------------------------- skip


def test_skip(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(2, 1), k=1)
    a, b = api.annotator("a"), api.annotator("b")
    first = api.next(a, campaign["id"])
    url = f"/api/assignments/{first['id']}/skip"
    assert "reason" in api.detail_of("POST", url, a, 422, json={"reason": ""})
    assert "reason" in api.detail_of("POST", url, a, 422, json={"reason": "  \n"})
    assert "reason" in api.detail_of("POST", url, a, 422, json={})
    assert "reason" in api.detail_of("POST", url, a, 422, json={"reason": "x" * 501})
    assert api.call("POST", url, a, 200, json={"reason": "offensive prompt"}).json() == {
        "skipped": True
    }
    assert api.call("POST", url, a, 200, json={"reason": "retried"}).json() == {"skipped": True}
    assert "skipped" in api.label(a, first["id"], 409, **THUMB).json()["detail"]
    # a never sees the skipped item again; b does
    second = api.next(a, campaign["id"])
    assert prompt_text(second) == "p 1"
    api.label(a, second["id"], **THUMB)
    assert api.next(a, campaign["id"]) is None
    assert prompt_text(api.next(b, campaign["id"])) == "p 0"
    done_url = f"/api/assignments/{second['id']}/skip"
    assert "done" in api.detail_of("POST", done_url, a, 409, json={"reason": "changed my mind"})
    detail = api.stats(campaign["id"])
    assert detail["skips"] == [
        {"item_id": detail["skips"][0]["item_id"], "reason": "offensive prompt", "annotator": "a"}
    ]
    assert detail["stats"]["skipped"] == 1 and detail["stats"]["pending"] == 1
    assert {row["name"]: row["skipped"] for row in detail["stats"]["annotators"]} == {"a": 1}


# ---------------------------------------------------------------------------------- chat


def chat_calls(api: Api) -> int:
    return sum(1 for prompts, _ in api.sampler.calls if not isinstance(prompts[0], str))


def test_chat(api: Api, tmp_path: Path) -> None:
    campaign = api.campaign("chat", [{"prompt": "Hello there"}, {"prompt": ""}], k=1)
    annotator = api.annotator()
    assignment = api.next(annotator, campaign["id"])
    aid = assignment["id"]
    assert (assignment["opening"], assignment["prompt"], assignment["turns"]) == (
        "Hello there",
        [],
        [],
    )
    finish = f"/api/assignments/{aid}/finish"
    assert "at least once" in api.detail_of("POST", finish, annotator, 409)
    assert "no turn 0" in api.choose(annotator, aid, 0, 0, 404).json()["detail"]
    # the first message defaults to the opening; a retry returns the same turn, no new sample
    client_id = new_client_id()
    turn = api.say(annotator, aid, client_id=client_id).json()["turn"]
    assert turn["index"] == 0 and turn["message"]["text"] == "Hello there"
    shown = [c["text"] for c in turn["candidates"]]
    assert sorted(shown) == ["reply 0 to Hello there", "reply 1 to Hello there"]
    assert turn["chosen"] is None
    assert api.say(annotator, aid, "ignored", client_id=client_id).json()["turn"] == turn
    assert chat_calls(api) == 1
    assert "pick the better reply" in api.say(annotator, aid, "next?", 409).json()["detail"]
    assert "choice" in api.choose(annotator, aid, 0, 2, 422).json()["detail"]
    choice_id = new_client_id()
    ack = api.choose(annotator, aid, 0, 1, client_id=choice_id).json()
    assert ack["duplicate"] is False
    assert api.choose(annotator, aid, 0, 1, client_id=choice_id).json() == {
        **ack,
        "duplicate": True,
    }
    assert "already decided" in api.choose(annotator, aid, 0, 0, 409).json()["detail"]
    assert "no turn 5" in api.choose(annotator, aid, 5, 0, 404).json()["detail"]
    second = api.say(annotator, aid, "  And then?  ").json()["turn"]
    assert second["index"] == 1 and second["message"]["text"] == "And then?"
    shown_second = [c["text"] for c in second["candidates"]]
    api.choose(annotator, aid, 1, 0)
    history = api.call("GET", "/api/me/labels", annotator, 200).json()
    assert [row["value"] for row in history] == [{"choice": 0}, {"choice": 1}]  # as shown
    reloaded = api.next(annotator, campaign["id"])
    assert [t["chosen"] for t in reloaded["turns"]] == [1, 0]
    assert api.call("POST", finish, annotator, 200).json() == {"finished": True}
    assert api.call("POST", finish, annotator, 200).json() == {"finished": True}  # retried
    assert "finished" in api.say(annotator, aid, "more", 409).json()["detail"]
    assert chat_calls(api) == 2
    # the second conversation has no opening: the annotator must write one
    other = api.next(annotator, campaign["id"])
    assert other["id"] != aid and other["opening"] == ""
    assert "message: empty" in api.say(annotator, other["id"], "", 422).json()["detail"]
    # export: a preference per decided turn, in context, and one conversation per chat
    hello = {"role": "user", "content": "Hello there"}
    first_reply = {"role": "assistant", "content": shown[1]}
    rows = api.export(campaign["id"])
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ([hello], [first_reply], [{"role": "assistant", "content": shown[0]}]),
        (
            [hello, first_reply, {"role": "user", "content": "And then?"}],
            [{"role": "assistant", "content": shown_second[0]}],
            [{"role": "assistant", "content": shown_second[1]}],
        ),
    ]
    (conversation,) = api.export(campaign["id"], "conversation")
    assert conversation["messages"] == [
        hello,
        first_reply,
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": shown_second[0]},
    ]
    kinds = [r.kind for r in read_back(tmp_path, "chat", api.export_text(campaign["id"]))]
    assert kinds == ["preference", "preference"]
    text = api.export_text(campaign["id"], "conversation")
    assert [r.kind for r in read_back(tmp_path, "conversation", text)] == ["conversation"]


def test_chat_with_a_context_prompt(api: Api) -> None:
    system = {"role": "system", "content": "Answer in one word."}
    campaign = api.campaign("chat", [{"prompt": [system]}])
    annotator = api.annotator()
    assignment = api.next(annotator, campaign["id"])
    assert assignment["opening"] == ""
    assert assignment["prompt"] == [
        {"role": "system", "text": system["content"], "html": system["content"]}
    ]
    api.say(annotator, assignment["id"], "Sky colour?")
    assert api.sampler.calls[-1] == ([[system, {"role": "user", "content": "Sky colour?"}]], 2)
    api.choose(annotator, assignment["id"], 0, 0)
    api.call("POST", f"/api/assignments/{assignment['id']}/finish", annotator, 200)
    (row,) = api.export(campaign["id"], "conversation")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]


def test_chat_choose_client_id_of_another_assignment_conflicts(api: Api) -> None:
    campaign = api.campaign("chat", [{"prompt": "one"}, {"prompt": "two"}])
    annotator = api.annotator()
    client_id = new_client_id()
    first = api.next(annotator, campaign["id"])
    api.say(annotator, first["id"])
    api.choose(annotator, first["id"], 0, 0, client_id=client_id)
    api.call("POST", f"/api/assignments/{first['id']}/finish", annotator, 200)
    second = api.next(annotator, campaign["id"])
    api.say(annotator, second["id"])
    api.choose(annotator, second["id"], 0, 0, 409, client_id=client_id)


# --------------------------------------------------------------------------- own labels


def test_my_labels_are_only_mine(api: Api) -> None:
    pairwise = api.campaign("pairwise", rows_of(2), k=2)
    thumbs = api.campaign("thumbs", rows_of(1, 1), k=2)
    a, b = api.annotator(), api.annotator()
    api.label_all(a, pairwise["id"], lambda _: {"choice": 2})
    api.label_all(b, pairwise["id"], lambda _: {"choice": 7})
    api.label_all(a, thumbs["id"], lambda _: {"up": False})
    mine = api.call("GET", "/api/me/labels", a, 200).json()
    assert [(row["task_type"], row["value"]) for row in mine] == [
        ("thumbs", {"up": False}),
        ("pairwise", {"choice": 2}),
        ("pairwise", {"choice": 2}),
    ]
    theirs = api.call("GET", "/api/me/labels", b, 200).json()
    assert [row["value"] for row in theirs] == [{"choice": 7}] * 2
    assert not {row["label_id"] for row in mine} & {row["label_id"] for row in theirs}
    url = f"/api/me/labels?campaign_id={thumbs['id']}"
    assert [row["campaign_id"] for row in api.call("GET", url, a, 200).json()] == [thumbs["id"]]
    assert api.call("GET", url, b, 200).json() == []
    assert api.call("GET", "/api/me/labels", api.admin, 200).json() == []
    assert api.call("GET", "/api/me/labels?campaign_id=x", a, 422)
    progress = {c["id"]: c["progress"] for c in api.call("GET", "/api/campaigns", a, 200).json()}
    assert progress == {
        pairwise["id"]: {"done": 2, "remaining": 0},
        thumbs["id"]: {"done": 1, "remaining": 0},
    }


# --------------------------------------------------------------------------------- admin


def test_user_administration(api: Api) -> None:
    users = api.call("GET", "/api/admin/users", api.admin, 200).json()
    assert [(u["id"], u["name"], u["role"], u["active"]) for u in users] == [
        (1, "admin", "admin", True)
    ]
    made = api.call("POST", "/api/admin/users", api.admin, 201, json={"name": " bob "}).json()
    assert (
        made["name"] == "bob" and made["role"] == "annotator" and made["token"].startswith("rlhf_")
    )
    assert len(made["token"]) > 40
    listed = api.call("GET", "/api/admin/users", api.admin, 200).json()
    assert [u["name"] for u in listed] == ["admin", "bob"] and "token" not in listed[1]
    assert "exists" in api.detail_of(
        "POST", "/api/admin/users", api.admin, 409, json={"name": "bob"}
    )
    detail = api.detail_of(
        "POST", "/api/admin/users", api.admin, 422, json={"name": "x", "role": "root"}
    )
    assert detail.startswith("role:")
    assert "name" in api.detail_of("POST", "/api/admin/users", api.admin, 422, json={"name": " "})
    assert "name" in api.detail_of(
        "POST", "/api/admin/users", api.admin, 422, json={"name": "n" * 81}
    )
    assert api.call("POST", "/api/admin/users/999/token", api.admin, 404)
    assert api.call("PATCH", "/api/admin/users/999", api.admin, 404, json={"active": False})
    detail = api.detail_of("PATCH", "/api/admin/users/1", api.admin, 409, json={"active": False})
    assert "your own account" in detail
    assert api.call("PATCH", "/api/admin/users/1", api.admin, 200, json={"active": True})
    second_admin = api.annotator("root", role="admin")
    assert api.call("GET", "/api/admin/users", second_admin, 200)
    assert api.call("PATCH", "/api/admin/users/1", second_admin, 200, json={"active": False})
    assert api.call("GET", "/api/me", api.admin, 401)


def test_campaign_administration(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(2, 1))
    url = f"/api/admin/campaigns/{campaign['id']}"
    annotator = api.annotator()
    assert (
        api.call("PATCH", url, api.admin, 200, json={"status": "paused"}).json()["status"]
        == "paused"
    )
    assert "paused" in api.detail_of("GET", f"/api/campaigns/{campaign['id']}/next", annotator, 409)
    assert api.call("GET", "/api/campaigns", annotator, 200).json() == []
    assert "status" in api.detail_of("PATCH", url, api.admin, 422, json={"status": "deleted"})
    api.call("PATCH", url, api.admin, 200, json={"status": "active"})
    assert api.next(annotator, campaign["id"]) is not None
    api.call("PATCH", url, api.admin, 200, json={"status": "closed"})
    assert "closed" in api.detail_of("GET", f"/api/campaigns/{campaign['id']}/next", annotator, 409)
    detail = api.stats(campaign["id"])
    assert (detail["name"], detail["status"], detail["items"]) == (campaign["name"], "closed", 2)
    for method, path, body in [
        ("GET", "/api/admin/campaigns/999", None),
        ("PATCH", "/api/admin/campaigns/999", {"status": "paused"}),
        ("GET", "/api/admin/campaigns/999/export", None),
    ]:
        assert api.detail_of(method, path, api.admin, 404, json=body) == "no campaign 999"
    export = f"{url}/export?format=ranking"
    assert "binary" in api.detail_of("GET", export, api.admin, 422)


def test_progress_and_per_annotator_statistics(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(3, 1), k=2)
    a, b = api.annotator("a"), api.annotator("b")
    api.label_all(a, campaign["id"], lambda _: THUMB)
    api.label(b, api.next(b, campaign["id"])["id"], **THUMB)
    api.next(b, campaign["id"])  # pending
    detail = api.stats(campaign["id"])
    stats = detail["stats"]
    assert (detail["labels"], stats["items"], stats["complete_items"]) == (4, 3, 1)
    assert (stats["labels"], stats["pending"], stats["skipped"]) == (4, 1, 0)
    annotators = {row["name"]: row for row in stats["annotators"]}
    assert {name: row["labels"] for name, row in annotators.items()} == {"a": 3, "b": 1}
    assert annotators["a"]["median_seconds"] >= 0 and annotators["b"]["labels_per_hour"] is None
    assert annotators["a"]["gold_items"] == 0 and annotators["a"]["gold_agreement"] is None
    assert stats["alpha"]["units"] == 1  # one item has two labels so far


def test_gold_agreement(api: Api) -> None:
    rows = [
        {"prompt": f"g {i}", "responses": [f"good {i}", f"bad {i}"], "gold": 0} for i in range(2)
    ]
    campaign = api.campaign("pairwise", [*rows, *rows_of(1)], k=2)
    right, wrong = api.annotator("right"), api.annotator("wrong")

    def prefer(good: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def value(assignment: dict[str, Any]) -> dict[str, Any]:
            good_shown_first = shown_texts(assignment)[0].startswith("good")
            return {"choice": 1 if good_shown_first == good else 8}

        return value

    api.label_all(right, campaign["id"], prefer(True))
    api.label_all(wrong, campaign["id"], prefer(False))
    annotators = {row["name"]: row for row in api.stats(campaign["id"])["stats"]["annotators"]}
    assert {
        name: (row["labels"], row["gold_items"], row["gold_agreement"])
        for name, row in annotators.items()
    } == {
        "right": (3, 2, 1.0),
        "wrong": (3, 2, 0.0),
    }


def test_krippendorff_alpha(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(4, 1), k=2)
    a, b = api.annotator(), api.annotator()
    for who in (a, b):  # full agreement on varied values
        api.label_all(who, campaign["id"], lambda x: {"up": prompt_text(x) in ("p 0", "p 2")})
    alpha = api.stats(campaign["id"])["stats"]["alpha"]
    assert alpha == {"value": 1.0, "level": "nominal", "units": 4}
    single = api.campaign("rate", rows_of(2, 1), k=1)
    api.label_all(a, single["id"], lambda _: {"rating": 3})
    assert api.stats(single["id"])["stats"]["alpha"] == {
        "value": None,
        "level": "ordinal",
        "units": 0,
    }


# -------------------------------------------------------------------------------- export

EXPORTS = {  # task: (source rows, value per assignment, {format: expected record kinds})
    "pairwise": (rows_of(2), lambda _: {"choice": 3}, {"preference": ["preference"] * 2}),
    "rank": (
        rows_of(1, 3),
        lambda _: {"ranks": [1, 2, 3]},
        {"ranking": ["ranking"], "preference": ["preference"] * 3},
    ),
    "rate": (rows_of(1, 2), lambda _: {"rating": 4}, {"rating": ["rating"] * 2}),
    "thumbs": (
        rows_of(1, 2),
        lambda x: {"up": x["responses"][0]["text"].endswith("0")},
        {"binary": ["binary"] * 2},
    ),
    "edit": (
        rows_of(1, 2),
        lambda x: {"text": x["responses"][0]["text"].replace("r 0", "better")},
        {"completion": ["completion"] * 2, "preference": ["preference"], "edit": ["edit"]},
    ),
}


def test_export_every_task_and_format_reads_back(api: Api, tmp_path: Path) -> None:
    annotator = api.annotator()
    for task, (rows, value, formats) in EXPORTS.items():
        campaign = api.campaign(task, rows)
        assert campaign["export_formats"] == list(formats)
        api.label_all(annotator, campaign["id"], value)
        assert api.export(campaign["id"]) == api.export(
            campaign["id"], campaign["export_formats"][0]
        )
        for fmt, kinds in formats.items():
            text = api.export_text(campaign["id"], fmt)
            rows_out = [json.loads(line) for line in text.splitlines()]
            assert all(
                row["campaign"] == campaign["name"] and row["annotator"] == f"a{annotator.id}"
                for row in rows_out
            )
            records = read_back(tmp_path, f"{task}-{fmt}", text)
            assert [r.kind for r in records] == kinds, (task, fmt)
            check_records(task, fmt, records)
        detail = api.detail_of(
            "GET", f"/api/admin/campaigns/{campaign['id']}/export?format=nope", api.admin, 422
        )
        assert detail.startswith("format:")
    response = api.call("GET", "/api/admin/campaigns/1/export", api.admin, 200)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="pairwise-' in response.headers["content-disposition"]


def check_records(task: str, fmt: str, records: list[Any]) -> None:
    if task == "pairwise":
        assert all(r.margin == 1.0 for r in records)  # choice 3: A slightly better
    elif task == "rank" and fmt == "ranking":
        (ranking,) = records
        assert sorted(ranking.ranks) == [0, 1, 2] and ranking.prompt == "p 0"
    elif task == "rank":
        assert sorted(r.margin for r in records) == [1.0, 1.0, 2.0]
    elif task == "rate":
        assert [(r.score, tuple(r.scale)) for r in records] == [(4.0, (1.0, 5.0))] * 2
    elif task == "thumbs":
        assert {r.completion: r.label for r in records} == {"p 0 / r 0": True, "p 0 / r 1": False}
    elif fmt == "completion":
        assert [r.completion for r in records] == ["p 0 / better", "p 0 / r 1"]
    elif fmt == "preference":  # only the changed response makes a pair
        assert [(r.chosen, r.rejected) for r in records] == [("p 0 / better", "p 0 / r 0")]
    else:
        assert [(r.original, r.edited) for r in records] == [("p 0 / r 0", "p 0 / better")]


def test_export_of_a_conversational_prompt_reads_back(api: Api, tmp_path: Path) -> None:
    context = [{"role": "system", "content": "Be kind."}]
    annotator = api.annotator()
    for task, (rows, value, formats) in EXPORTS.items():
        chat_rows = [
            {**row, "prompt": [*context, {"role": "user", "content": row["prompt"]}]}
            for row in rows
        ]
        campaign = api.campaign(task, chat_rows)
        api.label_all(annotator, campaign["id"], value)
        for fmt, kinds in formats.items():
            records = read_back(
                tmp_path, f"chat-{task}-{fmt}", api.export_text(campaign["id"], fmt)
            )
            assert [r.kind for r in records] == kinds, (task, fmt)


# --------------------------------------------------------------------- persistence, schema


def test_labels_survive_a_restart(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(db_url) as api:
        admin = api.admin
        campaign = api.campaign("rate", rows_of(1, 2))
        annotator = api.annotator()
        api.label_all(annotator, campaign["id"], lambda _: {"rating": 2})
        before = api.export(campaign["id"])
    found_versions = []
    real_migrate = state_module.migrate

    def spy(engine: Any) -> int:
        found_versions.append(real_migrate(engine))
        return found_versions[-1]

    monkeypatch.setattr(state_module, "migrate", spy)
    with serve(db_url) as api:
        assert found_versions == [SCHEMA_VERSION]  # found the schema, created nothing
        assert api.app.state.feedback.admin_token is None  # no second admin
        api.admin = admin
        users = api.call("GET", "/api/admin/users", admin, 200).json()
        assert [(u["name"], u["role"]) for u in users] == [
            ("admin", "admin"),
            (annotator.name, "annotator"),
        ]
        assert api.export(campaign["id"]) == before
        assert api.call("GET", "/api/me/labels", annotator, 200).json()[0]["value"] == {"rating": 2}
        assert api.browser(annotator.token).get("/api/me").status_code == 200


def test_an_older_schema_is_migrated_at_start(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rlhf.feedback.db as db_module

    with serve(db_url) as api:  # a database at the current version, with a label in it
        admin = api.admin
        campaign = api.campaign("thumbs", rows_of(1, 1))
        api.label_all(api.annotator(), campaign["id"], lambda _: THUMB)
        before = api.export(campaign["id"])

    def add_a_column(connection: Any) -> None:  # what a later schema change would append
        connection.execute(text("ALTER TABLE campaigns ADD COLUMN notes TEXT"))

    monkeypatch.setattr(db_module, "MIGRATIONS", [*db_module.MIGRATIONS, add_a_column])
    monkeypatch.setattr(db_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    engine = make_engine(database_url(db_url))
    try:
        assert db_module.migrate(engine) == SCHEMA_VERSION  # it was at the old version
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version FROM schema_version")).scalar()
            notes = connection.execute(text("SELECT notes FROM campaigns")).scalars().all()
        assert (version, notes) == (SCHEMA_VERSION + 1, [None])
        assert db_module.migrate(engine) == SCHEMA_VERSION + 1  # once only
    finally:
        engine.dispose()
    with serve(db_url) as api:
        api.admin = admin
        assert api.export(campaign["id"]) == before  # the labels came through


def test_a_newer_schema_is_refused(db_url: str) -> None:
    with TestClient(create_app(db_url)):
        pass
    engine = make_engine(database_url(db_url))
    try:
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE schema_version SET version = :v"), {"v": SCHEMA_VERSION + 1}
            )
    finally:
        engine.dispose()
    with (
        pytest.raises(SchemaError, match="newer than this rlhf understands"),
        TestClient(create_app(db_url)),
    ):
        pass


def test_a_foreign_database_is_refused(db_url: str) -> None:
    engine = make_engine(database_url(db_url))
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY)"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaError, match="not made by rlhf"), TestClient(create_app(db_url)):
        pass


# --------------------------------------------------------------------------- concurrency


def test_concurrent_assignment(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(20, 1), k=2)
    people = [api.annotator() for _ in range(8)]
    start = threading.Barrier(len(people))
    errors: list[BaseException] = []
    done: dict[int, list[str]] = {}

    def work(person: Person) -> None:
        try:
            client = TestClient(api.app)  # one client per thread, on the same app
            start.wait()
            mine = []
            while True:
                response = client.get(
                    f"/api/campaigns/{campaign['id']}/next", headers=person.headers
                )
                assert response.status_code == 200, response.text
                assignment = response.json()["assignment"]
                if assignment is None:
                    break
                body = {"client_id": new_client_id(), "up": True}
                url = f"/api/assignments/{assignment['id']}/label"
                response = client.post(url, json=body, headers=person.headers)
                assert response.status_code == 200, response.text
                mine.append(prompt_text(assignment))
            done[person.id] = mine
            client.close()
        except BaseException as error:  # reported below, from the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(person,)) for person in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert all(len(set(mine)) == len(mine) for mine in done.values())  # never twice
    rows = api.export(campaign["id"])
    assert len(rows) == 40
    per_item = defaultdict(list)
    for row in rows:
        per_item[row["item"]].append(row["annotator"])
    assert len(per_item) == 20
    assert all(len(set(names)) == len(names) == 2 for names in per_item.values())
    assert sum(len(mine) for mine in done.values()) == 40
    assert api.stats(campaign["id"])["stats"]["complete_items"] == 20


def test_unfinished_chats_give_pairs_but_no_conversation(api: Api) -> None:
    campaign = api.campaign("chat", [{"prompt": "Hi"}], k=1)
    annotator = api.annotator()
    aid = api.next(annotator, campaign["id"])["id"]
    api.say(annotator, aid)
    api.choose(annotator, aid, 0, 0)
    assert len(api.export(campaign["id"])) == 1  # the decided turn is a pair already
    assert api.export(campaign["id"], "conversation") == []  # the dialogue is not over
    api.say(annotator, aid, "more")
    api.call("POST", f"/api/assignments/{aid}/finish", annotator, 200)
    assert "finished" in api.choose(annotator, aid, 1, 0, 409).json()["detail"]
    assert len(api.export(campaign["id"], "conversation")) == 1


def test_a_closed_campaign_takes_no_more_labels_a_paused_one_does(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(2, responses=1), k=1)
    annotator = api.annotator()
    url = f"/api/admin/campaigns/{campaign['id']}"
    first = api.next(annotator, campaign["id"])
    api.call("PATCH", url, api.admin, 200, json={"status": "paused"})
    api.label(annotator, first["id"], up=True)  # work already handed out is not lost
    second_row = api.call("PATCH", url, api.admin, 200, json={"status": "active"})
    assert second_row.json()["status"] == "active"
    second = api.next(annotator, campaign["id"])
    api.call("PATCH", url, api.admin, 200, json={"status": "closed"})
    assert "closed" in api.label(annotator, second["id"], 409, up=False).json()["detail"]


def test_bad_settings_are_refused_before_the_model_samples(api: Api) -> None:
    body = {
        "name": "sampled",
        "task_type": "ranking",
        "sample": {"prompts_jsonl": jsonl([{"prompt": "x"}]), "n": 2},
    }
    detail = api.detail_of("POST", "/api/admin/campaigns", api.admin, 422, json=body)
    assert detail.startswith("task_type")
    assert api.sampler.calls == []


def test_a_model_giving_the_wrong_number_of_replies_is_a_503(db_url: str) -> None:
    app = create_app(db_url, sampler=lambda prompts, n: [["only one"] for _ in prompts])
    with TestClient(app) as client:
        admin = bearer(app.state.feedback.admin_token)
        body = {
            "name": "sampled",
            "task_type": "rank",
            "sample": {"prompts_jsonl": jsonl([{"prompt": "x"}]), "n": 3},
        }
        response = client.post("/api/admin/campaigns", json=body, headers=admin)
        assert response.status_code == 503
        assert "wrong number of replies" in response.json()["detail"]


def test_position_bias_is_measured_per_annotator(api: Api) -> None:
    campaign = api.campaign("pairwise", rows_of(6), k=2)
    always_a, by_text = api.annotator("always_a"), api.annotator("by_text")
    api.label_all(always_a, campaign["id"], lambda _: {"choice": 2})  # whatever is shown first

    def prefer_r0(assignment: dict[str, Any]) -> dict[str, Any]:  # by content, not position
        return {"choice": 2 if shown_texts(assignment)[0].endswith("r 0") else 7}

    done = api.label_all(by_text, campaign["id"], prefer_r0)
    annotators = {row["name"]: row for row in api.stats(campaign["id"])["stats"]["annotators"]}
    assert annotators["always_a"]["picked_first"] == 1.0
    shown_first_was_r0 = sum(shown_texts(a)[0].endswith("r 0") for a in done)
    assert annotators["by_text"]["picked_first"] == round(shown_first_was_r0 / 6, 3)
    thumbs = api.campaign("thumbs", rows_of(1, 1))
    api.label_all(always_a, thumbs["id"], lambda _: THUMB)
    (row,) = api.stats(thumbs["id"])["stats"]["annotators"]
    assert row["picked_first"] is None  # only pairwise tasks have a first and a second


# ------------------------------------------------------- found in review: hostile input


def raw_post(api: Api, url: str, who: Who, body: str) -> httpx.Response:
    """A JSON body as written (escapes such as \\ud800 that httpx could not encode)."""
    headers = {
        **(who.headers if isinstance(who, Person) else who),
        "Content-Type": "application/json",
    }
    return api.client.post(url, content=body.encode(), headers=headers)


def test_text_no_database_can_store_is_refused(api: Api) -> None:
    edit = api.campaign("edit", rows_of(1, 1))
    annotator = api.annotator()
    url = f"/api/assignments/{api.next(annotator, edit['id'])['id']}/label"
    lone = '{"client_id": "abcdefgh12", "text": "fixed \\ud800"}'
    response = raw_post(api, url, annotator, lone)
    assert response.status_code == 422 and "text: not valid Unicode" in response.json()["detail"]
    response = raw_post(api, url, annotator, '{"client_id": "abcdefgh\\ud800", "text": "x"}')
    assert response.status_code == 422 and "client_id" in response.json()["detail"]
    response = raw_post(api, "/api/admin/users", api.admin, '{"name": "a\\u0000b"}')
    assert response.status_code == 422 and "NUL" in response.json()["detail"]
    source = '{"prompt": "p\\ud800", "responses": ["a", "b"]}'
    body = json.dumps({"name": "bad", "task_type": "pairwise", "source_jsonl": source})
    response = raw_post(api, "/api/admin/campaigns", api.admin, body)
    assert response.status_code == 422
    assert (
        response.json()["detail"]
        == "source: line 1: prompt: not valid Unicode (a lone surrogate escape, \\ud800 at character 2)"
    )
    # a raw U+2028 inside a JSON string is one row, not two
    separator = api.campaign("thumbs", [{"prompt": "a\u2028b", "responses": ["r"]}])
    assert separator["items"] == 1
    assert api.export(edit["id"]) == []  # nothing was stored by the refused requests


def test_ids_beyond_64_bits_are_refused(api: Api) -> None:
    annotator = api.annotator()
    huge = 10**20
    for method, url in [
        ("GET", f"/api/campaigns/{huge}/next"),
        ("POST", f"/api/assignments/{huge}/finish"),
        ("GET", f"/api/me/labels?campaign_id={huge}"),
    ]:
        assert api.call(method, url, annotator).status_code == 422, url
    assert api.call("GET", f"/api/admin/campaigns/{huge}", api.admin).status_code == 422
    body = {"client_id": new_client_id(), "turn": huge, "choice": 0}
    assert api.call("POST", "/api/assignments/1/choose", annotator, 422, json=body)


def test_export_of_a_campaign_named_in_any_script(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(1, 1), name="评测 naïve")
    annotator = api.annotator()
    api.label_all(annotator, campaign["id"], lambda _: THUMB)
    response = api.call("GET", f"/api/admin/campaigns/{campaign['id']}/export", api.admin, 200)
    disposition = response.headers["content-disposition"]
    quoted = "%E8%AF%84%E6%B5%8B%20na%C3%AFve.jsonl"  # the name itself, for browsers
    assert disposition == f"attachment; filename=\"___na_ve.jsonl\"; filename*=UTF-8''{quoted}"
    assert len(response.text.splitlines()) == 1


def test_cookie_writes_from_another_origin_are_refused(api: Api) -> None:
    annotator = api.annotator()
    browser = api.browser(annotator.token)
    campaign = api.campaign("thumbs", rows_of(1, 1))
    aid = api.next(annotator, campaign["id"])["id"]
    body = {"client_id": new_client_id(), "up": True}
    url = f"/api/assignments/{aid}/label"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://testserver:8080"},
    ):
        response = browser.post(url, json=body, headers=headers)
        assert response.status_code == 403 and "refused" in response.json()["detail"], headers
    assert browser.get("/api/me", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
    same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    assert browser.post(url, json=body, headers=same).status_code == 200
    # a script with a token has no ambient credential to abuse: its Origin does not matter
    other = api.campaign("thumbs", rows_of(1, 1))
    aid = api.next(annotator, other["id"])["id"]
    headers = {**annotator.headers, "Origin": "http://elsewhere.example"}
    assert (
        api.client.post(
            f"/api/assignments/{aid}/label",
            json=body | {"client_id": new_client_id()},
            headers=headers,
        ).status_code
        == 200
    )
    for path in ("/static/annotate.html", "/api/health"):
        assert "frame-ancestors 'none'" in api.client.get(path).headers["content-security-policy"]


def test_a_request_is_authenticated_by_one_mechanism_only(api: Api) -> None:
    """Issue 14: an admin's cookie request from a foreign origin that also carried some other
    Authorization header (HTTP Basic from a proxy) skipped the origin check, and so rotated
    another user's token; a Bearer header without a token fell back to the cookie."""
    victim = api.annotator()
    browser = api.browser(api.app.state.feedback.admin_token)  # the admin, by cookie
    url = f"/api/admin/users/{victim.id}/token"
    foreign = {"Origin": "http://evil.example"}
    for authorization, status in [
        ("Basic YWxpY2U6c2VjcmV0", 403),  # not a bearer token: a cookie request, cross-site
        ("Negotiate abc", 403),
        ("Bearer", 401),  # a bearer request, with no token: never the cookie instead
        ("Bearer   ", 401),
        ("bearer rlhf_forged", 401),
        (f"Bearer {victim.token}x", 401),
    ]:
        response = browser.post(url, headers={**foreign, "Authorization": authorization})
        assert response.status_code == status, (authorization, response.text)
    assert api.call("GET", "/api/me", victim, 200).json()["name"] == victim.name  # not rotated
    # a same-origin page behind a proxy that adds Basic still works with its cookie
    same = {"Origin": "http://testserver", "Authorization": "Basic YWxpY2U6c2VjcmV0"}
    assert browser.post(url, headers=same).status_code == 200
    # a bad bearer token is refused even where a good cookie is present
    assert (
        browser.get("/api/me", headers={"Authorization": "Bearer rlhf_forged"}).status_code == 401
    )
    assert browser.get("/api/me", headers={"Authorization": "Basic eDp5"}).status_code == 200


def test_a_paused_campaign_still_serves_the_item_in_hand(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(2, 1))
    annotator, latecomer = api.annotator(), api.annotator()
    first = api.next(annotator, campaign["id"])
    api.call(
        "PATCH", f"/api/admin/campaigns/{campaign['id']}", api.admin, 200, json={"status": "paused"}
    )
    assert api.next(annotator, campaign["id"])["id"] == first["id"]  # after a reload too
    listed = {
        c["id"]: c["status"] for c in api.call("GET", "/api/campaigns", annotator, 200).json()
    }
    assert listed.get(campaign["id"]) == "paused"  # reachable from the list, marked paused
    others = api.call("GET", "/api/campaigns", latecomer, 200).json()
    assert campaign["id"] not in [c["id"] for c in others]  # nothing waits for them there
    detail = api.detail_of("GET", f"/api/campaigns/{campaign['id']}/next", latecomer, 409)
    assert "paused" in detail


def test_one_annotator_asking_twice_at_once_gets_one_item(api: Api) -> None:
    campaign = api.campaign("thumbs", rows_of(6, 1))
    annotator = api.annotator()
    start = threading.Barrier(4)
    got: list[int] = []

    def ask() -> None:
        client = TestClient(api.app)
        start.wait()
        response = client.get(f"/api/campaigns/{campaign['id']}/next", headers=annotator.headers)
        got.append(response.json()["assignment"]["id"])
        client.close()

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 4 and len(set(got)) == 1


def test_a_conversation_under_way_does_not_expire(api: Api) -> None:
    campaign = api.campaign("chat", [{"prompt": "Hi"}], k=1)
    alice, bob = api.annotator(), api.annotator()
    aid = api.next(alice, campaign["id"])["id"]
    api.say(alice, aid)
    api.choose(alice, aid, 0, 0)
    engine = make_engine(database_url(api.db_url))
    try:
        with engine.begin() as connection:  # three hours pass
            connection.execute(
                text("UPDATE assignments SET created_at = :t WHERE id = :id"),
                {"t": utcnow() - ASSIGNMENT_TIMEOUT * 1.5, "id": aid},
            )
    finally:
        engine.dispose()
    assert api.next(bob, campaign["id"]) is None  # not taken from alice
    api.say(alice, aid, "and then?")  # alice carries on


def test_finishing_while_the_model_writes_keeps_the_conversation_closed(db_url: str) -> None:
    finish_first: list[Callable[[], None]] = []

    def slow_model(prompts: list[Any], n: int) -> list[list[str]]:
        for act in finish_first:  # the annotator finishes from another tab meanwhile
            act()
        return [[f"reply {i}" for i in range(n)] for _ in prompts]

    app = create_app(db_url, sampler=slow_model)
    with TestClient(app) as client:
        admin = bearer(app.state.feedback.admin_token)
        token = client.post("/api/admin/users", json={"name": "ann"}, headers=admin).json()["token"]
        source = jsonl([{"prompt": "Hi"}])
        body = {"name": "c", "task_type": "chat", "source_jsonl": source}
        campaign = client.post("/api/admin/campaigns", json=body, headers=admin).json()
        me = bearer(token)
        aid = client.get(f"/api/campaigns/{campaign['id']}/next", headers=me).json()["assignment"][
            "id"
        ]
        say = {"client_id": new_client_id(), "message": ""}
        assert client.post(f"/api/assignments/{aid}/chat", json=say, headers=me).status_code == 200
        pick = {"client_id": new_client_id(), "turn": 0, "choice": 0}
        assert (
            client.post(f"/api/assignments/{aid}/choose", json=pick, headers=me).status_code == 200
        )
        other_tab = TestClient(app)
        finish_first.append(
            lambda: other_tab.post(f"/api/assignments/{aid}/finish", headers=me).raise_for_status()
        )
        say = {"client_id": new_client_id(), "message": "more"}
        response = client.post(f"/api/assignments/{aid}/chat", json=say, headers=me)
        assert response.status_code == 409 and "finished" in response.json()["detail"]
        other_tab.close()


# ------------------------------------------------------------------------------- OpenAPI

PAGES = {"/", "/login", "/annotate", "/admin"}


def test_every_route_documents_its_answer(tmp_path: Path) -> None:
    """Each route is in the OpenAPI schema with its success answer's schema (a named model
    for JSON), its refusals as ``{"detail"}``, and 401 / 403 where it needs a login / an
    admin. The schema is built without a database."""
    app = create_app(str(tmp_path / "fb.db"))
    schema = app.openapi()
    routes = list(api_routes(app.routes))
    assert {route.path for route in routes} == set(schema["paths"])
    for route in routes:
        for method in route.methods:
            where = (method, route.path)
            assert route.include_in_schema, where
            answers = schema["paths"][route.path][method.lower()]["responses"]
            success = str(route.status_code or 200)
            assert success in answers, where
            if route.path == "/":
                assert success == "303" and answers[success]["description"], where
                continue
            ((media, content),) = answers[success]["content"].items()
            if media == "application/json":
                model = content["schema"].get("items", content["schema"])
                assert model["$ref"].startswith("#/components/schemas/"), where
            else:
                assert media in ("text/html", "application/x-ndjson"), where
                assert content["schema"] == {"type": "string"}, where
            for status, answer in answers.items():
                if status.startswith(("4", "5")):
                    refusal = answer["content"]["application/json"]["schema"]
                    assert refusal == {"$ref": "#/components/schemas/Detail"}, (where, status)
            if route.path.startswith("/api") and where not in PUBLIC:
                assert "401" in answers, where
            if route.path.startswith("/api/admin"):
                assert "403" in answers, where
            if route.path in PAGES:
                assert route.path == "/" or media == "text/html", where
    assert {route.path for route in routes if not route.path.startswith("/api")} == PAGES
    # the refusals' schema is this app's one message, not FastAPI's default error list
    assert schema["components"]["schemas"]["Detail"]["required"] == ["detail"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def problems(value: Any, schema: dict[str, Any], models: dict[str, Any], at: str = "") -> list[str]:
    """Where ``value`` (a JSON answer) departs from its OpenAPI ``schema``: a missing required
    field, a field the schema does not name, or a value of the wrong type."""
    if "$ref" in schema:
        return problems(value, models[schema["$ref"].rsplit("/", 1)[1]], models, at)
    if "anyOf" in schema:
        fits = any(not problems(value, option, models, at) for option in schema["anyOf"])
        return [] if fits else [f"{at}: {value!r} fits none of {schema['anyOf']}"]
    kind = schema.get("type")
    types = {
        "null": type(None), "boolean": bool, "string": str, "integer": int,
        "number": (int, float), "array": list, "object": dict,
    }  # fmt: skip
    if kind is None:
        return []  # Any
    if not isinstance(value, types[kind]) or (kind in ("integer", "number") and value is True):
        return [f"{at}: {value!r} is not {kind}"]
    if kind == "array":
        return [
            p
            for i, v in enumerate(value)
            for p in problems(v, schema["items"], models, f"{at}[{i}]")
        ]
    if kind != "object" or "properties" not in schema:
        return []
    found = [f"{at}.{name}: missing" for name in schema.get("required", []) if name not in value]
    for name, field_value in value.items():
        if name not in schema["properties"]:
            found.append(f"{at}.{name}: not in the schema")
        else:
            found += problems(field_value, schema["properties"][name], models, f"{at}.{name}")
    return found


def test_answers_are_what_their_schemas_say(api: Api) -> None:
    """Real answers of every kind of JSON route, checked against the OpenAPI schema: the
    documented models are the answers, field for field (none missing, none extra)."""
    schema = api.app.openapi()
    models = schema["components"]["schemas"]
    thumbs = api.campaign("thumbs", [{"prompt": "p", "response": "r"}])
    chat = api.campaign("chat", [{"prompt": "Hello"}])
    annotator = api.annotator()
    aid = api.next(annotator, thumbs["id"])["id"]
    chat_aid = api.next(annotator, chat["id"])["id"]
    skipped_aid = api.next(annotator, api.campaign("rate", rows_of(1))["id"])["id"]
    turn = {"client_id": new_client_id(), "turn": 0, "choice": 1}
    checked = [
        ("GET", "/api/health", "/api/health", None, None, 200),
        ("GET", "/api/me", "/api/me", annotator, None, 200),
        ("GET", "/api/campaigns", "/api/campaigns", annotator, None, 200),
        ("GET", "/api/campaigns/{campaign_id}/next", f"/api/campaigns/{thumbs['id']}/next",
         annotator, None, 200),
        ("GET", "/api/campaigns/{campaign_id}/next", f"/api/campaigns/{chat['id']}/next",
         annotator, None, 200),
        ("POST", "/api/assignments/{assignment_id}/label", f"/api/assignments/{aid}/label",
         annotator, {"client_id": new_client_id(), "up": True}, 200),
        ("POST", "/api/assignments/{assignment_id}/chat", f"/api/assignments/{chat_aid}/chat",
         annotator, {"client_id": new_client_id(), "message": ""}, 200),
        ("POST", "/api/assignments/{assignment_id}/choose",
         f"/api/assignments/{chat_aid}/choose", annotator, turn, 200),
        ("POST", "/api/assignments/{assignment_id}/finish",
         f"/api/assignments/{chat_aid}/finish", annotator, None, 200),
        ("GET", "/api/me/labels", "/api/me/labels", annotator, None, 200),
        ("GET", "/api/campaigns/{campaign_id}/next", f"/api/campaigns/{thumbs['id']}/next",
         annotator, None, 200),
        ("POST", "/api/assignments/{assignment_id}/skip", f"/api/assignments/{skipped_aid}/skip",
         annotator, {"reason": "unclear"}, 200),
        ("GET", "/api/campaigns/{campaign_id}/next", f"/api/campaigns/{thumbs['id']}/next",
         annotator, None, 200),  # nothing left: the answer with its own progress
        ("GET", "/api/admin/users", "/api/admin/users", api.admin, None, 200),
        ("POST", "/api/admin/users/{user_id}/token", f"/api/admin/users/{annotator.id}/token",
         api.admin, None, 200),
        ("PATCH", "/api/admin/users/{user_id}", f"/api/admin/users/{annotator.id}", api.admin,
         {"active": True}, 200),
        ("GET", "/api/admin/campaigns", "/api/admin/campaigns", api.admin, None, 200),
        ("GET", "/api/admin/campaigns/{campaign_id}", f"/api/admin/campaigns/{thumbs['id']}",
         api.admin, None, 200),
        ("PATCH", "/api/admin/campaigns/{campaign_id}", f"/api/admin/campaigns/{chat['id']}",
         api.admin, {"status": "paused"}, 200),
        ("GET", "/api/admin/campaigns/{campaign_id}", "/api/admin/campaigns/999", api.admin,
         None, 404),
        ("GET", "/api/me", "/api/me", None, None, 401),
        ("POST", "/api/assignments/{assignment_id}/skip", f"/api/assignments/{aid}/skip",
         annotator, {"reason": "x", "extra": 1}, 422),
    ]  # fmt: skip
    for method, path, url, who, body, status in checked:
        answer = api.call(method, url, who, status, json=body).json()
        documented = schema["paths"][path][method.lower()]["responses"][str(status)]
        found = problems(answer, documented["content"]["application/json"]["schema"], models)
        assert not found, (method, url, found)


def test_an_assignment_answer_names_its_fields(api: Api) -> None:
    """The assignment model lists the fields an item is shown with; the chat-only and
    steps-only ones are optional and left out of other tasks' answers (not sent as null)."""
    models = api.app.openapi()["components"]["schemas"]
    view = models["AssignmentView"]
    common = {
        "id", "campaign_id", "campaign", "task_type", "guidelines", "status", "prompt",
        "responses", "progress",
    }  # fmt: skip
    assert set(view["required"]) == common
    assert set(view["properties"]) == common | {"opening", "turns", "answer"}
    assert models["Progress"]["required"] == ["done", "remaining"]
    assert set(models["Rendered"]["required"]) == {"text", "html"}
    campaign = api.campaign("pairwise", rows_of(1, 2))
    annotator = api.annotator()
    assignment = api.next(annotator, campaign["id"])
    assert set(assignment) == common
    assert [set(response) for response in assignment["responses"]] == [{"text", "html"}] * 2
    assert set(assignment["prompt"][0]) == {"role", "text", "html"}
    next_url = f"/api/campaigns/{campaign['id']}/next"
    assert set(api.call("GET", next_url, annotator, 200).json()) == {"assignment", "message"}
    api.label(annotator, assignment["id"], choice=1)
    empty = api.call("GET", next_url, annotator, 200).json()
    assert empty == {
        "assignment": None,
        "message": "nothing left to label here, thank you",
        "progress": {"done": 1, "remaining": 0},
    }
