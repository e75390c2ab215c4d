"""Simulated annotators as HTTP clients: bots that label a feedback campaign through the app's
own API, as a person's page does, while people label the same campaign.

An :class:`AnnotatorBot` logs in with an account's token (``POST /api/login``, the session
cookie the page gets), finds its campaign (``GET /api/campaigns``), then repeats: ask for the
next item (``GET /api/campaigns/{id}/next``), decide as its
:class:`~rlhf.sim.annotators.SimulatedAnnotator` would, wait ``speed`` seconds (a person
reads), and submit (``POST /api/assignments/{id}/label``) or skip (``.../skip`` with a
reason). It stops when the app has no more work for it, after ``max_labels`` labels, or when
told to. :func:`run_bots` runs several at once, a thread each; :func:`bot_accounts` makes
their accounts through the admin API. This module speaks HTTP and JSON only: the layers
contract keeps ``rlhf.sim`` from importing the app (``rlhf.feedback``).

How a bot decides, per task (responses arrive in the order shown to it, and it answers in
that order; the server maps the answer back to the item's own order):

=========  ===============================================================================
pairwise   the side: :meth:`SimulatedAnnotator.compare` of the pair, in a fixed order (the
           order shown, A first, only with a ``position_bias``, which leans to A); the strength: the annotator's probability p of
           the side it chose (:meth:`~SimulatedAnnotator.preference_probability`), its
           confidence 2p − 1 against :data:`LEVEL_CONFIDENCE` gives the level 0..3, so
           ``choice`` 4 − level (A) or 5 + level (B) on the 8-point scale
rank       :meth:`~SimulatedAnnotator.rank` (a Plackett-Luce draw), sent as 1 = best
rate       :meth:`~SimulatedAnnotator.rate`, 1..5
thumbs     :meth:`~SimulatedAnnotator.thumbs`
steps      the step world's checker (:func:`rlhf.sim.steps.check_steps`) when the prompt is
           a step-world problem (:func:`~rlhf.sim.steps.parse_problem`), else skipped; a
           ``careless`` share of items gets a random +1/-1 per step
edit, chat skipped (a simulated annotator writes no text)
=========  ===============================================================================

Networks fail and servers restart: a connection error, a 409 (a conflict the next try may
not meet) or a 503 (too busy) is tried again ``retries`` times, waiting ``backoff`` seconds,
then twice that, and so on. Any other refusal is reported with the server's message. Each
label carries a ``client_id`` made once per item (as the annotator page does), so a
submission retried after its answer was lost is stored once: the server answers the retry
with the first label (``duplicate``). Ids are random (``uuid4``), not seeded: a rerun with the
same seed must not present an old label's id. A bot never submits an assignment twice.

What a bot labels is seeded (its annotator's stream and its own), and without a position
bias it does not depend on the order the app shows a pair in (random, for blinding); but
which items it gets is the server's, so two runs differ unless the bot labels alone.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from rlhf.data.records import Message, Text
from rlhf.sim.annotators import AnnotatorPool, SimulatedAnnotator
from rlhf.sim.gold import prompt_text
from rlhf.sim.steps import check_steps, parse_problem

LABELLED_TASKS = ("pairwise", "rank", "rate", "thumbs", "steps")
SKIPPED_TASKS = ("edit", "chat")  # a simulated annotator writes no text
PAIRWISE_POINTS = 8  # the app's 8-point scale: 1 = A much better ... 8 = B much better
# the confidence 2p − 1 at which a pairwise label's level (its margin) reaches 1, 2 and 3:
# p ≥ 0.65 "better", p ≥ 0.8 "clearly better", p ≥ 0.95 "much better"
LEVEL_CONFIDENCE = (0.3, 0.6, 0.9)
RETRIED_STATUSES = frozenset({409, 503})
MAX_SKIP_REASON = 500  # the app's limit (rlhf.feedback.limits)


class BotError(Exception):
    """A bot cannot start or go on; the message says why, for people."""


class Refused(BotError):
    """The server refused a request (after the retries its status allows)."""

    def __init__(self, method: str, path: str, status: int, detail: str) -> None:
        super().__init__(f"{method} {path}: {status} {detail}")
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class CampaignInfo:
    """A campaign as ``GET /api/campaigns`` lists it."""

    id: int
    name: str
    task_type: str
    status: str


@dataclass(frozen=True)
class Skip:
    """A bot's decision to skip an item, and why (the reason goes to the server)."""

    reason: str


@dataclass
class BotReport:
    """What one bot did in one campaign."""

    bot: str  # the account's name
    campaign: str
    labelled: Counter[str] = field(default_factory=Counter)  # labels stored, per task type
    skipped: int = 0  # items skipped, each with a reason
    duplicates: int = 0  # retried submissions the server had already stored
    errors: list[str] = field(default_factory=list)  # refusals and failures, the server's words
    stopped: str = ""  # why the bot stopped
    assignments: list[int] = field(default_factory=list)  # ids of the assignments it labelled

    @property
    def labels(self) -> int:
        """Labels stored, all tasks together."""
        return sum(self.labelled.values())


def _detail(response: httpx.Response) -> str:
    """The app's refusal message (``{"detail": ...}``), or the start of whatever came."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if detail is not None:  # a framework's list of validation errors
        return str(detail)[:300]
    return response.reason_phrase or response.text[:200]


def address(client: httpx.Client) -> str:
    """The app's address as people write it (without httpx's trailing slash)."""
    return str(client.base_url).rstrip("/")


def make_client(server: str | httpx.Client, timeout: float = 30.0) -> httpx.Client:
    """``server`` itself if it is a client (it must have its ``base_url``), else a new client
    on the URL ``server``."""
    if isinstance(server, httpx.Client):
        if not str(server.base_url).strip("/"):
            raise BotError("the httpx client needs a base_url (the app's address)")
        return server
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise BotError(f"url: expected the app's address, http://HOST:PORT, got {server!r}")
    try:
        return httpx.Client(base_url=server, timeout=timeout)
    except (httpx.InvalidURL, ValueError) as error:
        raise BotError(f"url: {server!r} is not a valid address: {error}") from None


def call(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    retries: int = 3,
    backoff: float = 0.25,
) -> Any:
    """``method path`` on the app, its JSON answer. Connection errors, 409s and 503s are
    tried ``retries`` more times, ``backoff`` × 1, 2, 4, ... seconds apart, with the same
    body (so a label's ``client_id`` makes the retry idempotent); a refusal raises
    :class:`Refused` with the server's message, an unreachable server :class:`BotError`."""
    for attempt in range(retries + 1):
        last = attempt == retries
        try:
            response = client.request(method, path, json=json, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as error:
            raise BotError(f"url: {address(client)} is not a valid address: {error}") from None
        except httpx.TransportError as error:
            if last:
                reason = str(error) or type(error).__name__
                raise BotError(f"cannot reach {address(client)}: {reason}") from None
        else:
            if response.status_code in RETRIED_STATUSES and not last:
                pass  # try again below
            elif not response.is_success:
                raise Refused(method, path, response.status_code, _detail(response))
            else:
                try:
                    return response.json()
                except ValueError:
                    raise BotError(
                        f"{method} {path} answered {response.status_code} without JSON: is "
                        f"{address(client)} the rlhf feedback app?"
                    ) from None
        time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def prompt_of(messages: Sequence[dict[str, Any]]) -> Text:
    """An assignment's prompt (``[{role, text, html}, ...]``) as a record text: a lone user
    message is the plain prompt it was made from."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["text"]
    return tuple(Message(m["role"], m["text"]) for m in messages)


def pairwise_choice(annotator: SimulatedAnnotator, prompt: Text, a: str, b: str) -> int:
    """The 8-point ``choice`` of ``annotator`` for ``a`` shown first and ``b`` second (see the
    module docstring): the side drawn by :meth:`~SimulatedAnnotator.compare`, the strength
    from the probability of that side."""
    if a == b:  # nothing to prefer (campaigns refuse such pairs; old ones may hold some)
        return PAIRWISE_POINTS // 2 + (annotator.rng.random() < 0.5)
    # Without a position bias the order shown must not matter: decide on the pair in a fixed
    # order, so that the app's random display order (its blinding) does not change what a
    # seeded bot answers, and a seeded run labels the same again.
    first, second = (a, b) if annotator.position_bias or a <= b else (b, a)
    a_wins = annotator.compare(prompt, first, second).chosen == a
    p = annotator.preference_probability(prompt, a, b)
    confidence = 2 * (p if a_wins else 1 - p) - 1
    level = sum(confidence >= threshold for threshold in LEVEL_CONFIDENCE)
    middle = PAIRWISE_POINTS // 2  # 4: A negligibly better; 5: B negligibly better
    return middle - level if a_wins else middle + 1 + level


class AnnotatorBot:
    """A simulated annotator that labels through the feedback app's HTTP API.

    ``name`` is the account's name (checked at login; None: whichever account ``token``
    logs in to), ``token`` its login token;
    ``annotator`` decides (a pool: one of its annotators drawn per item; give each bot its
    own, their random streams are not shared across threads); ``server`` is the app's URL
    or an ``httpx.Client`` with its ``base_url`` (closed by :meth:`close` only if the bot made
    it). ``speed``: seconds spent on each label, on average (drawn uniformly from half to
    one and a half times it). ``seed`` fixes the bot's own draws (its pace, careless step
    labels). ``retries`` and ``backoff``: see :func:`call`.
    """

    def __init__(
        self,
        name: str | None,
        token: str,
        annotator: SimulatedAnnotator | AnnotatorPool,
        server: str | httpx.Client,
        *,
        speed: float = 0.0,
        seed: int | str = 0,
        retries: int = 3,
        backoff: float = 0.25,
        timeout: float = 30.0,
    ) -> None:
        if not (speed >= 0 and speed != float("inf")):
            raise BotError(f"speed: seconds per label, a number ≥ 0; got {speed}")
        if retries < 0:
            raise BotError(f"retries: a whole number ≥ 0, got {retries}")
        if not isinstance(token, str) or not token.strip():
            raise BotError(f"{name or 'a bot'}: no token to log in with")
        self.name = name or "bot"  # the account's, once logged in
        self.expected_name = name
        self.token, self.annotator = token.strip(), annotator
        self.speed, self.retries, self.backoff = speed, retries, backoff
        self.rng = random.Random(f"bot-{seed}")
        self._owns_client = not isinstance(server, httpx.Client)
        self.client = make_client(server, timeout)
        self.logged_in = False

    def __repr__(self) -> str:
        return f"AnnotatorBot({self.name!r}, {self.annotator!r}, {address(self.client)!r})"

    def __enter__(self) -> AnnotatorBot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        return call(
            self.client, method, path, json=json, retries=self.retries, backoff=self.backoff
        )

    # ------------------------------------------------------------------ session and campaign

    def login(self) -> None:
        """Log in as the annotator page does (``POST /api/login``: a session cookie)."""
        try:
            account = self._call("POST", "/api/login", {"token": self.token})
        except Refused as error:
            if error.status == 401:
                raise BotError(
                    f"{self.name}: {address(self.client)} refused the token "
                    f"({error.detail}); an admin makes accounts and their tokens"
                ) from None
            if error.status in (404, 405):
                raise BotError(
                    f"{self.name}: {address(self.client)} has no login endpoint "
                    f"({error.status} {error.detail}): is it the rlhf feedback app?"
                ) from None
            raise BotError(f"{self.name}: cannot log in: {error}") from None
        if not isinstance(account, dict) or "name" not in account:
            raise BotError(f"{self.name}: {address(self.client)} is not the rlhf feedback app")
        if self.expected_name is not None and account["name"] != self.expected_name:
            raise BotError(
                f"{self.name}: that token logs in to the account {account['name']!r}, not "
                f"{self.name!r}"
            )
        if account.get("role") != "annotator":
            raise BotError(
                f"{account['name']}: a bot labels as an annotator; this token is an "
                f"{account.get('role')}'s"
            )
        self.name, self.logged_in = account["name"], True

    def campaigns(self) -> list[CampaignInfo]:
        """The campaigns open to this bot (active ones, and paused ones where an item it was
        given waits)."""
        if not self.logged_in:
            self.login()
        rows = self._call("GET", "/api/campaigns")
        return [CampaignInfo(r["id"], r["name"], r["task_type"], r["status"]) for r in rows]

    def find_campaign(self, campaign: str | int) -> CampaignInfo:
        """The open campaign of this name (or id); a :class:`BotError` naming those open."""
        found = self.campaigns()
        for info in found:
            if info.name == campaign or str(info.id) == str(campaign):
                return info
        listed = ", ".join(f"{c.name!r} ({c.task_type})" for c in found) or "none"
        raise BotError(
            f"no open campaign {campaign!r} on {address(self.client)} for {self.name} "
            f"(open: {listed}; closed campaigns are not listed)"
        )

    # --------------------------------------------------------------------------- deciding

    def decide(self, assignment: dict[str, Any]) -> dict[str, Any] | Skip:
        """The label (without its ``client_id``) for an assignment as the next-item endpoint
        gives it, in the order its responses were shown; or why to skip it."""
        task = assignment["task_type"]
        prompt = prompt_of(assignment["prompt"])
        responses = [response["text"] for response in assignment["responses"]]
        annotator = self.annotator
        if isinstance(annotator, AnnotatorPool):
            annotator = annotator.pick()
        if task == "pairwise":
            return {"choice": pairwise_choice(annotator, prompt, responses[0], responses[1])}
        if task == "rank":
            return {"ranks": [rank + 1 for rank in annotator.rank(prompt, responses).ranks]}
        if task == "rate":
            return {"rating": int(annotator.rate(prompt, responses[0]).score)}
        if task == "thumbs":
            return {"up": annotator.thumbs(prompt, responses[0]).label}
        if task == "steps":
            try:
                problem = parse_problem(prompt_text(prompt))
            except ValueError:
                return Skip("a simulated annotator checks only the step world's problems")
            if annotator.careless and self.rng.random() < annotator.careless:
                return {"labels": [self.rng.choice((1, -1)) for _ in responses]}
            return {"labels": check_steps(problem, responses)}
        if task in SKIPPED_TASKS:
            return Skip(f"a simulated annotator cannot write the text a {task} item needs")
        return Skip(f"a simulated annotator cannot label {task} items")

    # --------------------------------------------------------------------------- labelling

    def _pause(self, stop: threading.Event | None) -> bool:
        """Spend a label's time; False when told to stop meanwhile."""
        if not self.speed:
            return not (stop and stop.is_set())
        seconds = self.speed * self.rng.uniform(0.5, 1.5)
        if stop is None:
            time.sleep(seconds)
            return True
        return not stop.wait(seconds)

    def _skip(self, assignment_id: int, reason: str) -> None:
        self._call(
            "POST", f"/api/assignments/{assignment_id}/skip", {"reason": reason[:MAX_SKIP_REASON]}
        )

    def label_campaign(
        self,
        campaign: str | int | CampaignInfo,
        max_labels: int | None = None,
        stop: threading.Event | None = None,
    ) -> BotReport:
        """Label ``campaign`` (a name, an id or a found one) until the app has no more work
        for this bot, ``max_labels`` labels are stored, or ``stop`` is set; what it did.

        A setup problem (the login, no such open campaign, no server) raises
        :class:`BotError`; once labelling, problems go to the report's ``errors``. An item
        whose label the server refuses is skipped (with the refusal as the reason), so the
        bot moves on instead of being handed it again. Stopped while it reads an item, the
        bot leaves it unanswered: the app hands it back to the same account next time.
        """
        if max_labels is not None and max_labels < 1:
            raise BotError(f"max_labels: a whole number ≥ 1, got {max_labels}")
        info = campaign if isinstance(campaign, CampaignInfo) else self.find_campaign(campaign)
        report = BotReport(self.name, info.name)
        answered: set[int] = set()  # assignments labelled or skipped
        refused: dict[int, str] = {}  # assignments whose label was refused, and why
        abandoned: set[int] = set()  # ... and whose skip failed too
        while True:
            if max_labels is not None and report.labels >= max_labels:
                report.stopped = f"{max_labels} label{'s' * (max_labels != 1)} done"
                break
            if stop is not None and stop.is_set():
                report.stopped = "told to stop"
                break
            try:
                answer = self._call("GET", f"/api/campaigns/{info.id}/next")
            except BotError as error:
                report.errors.append(str(error))
                report.stopped = f"the next item: {error}"
                break
            try:
                assignment = answer["assignment"]
                if assignment is None:
                    report.stopped = answer.get("message") or "nothing left to label"
                    break
                assignment_id = assignment["id"]
                if assignment_id in answered or assignment_id in abandoned:
                    report.errors.append(
                        f"assignment {assignment_id} came back after it was answered; stopping"
                    )
                    report.stopped = "an item came back"
                    break
                decision: dict[str, Any] | Skip
                if assignment_id in refused:
                    reason = f"the server refused the bot's label: {refused[assignment_id]}"
                    decision = Skip(reason)
                else:
                    decision = self.decide(assignment)
            except (KeyError, IndexError, TypeError, AttributeError) as error:
                report.errors.append(
                    f"the next item: not the answer a bot expects ({type(error).__name__}: "
                    f"{error}); is {address(self.client)} the rlhf feedback app of this version?"
                )
                report.stopped = "an unexpected answer"
                break
            if isinstance(decision, Skip):
                try:
                    self._skip(assignment_id, decision.reason)
                    report.skipped += 1
                    answered.add(assignment_id)
                except BotError as error:
                    report.errors.append(f"assignment {assignment_id}: skip: {error}")
                    abandoned.add(assignment_id)
                continue
            if not self._pause(stop):
                report.stopped = "told to stop"
                break
            # one id per item, sent again by every retry: a submission stored whose answer was
            # lost is answered from the stored copy, never stored twice
            body = {"client_id": uuid.uuid4().hex, **decision}
            try:
                ack = self._call("POST", f"/api/assignments/{assignment_id}/label", body)
            except Refused as error:
                report.errors.append(f"assignment {assignment_id}: {error}")
                refused[assignment_id] = error.detail
                continue
            except BotError as error:
                report.errors.append(f"assignment {assignment_id}: {error}")
                report.stopped = str(error)
                break
            report.labelled[assignment["task_type"]] += 1
            report.assignments.append(assignment_id)
            answered.add(assignment_id)
            report.duplicates += bool(ack.get("duplicate"))
        return report


def run_bots(
    bots: Sequence[AnnotatorBot],
    campaign: str | int,
    max_labels: int | None = None,
    stop: threading.Event | None = None,
) -> list[BotReport]:
    """Let ``bots`` label ``campaign`` at the same time, a thread each, until each stops
    (:meth:`AnnotatorBot.label_campaign`); their reports, in order.

    Every bot logs in and finds the campaign first, so a bad token or campaign name (or two
    bots of one account) is a :class:`BotError` before anything is labelled. Ctrl-C (or
    ``stop``) stops them all.
    """
    if not bots:
        raise BotError("no bots to run")
    found = [bot.find_campaign(campaign) for bot in bots]
    shared = [name for name, n in Counter(bot.name for bot in bots).items() if n > 1]
    if shared:  # they would be handed the same item, and one of them refused on it
        raise BotError(f"one bot per account: several log in as {', '.join(shared)}")
    stop = stop if stop is not None else threading.Event()

    def work(bot: AnnotatorBot, info: CampaignInfo) -> BotReport:
        try:
            return bot.label_campaign(info, max_labels, stop)
        except Exception as error:  # reported, never a traceback in another thread
            report = BotReport(bot.name, info.name, stopped="failed")
            report.errors.append(f"{type(error).__name__}: {error}")
            return report

    with ThreadPoolExecutor(max_workers=len(bots), thread_name_prefix="bot") as pool:
        futures = [pool.submit(work, bot, info) for bot, info in zip(bots, found, strict=True)]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            stop.set()
            return [future.result() for future in futures]


def bot_accounts(
    server: str | httpx.Client,
    admin_token: str,
    count: int,
    prefix: str = "bot",
    *,
    retries: int = 3,
    backoff: float = 0.25,
) -> list[tuple[str, str]]:
    """``(name, token)`` of the annotator accounts ``{prefix}-1`` .. ``{prefix}-{count}``,
    through the admin API: made where missing, else given a new token (the old one, and any
    session logged in with it, stops working). A deactivated account or an admin's of such a
    name is an error, not taken over."""
    if count < 1:
        raise BotError(f"count: a whole number of bots ≥ 1, got {count}")
    if not admin_token or not admin_token.strip():
        raise BotError("no admin token")
    client = make_client(server)
    headers = {"Authorization": f"Bearer {admin_token.strip()}"}

    def admin(method: str, path: str, json: Any = None) -> Any:
        try:
            return call(
                client, method, path, json=json, headers=headers, retries=retries, backoff=backoff
            )
        except Refused as error:
            if error.status == 401:
                raise BotError(f"the admin token was refused: {error.detail}") from None
            if error.status == 403:
                raise BotError("that token is not an admin's: bot accounts need one") from None
            raise

    try:
        existing = {user["name"]: user for user in admin("GET", "/api/admin/users")}
        accounts = []
        for index in range(1, count + 1):
            name = f"{prefix}-{index}"
            user = existing.get(name)
            if user is None:
                made = admin("POST", "/api/admin/users", {"name": name, "role": "annotator"})
                accounts.append((name, made["token"]))
                continue
            if user["role"] != "annotator":
                raise BotError(f"account {name!r} is an {user['role']}'s, not a bot's")
            if not user["active"]:
                raise BotError(
                    f"account {name!r} is deactivated: reactivate it on the admin page, or run "
                    "fewer bots"
                )
            accounts.append((name, admin("POST", f"/api/admin/users/{user['id']}/token")["token"]))
        return accounts
    finally:
        if client is not server:
            client.close()
