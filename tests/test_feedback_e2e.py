"""The feedback pages end to end: Debian's Chromium (tests/services.py) drives a live server.

An annotator logs in and labels items of every task type by mouse and by keyboard, reloads and
finds the labels; a phone-sized screen stacks a pair; an admin exports a campaign from the page
and `rlhf rm` trains on the download. The model behind chat campaigns is a fake.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from rlhf.cli import app as cli
from rlhf.feedback.app import ServedApp

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    Page = Any

# ------------------------------------------------------------------------------ the data

PAIRS = [
    ("How do I boil an egg?", "Put it in boiling water for 8 minutes.", "Eggs are food."),
    ("Name a primary colour.", "Red is a primary colour.", "Purple, probably."),
    ("What is the capital of France?", "Paris.", "France has many cities."),
    ("Suggest a name for a cat.", "How about Biscuit?", "Cat."),
    ("How many legs does a spider have?", "Eight.", "Spiders have some legs."),
]
RANKS = [
    ("Describe the sea in one line.", ["It is big.", "Blue and endless.", "Salty water."]),
    ("Give a tip for sleeping well.", ["Keep a routine.", "Drink coffee late.", "Dim lights."]),
]
RATES = ["Explain what a noun is.", "Why is the sky blue?", "Translate 'hello' to Spanish."]
THUMBS = ["Write a haiku about rain.", "Say something kind."]
EDITS = [("Summarise: the cat sat on the mat.", "A cat sat on a mat."), ("Greet me.", "Hi.")]
CHATS = ["Can you help me plan a picnic?", "What should I cook tonight?"]
XSS = (
    "**Bold** advice: <script>window.__pwned=1</script> "
    '<img src=x onerror="window.__pwned=1"> and [a link](javascript:window.__pwned=1)'
)


# the chat history, newest first: turn 2 took the reply shown second, turn 1 the first
CHAT_HISTORY = ["turn 2: reply 2 picked", "turn 1: reply 1 picked"]


def fake_model(prompts: list[Any], n: int) -> list[list[str]]:
    """Deterministic replies naming the message they answer."""
    replies = []
    for prompt in prompts:
        last = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        replies.append([f"Reply {i + 1} to: {last}" for i in range(n)])
    return replies


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


SOURCES = {  # name: (task, rows, extra campaign settings)
    "pairwise": ("pairwise", [{"prompt": p, "responses": [a, b]} for p, a, b in PAIRS], {"k": 2}),
    "rank": ("rank", [{"prompt": p, "responses": r} for p, r in RANKS], {}),
    "rate": ("rate", [{"prompt": p, "responses": [f"An answer to: {p}"]} for p in RATES], {}),
    "thumbs": ("thumbs", [{"prompt": p, "responses": [f"My try: {p}"]} for p in THUMBS], {}),
    "edit": ("edit", [{"prompt": p, "responses": [r]} for p, r in EDITS], {}),
    "chat": ("chat", [{"prompt": p} for p in CHATS], {}),
    "markdown": ("thumbs", [{"prompt": "Any advice?", "responses": [XSS]}], {"render": "markdown"}),
}


@dataclass
class Live:
    url: str
    admin: str  # tokens
    alice: str
    bob: str
    alice_id: int
    campaigns: dict[str, int] = field(default_factory=dict)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.admin}"}
        response = httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        assert response.is_success, (method, path, response.text)
        return response

    def export(self, name: str, fmt: str | None = None) -> list[dict[str, Any]]:
        params = {"format": fmt} if fmt else {}
        text = self.call(
            "GET", f"/api/admin/campaigns/{self.campaigns[name]}/export", params=params
        )
        return [json.loads(line) for line in text.text.splitlines()]

    def user(self, name: str) -> dict[str, Any]:
        return self.call("POST", "/api/admin/users", json={"name": name}).json()


@contextmanager
def serve_live(
    db: Path, sources: dict[str, tuple[str, list[Any], dict[str, Any]]]
) -> Iterator[Live]:
    """The app under uvicorn on a free loopback port, with alice and bob and a campaign per
    source (name: (task, rows, extra campaign settings), as in SOURCES)."""
    with ServedApp(str(db), sampler=fake_model) as served:
        live = Live(served.url, served.state.admin_token, "", "", 0)
        alice, bob = live.user("alice"), live.user("bob")
        live.alice, live.bob, live.alice_id = alice["token"], bob["token"], alice["id"]
        for name, (task, rows, extra) in sources.items():
            body = {"name": name, "task_type": task, "source_jsonl": jsonl(rows), **extra}
            body["guidelines"] = f"Label each {task} item carefully."
            live.campaigns[name] = live.call("POST", "/api/admin/campaigns", json=body).json()["id"]
        yield live


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The app with users and a campaign per task."""
    with serve_live(tmp_path_factory.mktemp("feedback") / "fb.db", SOURCES) as live:
        yield live


@pytest.fixture
def page_of(browser: Any, live: Live) -> Iterator[Any]:
    """``page_of(**context_options)``: a page in a fresh context on the live server. Its
    uncaught errors and console errors (but for 4xx answers) must stay none to the end."""
    contexts, errors = [], []

    def make(**options: Any) -> Page:
        options = {"viewport": {"width": 1280, "height": 900}, **options}
        context = browser.new_context(base_url=live.url, accept_downloads=True, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))

        def console(message: Any) -> None:
            expected = re.search(r"Failed to load resource: .* status of 4\d\d", message.text)
            if message.type == "error" and not expected:
                errors.append(f"console: {message.text}")

        page.on("console", console)
        return page

    yield make
    try:
        assert errors == []
    finally:
        for context in contexts:
            context.close()


def log_in(page: Page, token: str, lands: str) -> None:
    page.goto("/login")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("login").click()
    expect(page).to_have_url(re.compile(f"{lands}$"))


def by(page: Page, testid: str) -> Any:
    return page.get_by_test_id(testid)


def text_of(page: Page, testid: str) -> str:
    return by(page, testid).locator(".text").inner_text()


def open_campaign(page: Page, live: Live, name: str) -> None:
    if by(page, "back").is_visible():
        by(page, "back").click()
    by(page, f"campaign-{live.campaigns[name]}").click()
    expect(by(page, "campaign-name")).to_have_text(name)


def expect_item(page: Page, prompt: str, done: int | None = None) -> None:
    """Wait until the item for ``prompt`` is on screen (and the progress counts ``done``)."""
    expect(by(page, "prompt")).to_contain_text(prompt)
    if done is not None:
        expect(by(page, "progress")).to_have_text(re.compile(f"^done {done} · "))


def history(page: Page) -> Any:
    return by(page, "history-row").locator("strong")


# ----------------------------------------------------------------------------- the tests


def test_annotator_labels_every_task_by_mouse_and_keyboard(page_of: Any, live: Live) -> None:
    page = page_of()
    log_in(page, live.alice, "/annotate")
    expect(by(page, "me")).to_contain_text("alice")
    for name, campaign_id in live.campaigns.items():
        expect(by(page, f"campaign-{campaign_id}")).to_contain_text(name)

    # pairwise: B better by mouse (7), A better by keyboard (2)
    open_campaign(page, live, "pairwise")
    expect(by(page, "guidelines")).to_contain_text("Guidelines")
    shown = {}
    expect_item(page, PAIRS[0][0], done=0)
    shown[PAIRS[0][0]] = (text_of(page, "response-0"), text_of(page, "response-1"))
    by(page, "choice-7").click()
    expect_item(page, PAIRS[1][0], done=1)
    shown[PAIRS[1][0]] = (text_of(page, "response-0"), text_of(page, "response-1"))
    page.keyboard.press("2")
    expect_item(page, PAIRS[2][0], done=2)
    expect(history(page)).to_have_text(["2: A better", "7: B better"])

    # rank: A 3rd, B 1st, C 2nd by mouse; by keyboard b 1 → C selected, 3, then a 2, Enter
    open_campaign(page, live, "rank")
    expect_item(page, RANKS[0][0], done=0)
    ranked = {RANKS[0][0]: [text_of(page, f"response-{i}") for i in range(3)]}
    for response, rank in enumerate((3, 1, 2)):
        by(page, f"rank-{response}-{rank}").click()
    expect(by(page, "rank-1-1")).to_have_attribute("aria-pressed", "true")
    by(page, "submit").click()
    expect_item(page, RANKS[1][0], done=1)
    ranked[RANKS[1][0]] = [text_of(page, f"response-{i}") for i in range(3)]
    for key in "b13a2":
        page.keyboard.press(key)
    expect(by(page, "rank-2-3")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")
    expect(by(page, "done-message")).to_be_visible()
    expect(history(page)).to_have_text(["ranks 2,1,3", "ranks 3,1,2"])

    # rate: 4 by mouse, 2 by keyboard, then skip with a reason by keyboard
    open_campaign(page, live, "rate")
    expect_item(page, RATES[0], done=0)
    by(page, "rating-4").click()
    expect_item(page, RATES[1], done=1)
    page.keyboard.press("2")
    expect_item(page, RATES[2], done=2)
    page.keyboard.press("s")
    expect(by(page, "skip-reason")).to_be_focused()
    page.keyboard.type("I cannot read Spanish")
    page.keyboard.press("Enter")
    expect(by(page, "done-message")).to_be_visible()
    expect(by(page, "progress")).to_have_text("done 2 · remaining 0")

    # thumbs: down by mouse, up by keyboard
    open_campaign(page, live, "thumbs")
    expect_item(page, THUMBS[0], done=0)
    by(page, "thumbs-down").click()
    expect_item(page, THUMBS[1], done=1)
    page.keyboard.press("u")
    expect(by(page, "done-message")).to_be_visible()

    # edit: rewrite and submit by mouse; by keyboard e, append, Ctrl+Enter
    open_campaign(page, live, "edit")
    expect_item(page, EDITS[0][0], done=0)
    expect(by(page, "edit-text")).to_have_value(EDITS[0][1])
    by(page, "edit-text").fill("The cat sat on the mat.")
    by(page, "submit").click()
    expect_item(page, EDITS[1][0], done=1)
    page.keyboard.press("e")
    expect(by(page, "edit-text")).to_be_focused()
    page.keyboard.press("Control+End")
    page.keyboard.type(" How can I help?")
    page.keyboard.press("Control+Enter")
    expect(by(page, "done-message")).to_be_visible()

    # chat: send the opening and pick by mouse; write, Enter, pick by keyboard; finish
    open_campaign(page, live, "chat")
    box = by(page, "chat-message")
    expect(box).to_have_value(CHATS[0])
    by(page, "chat-send").click()
    expect(by(page, "candidate-1")).to_contain_text(f"to: {CHATS[0]}")
    picked = [text_of(page, "candidate-0")]
    by(page, "pick-0").click()
    expect(box).to_be_focused()
    page.keyboard.type("Make it vegetarian, please.")
    page.keyboard.press("Enter")
    expect(by(page, "candidate-1")).to_contain_text("to: Make it vegetarian, please.")
    picked.append(text_of(page, "candidate-1"))
    page.keyboard.press("Escape")
    page.keyboard.press("2")
    expect(box).to_be_visible()
    expect(by(page, "pick-0")).to_have_count(0)
    by(page, "chat-finish").click()
    expect(box).to_have_value(CHATS[1])  # the next conversation
    expect(by(page, "progress")).to_have_text(re.compile("^done 1 · "))
    expect(history(page)).to_have_text(CHAT_HISTORY)

    # markdown: formatting renders, the script and handler are shown as text, never run
    open_campaign(page, live, "markdown")
    response = by(page, "response-0")
    expect(response.locator("strong")).to_have_text("Bold")
    expect(response).to_contain_text("<script>window.__pwned=1</script>")
    expect(response).to_contain_text('<img src=x onerror="window.__pwned=1">')
    assert response.locator("script, img, [onerror], a[href^=javascript]").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.keyboard.press("d")
    expect(by(page, "done-message")).to_be_visible()

    # a reload keeps every label
    page.reload()
    expect(by(page, "campaign-name")).to_have_text("markdown")
    assert page.evaluate("window.__pwned") is None
    expected_history = {
        "pairwise": ["2: A better", "7: B better"],
        "rank": ["ranks 2,1,3", "ranks 3,1,2"],
        "rate": ["rating 2", "rating 4"],
        "thumbs": ["👍", "👎"],
        "edit": ["edited", "edited"],
        "chat": CHAT_HISTORY,
        "markdown": ["👎"],
    }
    for name, rows in expected_history.items():
        open_campaign(page, live, name)
        expect(history(page)).to_have_text(rows)
    expect(by(page, "progress")).to_have_text("done 1 · remaining 0")
    open_campaign(page, live, "pairwise")
    expect_item(page, PAIRS[2][0], done=2)  # the next item is the one handed out before

    # the annotator is no admin: not from the page, not through the API with their cookie
    assert page.request.get("/api/admin/campaigns").status == 403
    assert page.request.get(f"/api/admin/campaigns/{live.campaigns['rate']}/export").status == 403
    page.goto("/admin")
    expect(by(page, "admins-only")).to_be_visible()
    expect(by(page, "admins-only")).to_contain_text("admins only")

    # the server stored what was chosen, mapped back to the original order
    def mine(name: str, fmt: str | None = None) -> list[dict[str, Any]]:
        return [r for r in live.export(name, fmt) if r["annotator"] == f"a{live.alice_id}"]

    pairs = {row["prompt"]: row for row in mine("pairwise")}
    assert len(pairs) == 2
    for prompt, better in ((PAIRS[0][0], 1), (PAIRS[1][0], 0)):  # B by mouse, A by keyboard
        row, texts = pairs[prompt], shown[prompt]
        assert (row["chosen"], row["rejected"]) == (texts[better], texts[1 - better])
        assert row["margin"] == 2.0  # 7 and 2: "better", two steps from a tie
    rankings = {row["prompt"]: row for row in mine("rank")}
    for (prompt, _), given in zip(RANKS, ([2, 0, 1], [1, 0, 2]), strict=True):
        rank_of = dict(zip(rankings[prompt]["responses"], rankings[prompt]["ranks"], strict=True))
        assert [rank_of[text] for text in ranked[prompt]] == given
    assert [(r["prompt"], r["score"]) for r in mine("rate")] == [(RATES[0], 4.0), (RATES[1], 2.0)]
    skips = live.call("GET", f"/api/admin/campaigns/{live.campaigns['rate']}").json()["skips"]
    assert [(s["annotator"], s["reason"]) for s in skips] == [("alice", "I cannot read Spanish")]
    assert [r["label"] for r in mine("thumbs")] == [False, True]
    assert [r["completion"] for r in mine("edit")] == [
        "The cat sat on the mat.",
        f"{EDITS[1][1]} How can I help?",
    ]
    chats = mine("chat")
    assert [row["chosen"] for row in chats] == [
        [{"role": "assistant", "content": t}] for t in picked
    ]
    assert chats[1]["prompt"][-1] == {"role": "user", "content": "Make it vegetarian, please."}
    (conversation,) = mine("chat", "conversation")
    assert conversation["messages"][-1] == {"role": "assistant", "content": picked[1]}
    (thumb,) = mine("markdown")
    assert thumb["completion"] == XSS and thumb["label"] is False


def test_phone_screen_stacks_the_pair(page_of: Any, live: Live) -> None:
    page = page_of(viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True)
    page.goto("/login")
    by(page, "token").fill("rlhf_not_a_token")
    by(page, "login").tap()
    expect(by(page, "error")).to_contain_text("unknown token")
    log_in(page, live.bob, "/annotate")
    by(page, f"campaign-{live.campaigns['pairwise']}").tap()
    expect(by(page, "progress")).to_have_text(re.compile("^done 0 · "))
    first, second = (by(page, f"response-{i}").bounding_box() for i in range(2))
    assert second["y"] >= first["y"] + first["height"] - 1  # B below A, not beside it
    assert abs(second["x"] - first["x"]) < 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1
    prompt = by(page, "prompt").inner_text()
    by(page, "choice-3").tap()
    expect(by(page, "progress")).to_have_text(re.compile("^done 1 · "))
    expect(by(page, "prompt")).not_to_have_text(prompt)
    expect(history(page)).to_have_text(["3: A slightly better"])
    assert page.evaluate("document.documentElement.scrollWidth") <= 375 + 1


def test_admin_exports_and_a_reward_model_trains_on_it(
    page_of: Any, live: Live, tmp_path: Path
) -> None:
    # another annotator labels every pairwise item they can, so the export has pairs
    carol = live.user("carol")["token"]
    campaign_id = live.campaigns["pairwise"]
    labelled = 0

    def next_item() -> dict[str, Any] | None:
        return live.call("GET", f"/api/campaigns/{campaign_id}/next", carol).json()["assignment"]

    while item := next_item():
        body = {"client_id": uuid.uuid4().hex, "choice": 1 + labelled % 3}
        live.call("POST", f"/api/assignments/{item['id']}/label", carol, json=body)
        labelled += 1
    assert labelled >= 3  # k = 2: all but the items two others hold already

    page = page_of()
    log_in(page, live.admin, "/admin")
    row = by(page, f"admin-campaign-{campaign_id}")
    expect(row).to_contain_text("pairwise")
    row.click()
    detail = by(page, "campaign-detail")
    expect(detail).to_be_visible()
    expect(page.locator("#detail-name")).to_have_text("pairwise · pairwise")
    carol_row = by(page, "annotator-row").filter(has_text="carol")
    expect(carol_row.locator("td").nth(1)).to_have_text(str(labelled))
    expect(by(page, "alpha")).to_have_text(
        re.compile(r"^Krippendorff's alpha: (-?\d\.\d{3}|n/a) \(\w+ metric, \d+ units? ")
    )
    by(page, "export-format").select_option("preference")
    with page.expect_download() as download:
        by(page, "export").click()
    export = tmp_path / download.value.suggested_filename
    download.value.save_as(export)
    assert export.name == "pairwise.jsonl"
    rows = [json.loads(line) for line in export.read_text().splitlines()]
    total = live.call("GET", f"/api/admin/campaigns/{campaign_id}").json()["stats"]["labels"]
    assert len(rows) == total >= labelled
    assert all({"prompt", "chosen", "rejected", "margin"} <= set(row) for row in rows)

    out = tmp_path / "rm"
    result = CliRunner().invoke(
        cli,
        [
            "rm", "--preset", "tiny", f"out={out}", f"data.train={export}",
            "data.eval_fraction=0", "train.max_steps=4", "train.batch_size=2",
            "train.warmup_steps=0", "train.eval_every=0", "train.save_every=0",
            "progress=false", "tensorboard=false",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "model" / "config.json").exists()
    assert (out / "model" / "model.safetensors").exists()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in metrics if row["split"] == "train"]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
