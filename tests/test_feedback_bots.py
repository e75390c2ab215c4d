"""Simulated annotators as HTTP clients (rlhf.sim.bots) against the feedback app served live.

Bots label a campaign of every task they support while a person labels beside them; no
assignment is answered twice, the counts add up, low-noise bots agree with the world's gold,
a retried submission whose answer was lost is stored once, a refusal is reported with the
server's words, and `rlhf feedback bots` works end to end with clear errors.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from typer.testing import CliRunner

from rlhf.cli import app as cli
from rlhf.sim import world
from rlhf.sim.annotators import RATING_RANGE, THUMBS_THRESHOLD, SimulatedAnnotator
from rlhf.sim.bots import (
    LEVEL_CONFIDENCE,
    AnnotatorBot,
    BotError,
    Skip,
    bot_accounts,
    pairwise_choice,
    run_bots,
)
from rlhf.sim.gold import gold_score
from rlhf.sim.steps import check_steps, noisy_solutions
from tests.test_feedback_e2e import Live, serve_live

# ------------------------------------------------------------------------------ the data

PROMPTS = world.prompts(60, seed=7)
GROUPS = world.behaviour_groups(PROMPTS, 3, seed=7)
# pairs whose gold differs clearly, so that a careful annotator's side is gold's
PAIRS = [
    (p, g[0], g[1])
    for p, g in zip(PROMPTS, GROUPS, strict=True)
    if abs(gold_score(p, g[0]) - gold_score(p, g[1])) >= 0.15
][:12]


def clear_best(prompt: str, group: list[str]) -> bool:
    """Three distinct responses, the best clearly ahead of the second."""
    scores = sorted((gold_score(prompt, response) for response in group), reverse=True)
    return len(set(group)) == 3 and scores[0] - scores[1] >= 0.15


RANKED = [(p, g) for p, g in zip(PROMPTS, GROUPS, strict=True) if clear_best(p, g)][:6]
SINGLES = [(p, g[0]) for p, g in zip(PROMPTS, GROUPS, strict=True)][:9]
# thumbs: responses whose gold is clearly off the threshold, so that a careful thumb is gold's
CLEAR_THUMBS = [
    (p, r)
    for p, g in zip(PROMPTS, GROUPS, strict=True)
    for r in g
    if abs(gold_score(p, r) - THUMBS_THRESHOLD) >= 0.15
][:9]
STEP_ROWS = [
    {"prompt": problem.prompt, "steps": steps}
    for problem, steps in noisy_solutions(6, seed=3, error_rate=0.4)
]
OFF_WORLD_STEPS = {"prompt": "Halve 10, then add 2.", "steps": ["10 / 2 = 5", "5 + 2 = 7"]}


def rows(pairs: list[tuple[str, ...]]) -> list[dict[str, Any]]:
    return [{"prompt": p, "responses": list(r)} for p, *r in pairs]


SOURCES = {  # name: (task, rows, extra campaign settings)
    "pairwise": ("pairwise", rows(PAIRS), {"k": 2}),
    "rank": ("rank", [{"prompt": p, "responses": g} for p, g in RANKED], {}),
    "rate": ("rate", rows(SINGLES), {}),
    "thumbs": ("thumbs", rows(CLEAR_THUMBS), {}),
    "steps": ("steps", [*STEP_ROWS, OFF_WORLD_STEPS], {}),
    "edit": ("edit", rows(SINGLES[:2]), {}),
    "retry": ("thumbs", rows(SINGLES[:4]), {}),
    "refuse": ("pairwise", rows(PAIRS[:2]), {}),
    "cli": ("thumbs", rows(SINGLES[:4]), {"k": 2}),
}
FAST = {"retries": 3, "backoff": 0.01}  # the tests' retry pace


assert len(PAIRS) == 12 and len(RANKED) == 6 and len(CLEAR_THUMBS) == 9


class Served(NamedTuple):
    live: Live
    db: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("bots") / "fb.db"
    with serve_live(db, SOURCES) as live:
        yield Served(live, db)


def stored(db: Path, campaign_id: int) -> list[dict[str, Any]]:
    """The campaign's labels as stored: who, which assignment and item, the value (in the
    item's own order), the item's prompt and responses."""
    query = """
        SELECT users.name, labels.assignment_id, labels.item_id, labels.value, items.prompt,
               items.responses, labels.client_id
        FROM labels JOIN users ON users.id = labels.user_id JOIN items ON items.id = labels.item_id
        WHERE labels.campaign_id = ?"""
    with closing(sqlite3.connect(db)) as connection:
        found = connection.execute(query, (campaign_id,)).fetchall()
    keys = ("user", "assignment", "item", "value", "prompt", "responses", "client_id")
    loaded = []
    for row in found:
        label = dict(zip(keys, row, strict=True))
        for key in ("value", "prompt", "responses"):
            label[key] = json.loads(label[key])
        loaded.append(label)
    return loaded


def skips(db: Path, campaign_id: int) -> int:
    query = "SELECT count(*) FROM assignments WHERE campaign_id = ? AND status = 'skipped'"
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(query, (campaign_id,)).fetchone()[0]


def agreement(labels: list[dict[str, Any]], agrees: Any) -> float:
    assert labels, "no labels to compare with gold"
    return sum(map(agrees, labels)) / len(labels)


def expected_rating(gold: float) -> int:
    x = (gold - RATING_RANGE[0]) / (RATING_RANGE[1] - RATING_RANGE[0])
    return min(max(round(1 + 4 * x), 1), 5)


def person_labels(live: Live, token: str, campaign_id: int, most: int, done: list[int]) -> None:
    """A person labelling through the API beside the bots: always 'A better' (2)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=live.url, headers=headers, timeout=30) as client:
        for _ in range(most):
            assignment = client.get(f"/api/campaigns/{campaign_id}/next").json()["assignment"]
            if assignment is None:
                return
            body = {"client_id": uuid.uuid4().hex, "choice": 2}
            client.post(f"/api/assignments/{assignment['id']}/label", json=body).raise_for_status()
            done.append(assignment["id"])
            time.sleep(0.01)


# ----------------------------------------------------------------- deciding, without a server


def test_position_bias_leans_a_pair_towards_the_response_shown_first():
    prompt, a, b = PAIRS[0]
    plain = SimulatedAnnotator(temperature=0.1)
    leaning = SimulatedAnnotator(temperature=0.1, position_bias=0.2, seed=1)
    assert "position_bias=0.2" in repr(leaning) and "position" not in repr(plain)

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    for first, second in ((a, b), (b, a)):  # σ((Δ + β) / τ): the lean is +β/τ whichever is first
        shift = logit(leaning.preference_probability(prompt, first, second))
        assert shift - logit(plain.preference_probability(prompt, first, second)) == (
            pytest.approx(0.2 / 0.1)
        )
    assert (
        leaning.preference_probability(prompt, a, b) + leaning.preference_probability(prompt, b, a)
        > 1
    )  # both orders lean to the first: no longer a complement
    # on a tie of gold the first shown wins σ(β / τ) = 0.88 of the time, whichever it is
    cat, tie_a, tie_b = (
        "Tell me about the cat.\n",
        "The cat is very soft.",
        "The kitten is very soft.",
    )
    assert gold_score(cat, tie_a) == gold_score(cat, tie_b)
    for first, second in ((tie_a, tie_b), (tie_b, tie_a)):
        wins = sum(leaning.compare(cat, first, second).chosen == first for _ in range(400))
        assert 0.82 * 400 < wins < 0.94 * 400
    with pytest.raises(ValueError, match="position_bias"):
        SimulatedAnnotator(position_bias=math.inf)


def test_the_pairwise_choice_follows_the_annotator_on_the_shown_order():
    prompt, a, b = PAIRS[0]
    better, worse = (a, b) if gold_score(prompt, a) > gold_score(prompt, b) else (b, a)
    careful = SimulatedAnnotator(temperature=0.01)
    assert pairwise_choice(careful, prompt, better, worse) == 1  # A much better
    assert pairwise_choice(careful, prompt, worse, better) == 8  # B much better
    # a coin-flipping annotator leans, but never strongly: p = 1/2 is level 0 (4 or 5)
    coin = SimulatedAnnotator(careless=1.0, seed=2)
    assert {pairwise_choice(coin, prompt, better, worse) for _ in range(50)} == {4, 5}
    # an unsure annotator: the side it takes with probability p is as sure as p says, the
    # other (against its own odds) the least sure, level 0
    unsure = SimulatedAnnotator(temperature=0.3, seed=3)
    p = unsure.preference_probability(prompt, better, worse)
    level = sum(2 * p - 1 >= threshold for threshold in LEVEL_CONFIDENCE)
    assert 0.5 < p < 0.95 and level < 3
    choices = Counter(pairwise_choice(unsure, prompt, better, worse) for _ in range(400))
    assert set(choices) == {4 - level, 5}
    assert choices[4 - level] / 400 == pytest.approx(p, abs=0.07)


def test_a_bot_decides_each_task_in_the_shown_order_and_skips_what_it_cannot_do():
    bot = AnnotatorBot("bot-x", "t", SimulatedAnnotator(temperature=0.01), "http://127.0.0.1:9")

    def view(task: str, prompt: str, responses: list[str]) -> dict[str, Any]:
        return {
            "task_type": task,
            "prompt": [{"role": "user", "text": prompt, "html": prompt}],
            "responses": [{"text": r, "html": r} for r in responses],
        }

    prompt, group = RANKED[0]
    ranks = bot.decide(view("rank", prompt, group))["ranks"]
    best = max(range(3), key=lambda i: gold_score(prompt, group[i]))
    assert sorted(ranks) == [1, 2, 3] and ranks[best] == 1
    assert bot.decide(view("rate", prompt, group[:1]))["rating"] in range(1, 6)
    assert isinstance(bot.decide(view("thumbs", prompt, group[:1]))["up"], bool)
    row = STEP_ROWS[0]
    from rlhf.sim.steps import parse_problem

    labels = bot.decide(view("steps", row["prompt"], row["steps"]))["labels"]
    assert labels == check_steps(parse_problem(row["prompt"]), row["steps"])
    off = bot.decide(view("steps", OFF_WORLD_STEPS["prompt"], OFF_WORLD_STEPS["steps"]))
    assert isinstance(off, Skip) and "step world" in off.reason
    assert isinstance(bot.decide(view("edit", prompt, group[:1])), Skip)
    assert isinstance(bot.decide(view("chat", prompt, [])), Skip)
    bot.close()


# ------------------------------------------------------------------------ against the app


def test_bots_label_every_task_beside_a_person(served: Served):
    live, db = served
    accounts = bot_accounts(live.url, live.admin, 3, prefix="sim", **FAST)
    assert [name for name, _ in accounts] == ["sim-1", "sim-2", "sim-3"]
    annotators = [
        SimulatedAnnotator(temperature=0.02, seed="careful-1"),
        SimulatedAnnotator(temperature=0.02, seed="careful-2"),
        SimulatedAnnotator(temperature=0.3, careless=0.3, length_bias=0.05, seed="hurried"),
    ]
    bots = [
        AnnotatorBot(name, token, annotator, live.url, speed=0.005, seed=index, **FAST)
        for index, ((name, token), annotator) in enumerate(zip(accounts, annotators, strict=True))
    ]
    careful = {"sim-1", "sim-2"}
    try:
        # pairwise, k = 2: alice labels through the API while the three bots do
        alice_done: list[int] = []
        alice = threading.Thread(
            target=person_labels,
            args=(live, live.alice, live.campaigns["pairwise"], 4, alice_done),
        )
        alice.start()
        reports = run_bots(bots, "pairwise")
        alice.join(timeout=60)
        labels = stored(db, live.campaigns["pairwise"])
        by_user = Counter(label["user"] for label in labels)
        assert len(labels) == 2 * len(PAIRS)  # every item got its k = 2 labels ...
        assert by_user["alice"] == len(alice_done)
        for report in reports:  # ... and each bot's report says what it stored
            assert report.errors == [] and report.duplicates == 0, report
            assert report.labels == by_user[report.bot] == report.labelled["pairwise"]
            assert sorted(report.assignments) == sorted(
                label["assignment"] for label in labels if label["user"] == report.bot
            )
            assert report.stopped == "nothing left to label here, thank you"
        # at most once per assignment, and never two labels of one person on one item
        assert max(Counter(label["assignment"] for label in labels).values()) == 1
        assert max(Counter((label["user"], label["item"]) for label in labels).values()) == 1

        def pair_agrees(label: dict[str, Any]) -> bool:
            prompt, responses, better = label["prompt"], label["responses"], label["value"]
            scores = [gold_score(prompt, response) for response in responses]
            return scores[better["better"]] > scores[1 - better["better"]]

        careful_labels = [label for label in labels if label["user"] in careful]
        assert len(careful_labels) >= 8
        assert agreement(careful_labels, pair_agrees) >= 0.9  # chance: 0.5
        # the margin: a careful annotator on a clear pair is sure (level 2 or 3)
        assert sum(label["value"]["level"] >= 2 for label in careful_labels) >= 0.8 * len(
            careful_labels
        )

        # rank, rate, thumbs, steps (k = 1): the bots share the items
        skipped = {}
        for name in ("rank", "rate", "thumbs", "steps"):
            reports = run_bots(bots, name)
            skipped[name] = sum(report.skipped for report in reports)
            labels = stored(db, live.campaigns[name])
            assert all(report.errors == [] for report in reports), reports
            assert sum(report.labels for report in reports) == len(labels)
            assert max(Counter(label["item"] for label in labels).values()) == 1
            for report in reports:
                assert report.labels == sum(label["user"] == report.bot for label in labels)
            if name != "steps":
                assert len(labels) == len(SOURCES[name][1])
                assert skipped[name] == 0
        ranks = stored(db, live.campaigns["rank"])
        rates = stored(db, live.campaigns["rate"])
        thumbs = stored(db, live.campaigns["thumbs"])
        steps = stored(db, live.campaigns["steps"])

        def top_agrees(label: dict[str, Any]) -> bool:
            scores = [gold_score(label["prompt"], r) for r in label["responses"]]
            return scores[label["value"]["ranks"].index(0)] == max(scores)

        def rating_agrees(label: dict[str, Any]) -> bool:
            gold = gold_score(label["prompt"], label["responses"][0])
            return abs(label["value"]["rating"] - expected_rating(gold)) <= 1

        def thumb_agrees(label: dict[str, Any]) -> bool:
            gold = gold_score(label["prompt"], label["responses"][0])
            return label["value"]["up"] == (gold > THUMBS_THRESHOLD)

        def careful_of(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [label for label in labels if label["user"] in careful]

        assert agreement(ranks, top_agrees) > 1 / 3  # all bots: chance picks the best 1 in 3
        assert agreement(careful_of(ranks), top_agrees) >= 0.75
        assert agreement(careful_of(rates), rating_agrees) >= 0.8
        assert agreement(careful_of(thumbs), thumb_agrees) >= 0.75
        # steps: the step world's problems labelled by its checker, the other one skipped
        assert len(steps) == len(STEP_ROWS)
        # a skipped item goes back to the pool: each bot that asks while it is free gets it
        # once (one that asks while another holds it finds nothing left and stops)
        assert 1 <= skipped["steps"] == skips(db, live.campaigns["steps"]) <= 3
        from rlhf.sim.steps import parse_problem

        for label in careful_of(steps):
            problem = parse_problem(label["prompt"])
            assert label["value"]["labels"] == check_steps(problem, label["responses"])

        # edit: nothing a bot can write; every bot skips every item, with a reason
        reports = run_bots(bots, "edit")
        assert all(report.errors == [] and report.labels == 0 for report in reports)
        assert all(0 <= report.skipped <= 2 for report in reports)
        assert 2 <= sum(report.skipped for report in reports) == skips(db, live.campaigns["edit"])
        assert stored(db, live.campaigns["edit"]) == []
    finally:
        for bot in bots:
            bot.close()


class Flaky(httpx.HTTPTransport):
    """A network that fails label submissions: the first answered with a 409 before it
    reaches the server, the second's answer lost after the server stored it."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[bytes] = []  # the body of every label submission tried

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/label"):
            return super().handle_request(request)
        self.labels.append(request.read())
        if len(self.labels) == 1:
            return httpx.Response(409, json={"detail": "a conflict, for the test"})
        response = super().handle_request(request)
        if len(self.labels) == 2:
            response.read()
            response.close()
            raise httpx.ReadError("the answer was lost", request=request)
        return response


def test_a_retried_label_whose_answer_was_lost_is_stored_once(served: Served):
    live, db = served
    ((name, token),) = bot_accounts(live.url, live.admin, 1, prefix="flaky", **FAST)
    transport = Flaky()
    client = httpx.Client(base_url=live.url, transport=transport, timeout=30)
    bot = AnnotatorBot(name, token, SimulatedAnnotator(seed=4), client, **FAST)
    report = bot.label_campaign("retry")
    client.close()
    assert report.errors == [] and report.labels == 4 and report.duplicates == 1
    # the 409, the lost answer and its retry carried one body, the same client_id
    assert transport.labels[0] == transport.labels[1] == transport.labels[2]
    assert len(transport.labels) == 4 + 2
    labels = stored(db, live.campaigns["retry"])
    assert len(labels) == 4 and len({label["assignment"] for label in labels}) == 4
    first = json.loads(transport.labels[0])["client_id"]
    assert sum(label["client_id"] == first for label in labels) == 1


def test_a_refused_label_is_reported_with_the_servers_message(served: Served):
    live, db = served

    class Wrong(AnnotatorBot):
        def decide(self, assignment: dict[str, Any]) -> dict[str, Any]:
            return {"choice": 9}

    ((name, token),) = bot_accounts(live.url, live.admin, 1, prefix="wrong", **FAST)
    with Wrong(name, token, SimulatedAnnotator(), live.url, **FAST) as bot:
        report = bot.label_campaign("refuse")
    assert report.labels == 0 and report.skipped == 2  # refused, then skipped: no loop
    assert len(report.errors) == 2
    assert all("422 choice: 9 is outside 1..8" in error for error in report.errors)
    assert stored(db, live.campaigns["refuse"]) == []


def test_setup_problems_are_clear_errors(served: Served):
    live, _ = served
    quick = {"retries": 0, "backoff": 0.0}

    def bot(token: str, url: str = live.url, name: str | None = None) -> AnnotatorBot:
        return AnnotatorBot(name, token, SimulatedAnnotator(), url, **quick)

    with pytest.raises(BotError, match="refused the token"):
        bot("rlhf_not-a-token").login()
    with pytest.raises(BotError, match="logs in to the account 'alice', not 'bob'"):
        bot(live.alice, name="bob").login()
    with pytest.raises(BotError, match="an admin's"):
        bot(live.admin).login()
    with pytest.raises(BotError, match=r"no open campaign 'nope' .* \(open: 'pairwise'"):
        bot(live.bob).find_campaign("nope")
    with pytest.raises(BotError, match="one bot per account: several log in as bob"):
        run_bots([bot(live.bob), bot(live.bob)], "pairwise")
    with pytest.raises(BotError, match=re.escape("cannot reach http://127.0.0.1:9:")):
        bot(live.bob, "http://127.0.0.1:9").login()
    with pytest.raises(BotError, match="url: expected the app's address"):
        bot(live.bob, "127.0.0.1:8000")
    with pytest.raises(BotError, match="admin token was refused"):
        bot_accounts(live.url, "rlhf_wrong", 1, **quick)
    with pytest.raises(BotError, match="not an admin's"):
        bot_accounts(live.url, live.bob, 1, **quick)
    # accounts of a bot's name that are not a bot's are not taken over
    live.call("POST", "/api/admin/users", json={"name": "boss-1", "role": "admin"})
    with pytest.raises(BotError, match="'boss-1' is an admin's, not a bot's"):
        bot_accounts(live.url, live.admin, 1, prefix="boss", **quick)
    off = live.user("off-1")
    live.call("PATCH", f"/api/admin/users/{off['id']}", json={"active": False})
    with pytest.raises(BotError, match="'off-1' is deactivated"):
        bot_accounts(live.url, live.admin, 1, prefix="off", **quick)


# ---------------------------------------------------------------------- the command line

runner = CliRunner()


def rlhf(*args: str) -> Any:
    return runner.invoke(cli, ["feedback", "bots", *args], catch_exceptions=False)


def test_the_bots_command_labels_and_says_what_is_wrong(served: Served):
    live, db = served
    common = ("--url", live.url, "--speed", "0", "--retries", "0")
    result = rlhf(
        *common, "--campaign", "cli", "--bots", "2", "--admin-token", live.admin,
        "--labels", "3", "--seed", "2", "--noise", "0.05", "--position-bias", "0.1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 bots labelling the thumbs campaign 'cli'" in result.output
    assert "bot-1: 3 labels (thumbs 3), 0 skipped; stopped: 3 labels done" in result.output
    assert "done: 6 labels by 2 bots" in result.output
    labels = stored(db, live.campaigns["cli"])
    assert Counter(label["user"] for label in labels) == {"bot-1": 3, "bot-2": 3}

    # an account an admin made, by its token (the campaign by id): one label on each item that
    # has fewer than k = 2
    open_items = sum(n < 2 for n in Counter(label["item"] for label in labels).values())
    open_items += len(SOURCES["cli"][1]) - len({label["item"] for label in labels})
    dave = live.user("dave")["token"]
    result = rlhf(*common, "--campaign", str(live.campaigns["cli"]), "--token", dave)
    assert result.exit_code == 0, result.output
    expected = "1 label" if open_items == 1 else f"{open_items} labels"
    assert f"dave: {expected} (thumbs {open_items}), 0 skipped" in result.output

    errors = {
        "no open campaign 'nope'": ("--campaign", "nope", "--token", dave),
        "refused the token": ("--campaign", "cli", "--token", "rlhf_wrong"),
        "the bots need accounts": ("--campaign", "cli"),
        "--bots 3 but 1 --token": ("--campaign", "cli", "--bots", "3", "--token", dave),
        "admin token was refused": ("--campaign", "cli", "--admin-token", "rlhf_wrong"),
        "a bot writes no text": ("--campaign", "edit", "--token", dave),
    }
    for message, args in errors.items():
        result = rlhf(*common, *args)
        assert result.exit_code == 1 and message in result.output, (message, result.output)
        assert "Traceback" not in result.output
    result = rlhf(
        "--url", "http://127.0.0.1:9", "--retries", "0", "--campaign", "cli", "--token", dave
    )
    assert result.exit_code == 1 and "cannot reach http://127.0.0.1:9" in result.output
    result = rlhf("--url", "localhost:8000", "--campaign", "cli", "--token", dave)
    assert result.exit_code == 1 and "url: expected the app's address" in result.output


def test_a_bots_pairwise_answer_does_not_depend_on_the_order_shown() -> None:
    from rlhf.sim.bots import PAIRWISE_POINTS, pairwise_choice

    prompt = "Tell me about the red fox.\n"
    a, b = "The red fox runs fast. It is very happy.", "The fox."
    for seed in range(20):  # a noisy annotator: each draw may go either way
        first = SimulatedAnnotator(0.5, careless=0.3, seed=seed)
        swapped = SimulatedAnnotator(0.5, careless=0.3, seed=seed)
        shown_ab = pairwise_choice(first, prompt, a, b)
        shown_ba = pairwise_choice(swapped, prompt, b, a)
        assert shown_ab == PAIRWISE_POINTS + 1 - shown_ba  # the same side, mirrored
