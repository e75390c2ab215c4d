"""``rlhf loop`` runs (:class:`Loop`) and their rounds (:class:`LoopRound`): the loop writes
where each round stands, the app shows it on the admin page, and an admin may start the next
round (a loop run with ``serve.start_rounds: admin`` waits for that).

The database is the loop's source of truth: a round's campaign and its status change in the
same transaction, so a loop killed at any point finds, on ``--resume``, each round either
before its campaign (made again from the same seeded samples) or with it (labelled on).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.feedback.db import Campaign, Label, Loop, LoopRound, utcnow
from rlhf.feedback.service.errors import FeedbackError

ROUND_STATUSES = ("waiting", "sampling", "labelling", "training", "done")


def find_loop(session: Session, name: str) -> Loop | None:
    return session.scalar(select(Loop).where(Loop.name == name))


def create_loop(session: Session, name: str, out: str, settings: dict[str, Any]) -> Loop:
    if find_loop(session, name) is not None:
        raise FeedbackError(409, f"name: a loop named {name!r} exists")
    loop = Loop(name=name, out=out, settings=settings)
    session.add(loop)
    session.flush()
    return loop


def loop_round(session: Session, loop: Loop, number: int) -> LoopRound | None:
    return session.scalar(
        select(LoopRound).where(LoopRound.loop_id == loop.id, LoopRound.number == number)
    )


def open_round(session: Session, loop: Loop, number: int, status: str) -> LoopRound:
    """Round ``number``, made with ``status`` if it is not there yet."""
    found = loop_round(session, loop, number)
    if found is not None:
        return found
    entry = LoopRound(loop_id=loop.id, number=number, status=status)
    if status != "waiting":
        entry.started_at = utcnow()
    session.add(entry)
    session.flush()
    return entry


def set_round(
    entry: LoopRound,
    status: str,
    *,
    campaign_id: int | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    if status not in ROUND_STATUSES:
        raise FeedbackError(422, f"status: one of {', '.join(ROUND_STATUSES)}")
    entry.status = status
    if campaign_id is not None:
        entry.campaign_id = campaign_id
    if summary is not None:
        entry.summary = summary
    if status == "done":
        entry.finished_at = utcnow()


def start_round(session: Session, loop_id: int) -> LoopRound:
    """An admin starts the loop's round that waits for it (409 if none waits)."""
    loop = session.get(Loop, loop_id)
    if loop is None:
        raise FeedbackError(404, f"no loop {loop_id}")
    waiting = session.scalar(
        select(LoopRound)
        .where(LoopRound.loop_id == loop.id, LoopRound.status == "waiting")
        .order_by(LoopRound.number)
    )
    if waiting is None:
        raise FeedbackError(409, "no round of this loop is waiting to be started")
    waiting.status = "sampling"
    waiting.started_at = utcnow()
    return waiting


def loops_overview(session: Session) -> list[dict[str, Any]]:
    """Every loop with its rounds: status, campaign, labels stored so far, the summary."""
    labels = dict(
        session.execute(
            select(Label.campaign_id, func.count()).group_by(Label.campaign_id)
        ).all()
    )  # fmt: skip
    names = dict(session.execute(select(Campaign.id, Campaign.name)).all())
    out = []
    for loop in session.scalars(select(Loop).order_by(Loop.id)):
        rounds = session.scalars(
            select(LoopRound).where(LoopRound.loop_id == loop.id).order_by(LoopRound.number)
        )
        out.append({
            "id": loop.id, "name": loop.name, "out": loop.out, "settings": loop.settings,
            "created_at": loop.created_at.isoformat() + "Z",
            "rounds": [
                {
                    "number": entry.number, "status": entry.status,
                    "campaign_id": entry.campaign_id,
                    "campaign": names.get(entry.campaign_id),
                    "labels": labels.get(entry.campaign_id, 0),
                    "summary": entry.summary,
                }
                for entry in rounds
            ],
        })  # fmt: skip
    return out
