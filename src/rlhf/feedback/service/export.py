"""A campaign's labels exported as :mod:`rlhf.data` records, for the training commands."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, Label
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.tasks import EXPORT_FORMATS, export_records, model_columns


def export_rows(session: Session, campaign: Campaign, fmt: str | None = None) -> Iterator[dict]:
    """The campaign's labels as JSON rows of data records (one or more per label).

    Each row is a record's canonical dict plus ``campaign``, ``item`` and a pseudonymous
    ``annotator`` (the account id, never the name), which the readers ignore; an item whose
    responses name their models adds them (:func:`rlhf.feedback.tasks.model_columns`).
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
            campaign.task_type, fmt, item.prompt, item.responses, label.value, chat_turn,
            answer=item.source.get("answer"),
        )  # fmt: skip
        models = (
            (campaign.settings or {}).get("models")
            if campaign.task_type == "chat"
            else item.source.get("models")
        )
        for record in records:
            yield {
                **record.to_dict(), "campaign": campaign.name, "item": item.id,
                "annotator": f"a{label.user_id}",
                **model_columns(campaign.task_type, fmt, models, label.value),
            }  # fmt: skip
