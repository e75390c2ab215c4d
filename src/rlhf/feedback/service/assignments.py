"""Assignments (:class:`Assignment`): handing items to annotators (k distinct ones per item),
expiry, skipping, the checks every write to an assignment makes, and an annotator's progress.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, User, utcnow
from rlhf.feedback.limits import MAX_SKIP_REASON
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.tasks import SHOWN_IN_ORDER

# A pending assignment older than this goes back to the pool (its annotator left the page).
ASSIGNMENT_TIMEOUT = dt.timedelta(hours=2)


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
    if campaign.task_type not in SHOWN_IN_ORDER:
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


def check_open(session: Session, assignment: Assignment) -> None:
    """Refuse work on an assignment that can take no more (a paused campaign still takes
    the items already handed out, so no one's work is lost)."""
    if session.get(Campaign, assignment.campaign_id).status == "closed":
        raise FeedbackError(409, "this campaign is closed")
    if assignment.status == "expired":
        raise FeedbackError(409, "this assignment expired; ask for the next item")
    if assignment.status == "skipped":
        raise FeedbackError(409, "this assignment was skipped")


def skip(session: Session, user: User, assignment_id: int, reason: str) -> None:
    assignment = own_assignment(session, user, assignment_id)
    if assignment.status == "skipped":
        return  # a retried skip
    check_open(session, assignment)
    if assignment.status != "pending":
        raise FeedbackError(409, f"this assignment is {assignment.status}; it cannot be skipped")
    reason = reason.strip()
    if not reason:
        raise FeedbackError(422, "reason: say why you skip (it helps fix the campaign)")
    leave_pending(session, assignment, "skipped", skip_reason=reason[:MAX_SKIP_REASON])


def leave_pending(session: Session, assignment: Assignment, status: str, **values: Any) -> None:
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
