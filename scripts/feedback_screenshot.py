"""Regenerate docs/feedback_annotator.png, the README's picture of the annotator page.

    .venv/bin/python scripts/feedback_screenshot.py [OUT.png]

Starts the feedback app on a temporary database and a free loopback port, adds an annotator
and a pairwise campaign, labels two items (so the history has rows), and has Debian's
headless Chromium (/usr/bin/chromium) capture the third item at 1280×880.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
from playwright.sync_api import sync_playwright

from rlhf.feedback.app import create_app

OUT = Path(__file__).resolve().parents[1] / "docs" / "feedback_annotator.png"
GUIDELINES = (
    "Choose the response a careful, honest assistant would give: correct, complete and clear. "
    "Penalise made-up facts and needless alarm; length alone is not quality."
)
DONE = [  # labelled before the screenshot: (prompt, responses, choice)
    (
        "What's a good way to learn a new language as an adult?",
        [
            "Little and often: 20 minutes a day of listening and speaking beats a weekly "
            "three-hour session. Pair an app for vocabulary with conversation practice.",
            "Adults cannot really learn languages; it is best to start as a child.",
        ],
        2,
    ),
    (
        "Explain what an API is to someone who doesn't program.",
        [
            "An API is a type of database.",
            "It is like a restaurant menu: it lists what you can ask a program for and how, "
            "without you needing to know how the kitchen works.",
        ],
        7,
    ),
]
PROMPT = "My sourdough starter smells like nail polish remover. Is it ruined?"
GOOD = (
    "Almost certainly not: it is just hungry. A nail-polish (acetone-like) smell means the "
    "yeast and bacteria have run out of food. To revive it:\n\n"
    "1. Discard all but about 50 g of the starter.\n"
    "2. Feed it equal weights of flour and water (50 g each).\n"
    "3. Keep it somewhere warm (24–26 °C) and feed it every 12 hours.\n\n"
    "After two or three feedings it should smell pleasantly sour again. Only throw it out if "
    "you see pink or orange streaks or fuzzy mould."
)
BAD = (
    "Yes, that smell means your starter has gone bad and is growing harmful bacteria. Throw it "
    "away, scrub the jar with bleach and start a new one from scratch. Starters usually only "
    "last a few weeks anyway."
)
LATER = [f"Give me a tip for {topic}." for topic in ("running", "sleeping", "saving money")] * 6


class Unshuffled:
    """Show responses in source order, so the picture is the same every time."""

    def shuffle(self, order: list[int]) -> None:
        pass


def serve(db: str) -> tuple[uvicorn.Server, threading.Thread, str, str]:
    app = create_app(db)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the feedback server did not start")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    return server, thread, url, app.state.feedback.admin_token


def main(out: Path) -> None:
    random.SystemRandom = Unshuffled  # this process only: a fixed display order
    with tempfile.TemporaryDirectory() as tmp:
        server, thread, url, admin = serve(str(Path(tmp) / "feedback.db"))
        try:
            client = httpx.Client(base_url=url, timeout=30)

            def call(method: str, path: str, token: str, **kwargs) -> dict:
                headers = {"Authorization": f"Bearer {token}"}
                response = client.request(method, path, headers=headers, **kwargs)
                response.raise_for_status()
                return response.json()

            token = call("POST", "/api/admin/users", admin, json={"name": "Sam"})["token"]
            rows = [{"prompt": p, "responses": r} for p, r, _ in DONE]
            rows.append({"prompt": PROMPT, "responses": [GOOD, BAD]})
            rows += [{"prompt": p, "responses": ["Sure.", "No."]} for p in LATER]
            body = {
                "name": "Helpful assistant · round 3",
                "task_type": "pairwise",
                "guidelines": GUIDELINES,
                "source_jsonl": "".join(json.dumps(row) + "\n" for row in rows),
            }
            campaign = call("POST", "/api/admin/campaigns", admin, json=body)["id"]
            for _, _, choice in DONE:
                item = call("GET", f"/api/campaigns/{campaign}/next", token)["assignment"]
                label = {"client_id": uuid.uuid4().hex, "choice": choice}
                call("POST", f"/api/assignments/{item['id']}/label", token, json=label)
            capture(url, token, campaign, out)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def capture(url: str, token: str, campaign: int, out: Path) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(
            base_url=url,
            viewport={"width": 1280, "height": 880},
            device_scale_factor=1,
            locale="en-GB",
            timezone_id="UTC",
        )
        page = context.new_page()
        page.goto("/login")
        page.get_by_test_id("token").fill(token)
        page.get_by_test_id("login").click()
        page.wait_for_url("**/annotate")
        page.get_by_test_id(f"campaign-{campaign}").click()
        page.get_by_test_id("prompt").filter(has_text="sourdough").wait_for()
        page.get_by_test_id("history-row").nth(1).wait_for()
        page.locator("#guidelines").evaluate("details => { details.open = true; }")
        page.mouse.move(0, 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        browser.close()
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
