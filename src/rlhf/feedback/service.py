"""What the feedback app does, apart from HTTP: accounts, campaigns, assignment, labels,
statistics and export. Every function takes an open SQLAlchemy session; the caller commits.

Errors are :class:`FeedbackError` with the HTTP status the API answers with, so that a bad
request is a clear 4xx and never a 500.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import re
import secrets
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from rlhf.feedback.agreement import krippendorff_alpha
from rlhf.feedback.campaigns import NewItem
from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, Label, LoginSession, User, utcnow
from rlhf.feedback.limits import MAX_CAMPAIGN_NAME, MAX_GUIDELINES, MAX_SKIP_REASON, MAX_USER_NAME
from rlhf.feedback.tasks import (
    EXPORT_FORMATS,
    TASK_TYPES,
    LabelError,
    agreement_units,
    export_records,
    matches_gold,
    normalise_label,
    shown_value,
)

ROLES = ("admin", "annotator")
SESSION_DAYS = 14
# A pending assignment older than this goes back to the pool (its annotator left the page).
ASSIGNMENT_TIMEOUT = dt.timedelta(hours=2)
MAX_CHAT_TURNS = 20
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")

# (prompts: str or message dicts, replies per prompt) -> that many replies per prompt
Sampler = Callable[[list[Any], int], list[list[str]]]


class FeedbackError(Exception):
    """A request the app refuses, with the HTTP status and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _hash(secret: str) -> str:
    # Tokens and session ids are 256 random bits, so a fast hash is safe: there is nothing
    # to brute-force, and a stolen database gives no usable token.
    return hashlib.sha256(secret.encode()).hexdigest()


# -------------------------------------------------------------------------------- accounts


def create_user(session: Session, name: str, role: str) -> tuple[User, str]:
    """A new account and its token (shown once; only its hash is stored)."""
    name = name.strip()
    if not name or len(name) > MAX_USER_NAME:
        raise FeedbackError(422, f"name: 1 to {MAX_USER_NAME} characters")
    if role not in ROLES:
        raise FeedbackError(422, f"role: one of {', '.join(ROLES)}, not {role!r}")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise FeedbackError(409, f"name: an account named {name!r} exists")
    token = "rlhf_" + secrets.token_urlsafe(32)
    user = User(name=name, role=role, token_hash=_hash(token))
    session.add(user)
    session.flush()
    return user, token


def rotate_token(session: Session, user: User) -> str:
    """A new token for ``user``; the old one and every open session stop working."""
    token = "rlhf_" + secrets.token_urlsafe(32)
    user.token_hash = _hash(token)
    session.query(LoginSession).filter(LoginSession.user_id == user.id).delete()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    user = session.scalar(select(User).where(User.token_hash == _hash(token)))
    return user if user is not None and user.active else None


def open_session(session: Session, user: User) -> str:
    """A login session for ``user``: the cookie value (only its hash is stored)."""
    cookie = secrets.token_urlsafe(32)
    expires = utcnow() + dt.timedelta(days=SESSION_DAYS)
    session.add(LoginSession(id_hash=_hash(cookie), user_id=user.id, expires_at=expires))
    return cookie


def user_for_session(session: Session, cookie: str) -> User | None:
    login = session.get(LoginSession, _hash(cookie))
    if login is None or login.expires_at < utcnow():
        return None
    user = session.get(User, login.user_id)
    return user if user is not None and user.active else None


def close_session(session: Session, cookie: str) -> None:
    session.query(LoginSession).filter(LoginSession.id_hash == _hash(cookie)).delete()


def ensure_admin(session: Session) -> str | None:
    """On a database with no admin, create ``admin`` and return its token; else None."""
    if session.scalar(select(User.id).where(User.role == "admin").limit(1)) is not None:
        return None
    name = "admin"
    while session.scalar(select(User.id).where(User.name == name)) is not None:
        name += "_"
    return create_user(session, name, "admin")[1]


# ------------------------------------------------------------------------------- campaigns


@dataclass
class CampaignSpec:
    name: str
    task_type: str
    guidelines: str = ""
    k: int = 1
    render: str = "text"
    settings: dict[str, Any] | None = None


def check_spec(spec: CampaignSpec) -> None:
    """Refuse a bad campaign setting before any work (sampling candidates) is done."""
    if not spec.name.strip():
        raise FeedbackError(422, "name: empty")
    if len(spec.name.strip()) > MAX_CAMPAIGN_NAME:
        raise FeedbackError(422, f"name: at most {MAX_CAMPAIGN_NAME} characters")
    if len(spec.guidelines) > MAX_GUIDELINES:
        raise FeedbackError(
            422, f"guidelines: {len(spec.guidelines):,} characters, over the limit of "
            f"{MAX_GUIDELINES:,}"
        )  # fmt: skip
    if spec.task_type not in TASK_TYPES:
        raise FeedbackError(422, f"task_type: one of {', '.join(TASK_TYPES)}")
    if not 1 <= spec.k <= 50:
        raise FeedbackError(422, "k: 1 to 50 annotators per item")
    if spec.render not in ("text", "markdown"):
        raise FeedbackError(422, "render: text or markdown")


def create_campaign(session: Session, spec: CampaignSpec, items: Sequence[NewItem]) -> Campaign:
    check_spec(spec)
    name = spec.name.strip()
    if session.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise FeedbackError(409, f"name: a campaign named {name!r} exists")
    campaign = Campaign(
        name=name, task_type=spec.task_type, guidelines=spec.guidelines, k=spec.k,
        render=spec.render, settings=spec.settings or {},
    )  # fmt: skip
    session.add(campaign)
    session.flush()
    session.add_all(
        Item(
            campaign_id=campaign.id,
            position=position,
            prompt=item.prompt,
            responses=item.responses,
            gold=item.gold,
            source=item.source,
        )
        for position, item in enumerate(items)
    )
    return campaign


def get_campaign(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise FeedbackError(404, f"no campaign {campaign_id}")
    return campaign


def set_status(session: Session, campaign: Campaign, status: str) -> None:
    if status not in ("active", "paused", "closed"):
        raise FeedbackError(422, "status: active, paused or closed")
    campaign.status = status


# ------------------------------------------------------------------------------ assignment


def _expire_stale(session: Session, campaign_id: int) -> None:
    """Pending assignments older than the timeout go back to the pool; a conversation under
    way stays with its annotator (its turns are theirs)."""
    cutoff = utcnow() - ASSIGNMENT_TIMEOUT
    chatting = select(ChatTurn.id).where(ChatTurn.assignment_id == Assignment.id).exists()
    session.execute(
        update(Assignment)
        .where(Assignment.campaign_id == campaign_id, Assignment.status == "pending")
        .where(Assignment.created_at < cutoff, ~chatting)
        .values(status="expired")
    )


def _open_items(campaign: Campaign, user: User) -> Any:
    """Items of ``campaign`` that still need annotators and ``user`` has never been given."""
    taken = (
        select(Assignment.item_id, func.count().label("n"))
        .where(Assignment.campaign_id == campaign.id)
        .where(Assignment.status.in_(("pending", "done")))
        .group_by(Assignment.item_id)
        .subquery()
    )
    seen = select(Assignment.item_id).where(Assignment.user_id == user.id)
    seen = seen.where(Assignment.campaign_id == campaign.id)
    return (
        select(Item)
        .outerjoin(taken, taken.c.item_id == Item.id)
        .where(Item.campaign_id == campaign.id)
        .where(or_(taken.c.n.is_(None), taken.c.n < campaign.k))
        .where(Item.id.not_in(seen))
    )


def next_assignment(session: Session, user: User, campaign: Campaign) -> Assignment | None:
    """The annotator's current item in ``campaign``, or a new one; None when nothing is left.

    An unfinished assignment comes back first (a reload shows the same item). A new one is
    the earliest item with fewer than k live assignments that this annotator has never had;
    the unique (item, user) constraint makes "never twice" hold even under races.
    """
    if campaign.status == "closed":
        raise FeedbackError(409, f"campaign {campaign.name!r} is closed")
    # One request of this annotator at a time (two tabs asking at once must not take two
    # items); SQLite ignores the lock, its transactions are serialised anyway.
    session.execute(select(User.id).where(User.id == user.id).with_for_update())
    current = session.scalar(
        select(Assignment)
        .where(Assignment.user_id == user.id, Assignment.campaign_id == campaign.id)
        .where(Assignment.status == "pending")
        .order_by(Assignment.id)
        .limit(1)
    )
    if current is not None:
        return current  # also in a paused campaign: work handed out is not lost
    if campaign.status != "active":
        raise FeedbackError(409, f"campaign {campaign.name!r} is {campaign.status}")
    _expire_stale(session, campaign.id)
    for _ in range(500):
        # Lock the one item being handed out, not the whole campaign: concurrent annotators
        # take different items (SKIP LOCKED), and while we hold an item its count of live
        # assignments cannot change. SQLite ignores both clauses: there every transaction
        # holds the database's write lock from its start (rlhf.feedback.db).
        query = _open_items(campaign, user).order_by(Item.position).limit(1)
        item = session.scalar(query.with_for_update(of=Item, skip_locked=True))
        if item is None:
            if session.scalar(_open_items(campaign, user).limit(1)) is None:
                return None  # nothing open, locked or not
            time.sleep(0.01)  # every open item is being handed to someone else right now
            continue
        # a fresh count: the query above may predate a commit by the lock's last holder
        live = session.scalar(
            select(func.count()).select_from(Assignment)
            .where(Assignment.item_id == item.id)
            .where(Assignment.status.in_(("pending", "done")))
        )  # fmt: skip
        if live < campaign.k:
            return _assign(session, campaign, item, user)
    raise FeedbackError(503, "too many annotators asking at once; try again")


def _assign(session: Session, campaign: Campaign, item: Item, user: User) -> Assignment:
    order = list(range(len(item.responses)))
    random.SystemRandom().shuffle(order)  # display order, randomised and recorded
    assignment = Assignment(campaign_id=campaign.id, item_id=item.id, user_id=user.id, order=order)
    session.add(assignment)
    session.flush()
    return assignment


def own_assignment(session: Session, user: User, assignment_id: int) -> Assignment:
    """The assignment, if it is this annotator's; anyone else's reads as not found."""
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise FeedbackError(404, f"no assignment {assignment_id} of yours")
    return assignment


def _open(session: Session, assignment: Assignment) -> None:
    """Refuse work on an assignment that can take no more (a paused campaign still takes
    the items already handed out, so no one's work is lost)."""
    if session.get(Campaign, assignment.campaign_id).status == "closed":
        raise FeedbackError(409, "this campaign is closed")
    if assignment.status == "expired":
        raise FeedbackError(409, "this assignment expired; ask for the next item")
    if assignment.status == "skipped":
        raise FeedbackError(409, "this assignment was skipped")


def _existing_label(session: Session, user: User, client_id: str) -> Label | None:
    return session.scalar(
        select(Label).where(Label.user_id == user.id, Label.client_id == client_id)
    )


def _check_client_id(client_id: Any) -> str:
    if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
        raise FeedbackError(
            422, "client_id: 8 to 64 letters, digits, - or _ (a UUID), new per submission"
        )
    return client_id


@dataclass
class Ack:
    label_id: int
    duplicate: bool


def submit_label(session: Session, user: User, assignment_id: int, payload: dict[str, Any]) -> Ack:
    """Store a label; a retry with the same ``client_id`` returns the first one's id."""
    client_id = _check_client_id(payload.get("client_id"))
    assignment = own_assignment(session, user, assignment_id)
    existing = _existing_label(session, user, client_id)
    if existing is not None:
        if existing.assignment_id != assignment.id:
            raise FeedbackError(409, "client_id: already used for another assignment")
        return Ack(existing.id, duplicate=True)
    _open(session, assignment)
    if assignment.status == "done":
        raise FeedbackError(409, "this item is already labelled")
    campaign = session.get(Campaign, assignment.campaign_id)
    try:
        value = normalise_label(campaign.task_type, payload, assignment.order)
    except LabelError as error:
        raise FeedbackError(422, str(error)) from None
    now = utcnow()
    label = Label(
        campaign_id=assignment.campaign_id, item_id=assignment.item_id,
        assignment_id=assignment.id, user_id=user.id, client_id=client_id, value=value,
        seconds=(now - assignment.created_at).total_seconds(), created_at=now,
    )  # fmt: skip
    _leave_pending(session, assignment, "done", completed_at=now)
    session.add(label)
    session.flush()
    return Ack(label.id, duplicate=False)


def skip(session: Session, user: User, assignment_id: int, reason: str) -> None:
    assignment = own_assignment(session, user, assignment_id)
    if assignment.status == "skipped":
        return  # a retried skip
    _open(session, assignment)
    if assignment.status != "pending":
        raise FeedbackError(409, f"this assignment is {assignment.status}; it cannot be skipped")
    reason = reason.strip()
    if not reason:
        raise FeedbackError(422, "reason: say why you skip (it helps fix the campaign)")
    _leave_pending(session, assignment, "skipped", skip_reason=reason[:MAX_SKIP_REASON])


# ------------------------------------------------------------------------------------ chat


def _turns(session: Session, assignment: Assignment) -> list[ChatTurn]:
    query = select(ChatTurn).where(ChatTurn.assignment_id == assignment.id)
    return list(session.scalars(query.order_by(ChatTurn.index)))


@dataclass
class ChatRequest:
    """A chat message waiting for the model: the conversation to answer, or the turn a
    retried request already made."""

    messages: list[dict[str, str]] | None = None
    turn: ChatTurn | None = None


def chat_prepare(
    session: Session, user: User, assignment_id: int, client_id: str, message: str
) -> ChatRequest:
    """Check the annotator's next message and build the conversation the model answers
    (or find the turn a retry of this message made). The model runs between this and
    :func:`chat_record`."""
    client_id = _check_client_id(client_id)
    assignment = own_assignment(session, user, assignment_id)
    turns = _turns(session, assignment)
    for turn in turns:
        if turn.client_id == client_id:
            return ChatRequest(turn=turn)  # a retried message
    _open(session, assignment)
    campaign = session.get(Campaign, assignment.campaign_id)
    if campaign.task_type != "chat":
        raise FeedbackError(409, "this is not a chat task")
    if assignment.status == "done":
        raise FeedbackError(409, "this conversation is finished")
    if turns and turns[-1].chosen is None:
        raise FeedbackError(409, "pick the better reply of the last turn first")
    if len(turns) >= MAX_CHAT_TURNS:
        raise FeedbackError(409, f"a conversation has at most {MAX_CHAT_TURNS} turns; finish it")
    message = message.strip() if isinstance(message, str) else ""
    item = session.get(Item, assignment.item_id)
    if not turns and not message and isinstance(item.prompt, str) and item.prompt.strip():
        message = item.prompt  # the campaign's opening message
    if not message:
        raise FeedbackError(422, "message: empty")
    history = conversation(session, assignment, turns)
    return ChatRequest(messages=[*history, {"role": "user", "content": message}])


def chat_record(
    session: Session,
    user: User,
    assignment_id: int,
    client_id: str,
    messages: list[dict[str, str]],
    candidates: Sequence[str],
) -> ChatTurn:
    """Store a turn the model answered; a turn made meanwhile by a retry wins. The checks of
    :func:`chat_prepare` are made again: the conversation may have moved while the model
    wrote (finished, or another turn taken in a second tab)."""
    assignment = own_assignment(session, user, assignment_id)
    turns = _turns(session, assignment)
    for turn in turns:
        if turn.client_id == client_id:
            return turn
    _open(session, assignment)
    if assignment.status == "done":
        raise FeedbackError(409, "this conversation is finished")
    if turns and turns[-1].chosen is None:
        raise FeedbackError(409, "pick the better reply of the last turn first")
    if conversation(session, assignment, turns) != messages[:-1]:
        raise FeedbackError(409, "the conversation changed while the model wrote; reload")
    if len(candidates) != 2 or not all(isinstance(c, str) for c in candidates):
        raise FeedbackError(503, "the model did not give two replies")
    order = [0, 1]
    random.SystemRandom().shuffle(order)
    turn = ChatTurn(
        assignment_id=assignment.id, index=len(turns), client_id=client_id, messages=messages,
        candidates=list(candidates), order=order,
    )  # fmt: skip
    session.add(turn)
    session.flush()
    return turn


def conversation(
    session: Session, assignment: Assignment, turns: list[ChatTurn] | None = None
) -> list[dict[str, str]]:
    """The dialogue so far: the item's context, then each turn's message and chosen reply."""
    turns = _turns(session, assignment) if turns is None else turns
    item = session.get(Item, assignment.item_id)
    messages = list(item.prompt) if isinstance(item.prompt, list) else []
    for turn in turns:
        if turn.chosen is None:
            break
        messages = [*turn.messages, {"role": "assistant", "content": turn.candidates[turn.chosen]}]
    return messages


def chat_choose(
    session: Session, user: User, assignment_id: int, client_id: str, turn_index: int, shown: int
) -> Ack:
    """The annotator picks the reply shown at position ``shown`` (0 or 1) of a turn."""
    client_id = _check_client_id(client_id)
    assignment = own_assignment(session, user, assignment_id)
    existing = _existing_label(session, user, client_id)
    if existing is not None:
        if existing.assignment_id != assignment.id or existing.turn != turn_index:
            raise FeedbackError(409, "client_id: already used for another choice")
        return Ack(existing.id, duplicate=True)
    _open(session, assignment)
    if assignment.status == "done":
        raise FeedbackError(409, "this conversation is finished")
    if shown not in (0, 1):
        raise FeedbackError(422, "choice: 0 (the first reply shown) or 1")
    turn = session.scalar(
        select(ChatTurn).where(ChatTurn.assignment_id == assignment.id)
        .where(ChatTurn.index == turn_index)
    )  # fmt: skip
    if turn is None:
        raise FeedbackError(404, f"turn: no turn {turn_index} in this conversation")
    if turn.chosen is not None:
        raise FeedbackError(409, f"turn {turn_index} is already decided")
    turn.chosen = turn.order[shown]
    now = utcnow()
    label = Label(
        campaign_id=assignment.campaign_id, item_id=assignment.item_id,
        assignment_id=assignment.id, user_id=user.id, client_id=client_id, turn=turn_index,
        value={"chosen": turn.chosen}, seconds=(now - turn.created_at).total_seconds(),
        created_at=now,
    )  # fmt: skip
    session.add(label)
    session.flush()
    return Ack(label.id, duplicate=False)


def chat_finish(session: Session, user: User, assignment_id: int) -> None:
    assignment = own_assignment(session, user, assignment_id)
    if assignment.status == "done":
        return  # a retried finish
    _open(session, assignment)
    turns = _turns(session, assignment)
    if not any(turn.chosen is not None for turn in turns):
        raise FeedbackError(409, "pick a reply at least once before finishing")
    _leave_pending(session, assignment, "done")


def _leave_pending(session: Session, assignment: Assignment, status: str, **values: Any) -> None:
    """Move an assignment out of ``pending``, only if it still is: a concurrent expiry (which
    may already have handed the item to someone else) wins, and this request gets a 409."""
    values.setdefault("completed_at", utcnow())
    changed = session.execute(
        update(Assignment)
        .where(Assignment.id == assignment.id, Assignment.status == "pending")
        .values(status=status, **values)
    ).rowcount
    session.expire(assignment)
    if changed != 1:
        raise FeedbackError(409, "this assignment expired or changed meanwhile; ask for the next")


# ------------------------------------------------------------------------------- progress


def annotator_progress(session: Session, user: User, campaign: Campaign) -> dict[str, int]:
    done = session.scalar(
        select(func.count()).select_from(Assignment)
        .where(Assignment.user_id == user.id, Assignment.campaign_id == campaign.id)
        .where(Assignment.status == "done")
    )  # fmt: skip
    pending = session.scalar(
        select(func.count()).select_from(Assignment)
        .where(Assignment.user_id == user.id, Assignment.campaign_id == campaign.id)
        .where(Assignment.status == "pending")
    )  # fmt: skip
    query = _open_items(campaign, user).with_only_columns(func.count(Item.id))
    available = session.scalar(query) if campaign.status == "active" else 0
    return {"done": done, "remaining": available + pending}


def my_labels(session: Session, user: User, campaign_id: int | None = None) -> list[dict]:
    """The annotator's own labels, newest first (nobody else's)."""
    query = (
        select(Label, Item, Campaign, Assignment)
        .join(Item, Item.id == Label.item_id)
        .join(Campaign, Campaign.id == Label.campaign_id)
        .join(Assignment, Assignment.id == Label.assignment_id)
        .where(Label.user_id == user.id)
    )
    if campaign_id is not None:
        query = query.where(Label.campaign_id == campaign_id)
    rows = []
    for label, item, campaign, assignment in session.execute(query.order_by(Label.id.desc())):
        rows.append({
            "label_id": label.id, "campaign_id": campaign.id, "campaign": campaign.name,
            "task_type": campaign.task_type, "assignment_id": assignment.id, "turn": label.turn,
            "prompt": item.prompt,
            "value": shown_value(
                campaign.task_type, label.value,
                _shown_order(session, campaign.task_type, label, assignment),
            ),
            "created_at": label.created_at.isoformat() + "Z",
        })  # fmt: skip
    return rows


def _shown_order(session: Session, task: str, label: Label, assignment: Assignment) -> list[int]:
    if task != "chat":
        return assignment.order
    turn = session.scalar(
        select(ChatTurn).where(ChatTurn.assignment_id == label.assignment_id)
        .where(ChatTurn.index == label.turn)
    )  # fmt: skip
    return turn.order


# ------------------------------------------------------------------------------ statistics


def campaign_stats(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Progress, per-annotator throughput and gold agreement, and Krippendorff's alpha."""
    items = session.scalar(select(func.count()).where(Item.campaign_id == campaign.id))
    counts = dict(
        session.execute(
            select(Assignment.status, func.count())
            .where(Assignment.campaign_id == campaign.id).group_by(Assignment.status)
        ).all()
    )  # fmt: skip
    per_item = (
        select(Assignment.item_id)
        .where(Assignment.campaign_id == campaign.id, Assignment.status == "done")
        .group_by(Assignment.item_id)
        .having(func.count() >= campaign.k)
        .subquery()
    )
    complete = session.scalar(select(func.count()).select_from(per_item))
    labels = session.execute(
        select(Label, Item.gold, User.name, Assignment.order)
        .join(Item, Item.id == Label.item_id)
        .join(User, User.id == Label.user_id)
        .join(Assignment, Assignment.id == Label.assignment_id)
        .where(Label.campaign_id == campaign.id)
        .order_by(Label.id)
    ).all()
    by_user: dict[str, list[tuple[Label, Any]]] = defaultdict(list)
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    picked_first: dict[str, int] = defaultdict(int)
    for label, gold, name, order in labels:
        by_user[name].append((label, gold))
        by_item[label.item_id].append(label.value)
        if campaign.task_type == "pairwise":
            picked_first[name] += label.value["better"] == order[0]
    skipped = dict(
        session.execute(
            select(User.name, func.count()).select_from(Assignment)
            .join(User, User.id == Assignment.user_id)
            .where(Assignment.campaign_id == campaign.id, Assignment.status == "skipped")
            .group_by(User.name)
        ).all()
    )  # fmt: skip
    annotators = []
    for name in sorted(set(by_user) | set(skipped)):
        rows = by_user.get(name, [])
        seconds = [label.seconds for label, _ in rows]
        gold_rows = [(label, gold) for label, gold in rows if gold is not None]
        agree = sum(
            matches_gold(campaign.task_type, label.value, gold) for label, gold in gold_rows
        )
        span = (rows[-1][0].created_at - rows[0][0].created_at).total_seconds() if rows else 0
        annotators.append({
            "name": name, "labels": len(rows), "skipped": skipped.get(name, 0),
            "median_seconds": round(statistics.median(seconds), 1) if seconds else None,
            "labels_per_hour": round(3600 * (len(rows) - 1) / span, 1) if span > 0 else None,
            "gold_items": len(gold_rows),
            "gold_agreement": round(agree / len(gold_rows), 3) if gold_rows else None,
            # position bias: the responses' order is random, so ~0.5 unless A is favoured
            "picked_first": (
                round(picked_first[name] / len(rows), 3)
                if campaign.task_type == "pairwise" and rows else None
            ),
        })  # fmt: skip
    if campaign.task_type == "chat":
        by_item = {}
    units = agreement_units(campaign.task_type, {i: v for i, v in by_item.items() if len(v) > 1})
    alpha = krippendorff_alpha(units.units, units.level) if units.units else None
    return {
        "items": items, "complete_items": complete, "labels": len(labels),
        "pending": counts.get("pending", 0), "skipped": counts.get("skipped", 0),
        "annotators": annotators,
        "alpha": {
            "value": None if alpha is None else round(alpha, 4), "level": units.level,
            "units": len(units.units),
        },
    }  # fmt: skip


def skip_reasons(session: Session, campaign: Campaign) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Assignment.item_id, Assignment.skip_reason, User.name)
        .join(User, User.id == Assignment.user_id)
        .where(Assignment.campaign_id == campaign.id, Assignment.status == "skipped")
        .order_by(Assignment.id)
    )
    return [{"item_id": item, "reason": reason, "annotator": name} for item, reason, name in rows]


# ---------------------------------------------------------------------------------- export


def export_rows(session: Session, campaign: Campaign, fmt: str | None = None) -> Iterator[dict]:
    """The campaign's labels as JSON rows of data records (one or more per label).

    Each row is a record's canonical dict plus ``campaign``, ``item`` and a pseudonymous
    ``annotator`` (the account id, never the name), which the readers ignore.
    """
    fmt = fmt or EXPORT_FORMATS[campaign.task_type][0]
    if fmt not in EXPORT_FORMATS[campaign.task_type]:
        choices = ", ".join(EXPORT_FORMATS[campaign.task_type])
        raise FeedbackError(422, f"format: {campaign.task_type} campaigns export as {choices}")
    query = (
        select(Label, Item)
        .join(Item, Item.id == Label.item_id)
        .where(Label.campaign_id == campaign.id)
        .order_by(Item.position, Label.id)
    )
    last_turns: dict[int, int] = {}
    if campaign.task_type == "chat" and fmt == "conversation":
        # a finished conversation is exported once, up to its last decided turn
        last_turns = dict(
            session.execute(
                select(Label.assignment_id, func.max(Label.turn))
                .join(Assignment, Assignment.id == Label.assignment_id)
                .where(Label.campaign_id == campaign.id, Assignment.status == "done")
                .group_by(Label.assignment_id)
            ).all()
        )  # fmt: skip
    for label, item in session.execute(query):
        chat_turn = None
        if campaign.task_type == "chat":
            if fmt == "conversation" and last_turns.get(label.assignment_id) != label.turn:
                continue
            turn = session.scalar(
                select(ChatTurn).where(
                    and_(ChatTurn.assignment_id == label.assignment_id,
                         ChatTurn.index == label.turn)
                )
            )  # fmt: skip
            chat_turn = {"messages": turn.messages, "candidates": turn.candidates}
        records = export_records(
            campaign.task_type, fmt, item.prompt, item.responses, label.value, chat_turn
        )
        for record in records:
            yield {
                **record.to_dict(), "campaign": campaign.name, "item": item.id,
                "annotator": f"a{label.user_id}",
            }  # fmt: skip
