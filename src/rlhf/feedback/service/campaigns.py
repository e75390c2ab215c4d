"""Campaigns (:class:`Campaign` and its :class:`Item` rows): settings checks, creation,
lookup, status. Reading a campaign's source file is :mod:`rlhf.feedback.campaigns`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.campaigns import NewItem
from rlhf.feedback.db import Campaign, Item
from rlhf.feedback.limits import MAX_CAMPAIGN_NAME, MAX_GUIDELINES
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.tasks import TASK_TYPES


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
