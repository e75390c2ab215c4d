"""Labels (:class:`Label`) of the single-answer tasks: idempotent submission (one per
``client_id``) and an annotator's own labels as they saw them. Chat turns' labels are
:mod:`~rlhf.feedback.service.chat`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, Label, User, utcnow
from rlhf.feedback.service.assignments import check_open, leave_pending, own_assignment
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.tasks import LabelError, normalise_label, shown_value

CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def existing_label(session: Session, user: User, client_id: str) -> Label | None:
    return session.scalar(
        select(Label).where(Label.user_id == user.id, Label.client_id == client_id)
    )


def check_client_id(client_id: Any) -> str:
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
    client_id = check_client_id(payload.get("client_id"))
    assignment = own_assignment(session, user, assignment_id)
    existing = existing_label(session, user, client_id)
    if existing is not None:
        if existing.assignment_id != assignment.id:
            raise FeedbackError(409, "client_id: already used for another assignment")
        return Ack(existing.id, duplicate=True)
    check_open(session, assignment)
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
    leave_pending(session, assignment, "done", completed_at=now)
    session.add(label)
    session.flush()
    return Ack(label.id, duplicate=False)


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
