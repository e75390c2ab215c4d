"""Admins manage campaigns: list them, create one (from an uploaded source, or from prompts
the server's model answers), see one's statistics and skip reasons, and pause, reopen or
close it. Exporting its labels is :mod:`~rlhf.feedback.api.export`'s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import AsAdmin, Id, State
from rlhf.feedback.api.schemas import Strict, refusals
from rlhf.feedback.api.state import AppState
from rlhf.feedback.campaigns import NewItem, SourceError, items_from_row, parse_source
from rlhf.feedback.db import Campaign, Item, Label, User
from rlhf.feedback.limits import MAX_CAMPAIGN_NAME, MAX_GUIDELINES
from rlhf.feedback.service.campaigns import (
    CampaignSpec,
    check_spec,
    create_campaign,
    get_campaign,
    set_status,
)
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.service.stats import campaign_stats, skip_reasons
from rlhf.feedback.tasks import EXPORT_FORMATS

router = APIRouter(tags=["admin: campaigns"], responses=refusals(401, 403))


class SampleBody(Strict):
    prompts_jsonl: str = Field(min_length=1)
    n: int = Field(default=2, ge=1, le=9)
    models: list[str] | None = Field(
        default=None,
        description="two of the models this server serves: each prompt gets one reply from "
        "each (pairwise), blinded and in a random order, for model against model",
    )


class CampaignBody(Strict):
    name: str = Field(min_length=1, max_length=MAX_CAMPAIGN_NAME)
    task_type: str
    guidelines: str = Field(default="", max_length=MAX_GUIDELINES)
    k: int = 1
    render: str = "text"
    source_jsonl: str | None = None
    sample: SampleBody | None = None
    models: list[str] | None = Field(
        default=None,
        description="chat campaigns: two of the models this server serves; each turn's two "
        "replies then come one from each (blinded, in a random order)",
    )


def check_models(state: AppState, models: list[str] | None, where: str) -> None:
    """Two distinct models, both served here (model-against-model campaigns)."""
    if models is None:
        return
    if len(models) != 2 or models[0] == models[1]:
        raise FeedbackError(422, f"{where}: two different models, got {models}")
    missing = [name for name in models if name not in state.samplers]
    if missing:
        served = ", ".join(state.samplers) or "none"
        raise FeedbackError(
            422, f"{where}: this server does not serve {', '.join(missing)} (it serves {served})"
        )


class CampaignPatch(Strict):
    status: str


class CampaignSummary(BaseModel):
    id: int
    name: str
    task_type: str
    guidelines: str
    k: int  # distinct annotators per item
    render: str
    status: str
    items: int
    labels: int
    created_at: str  # ISO 8601, UTC
    export_formats: list[str]  # the first is the default


class AnnotatorStats(BaseModel):
    name: str
    labels: int
    skipped: int
    median_seconds: float | None
    labels_per_hour: float | None
    gold_items: int
    gold_agreement: float | None
    picked_first: float | None = Field(
        description="pairwise only: how often the response shown first won (~0.5 unbiased)"
    )


class Alpha(BaseModel):
    """Krippendorff's alpha over the items labelled more than once."""

    value: float | None
    level: str
    units: int


class CampaignStats(BaseModel):
    items: int
    complete_items: int  # labelled by k annotators
    labels: int
    pending: int
    skipped: int
    annotators: list[AnnotatorStats]
    alpha: Alpha


class SkipReason(BaseModel):
    item_id: int
    reason: str | None
    annotator: str


class CampaignDetail(CampaignSummary):
    stats: CampaignStats
    skips: list[SkipReason]


def summary(session: Session, campaign: Campaign) -> CampaignSummary:
    items = session.scalar(select(func.count()).where(Item.campaign_id == campaign.id))
    labels = session.scalar(select(func.count()).where(Label.campaign_id == campaign.id))
    return CampaignSummary(
        id=campaign.id, name=campaign.name, task_type=campaign.task_type,
        guidelines=campaign.guidelines, k=campaign.k, render=campaign.render,
        status=campaign.status, items=items, labels=labels,
        created_at=campaign.created_at.isoformat() + "Z",
        export_formats=list(EXPORT_FORMATS[campaign.task_type]),
    )  # fmt: skip


@router.get("/api/admin/campaigns")
def admin_campaigns(caller: AsAdmin) -> list[CampaignSummary]:
    def run(session: Session, _: User) -> list[CampaignSummary]:
        query = select(Campaign).order_by(Campaign.id)
        return [summary(session, c) for c in session.scalars(query)]

    return caller(run)


@router.post("/api/admin/campaigns", status_code=201, responses=refusals(409, 413, 422, 503))
def add_campaign(body: CampaignBody, caller: AsAdmin, state: State) -> CampaignSummary:
    caller(lambda session, user: None)  # a non-admin is refused before any work
    settings = {"models": body.models} if body.models is not None else None
    spec = CampaignSpec(body.name, body.task_type, body.guidelines, body.k, body.render, settings)
    check_spec(spec)  # before the model samples anything
    if body.models is not None and body.task_type != "chat":
        raise FeedbackError(422, "models: a chat campaign's (sample.models pits two models in "
                            "a pairwise one)")  # fmt: skip
    check_models(state, body.models, "models")
    if body.sample is not None and body.sample.models is not None:
        if body.task_type != "pairwise":
            raise FeedbackError(422, "sample.models: two models' replies make pairwise items")
        check_models(state, body.sample.models, "sample.models")
    if (body.source_jsonl is None) == (body.sample is None):
        raise FeedbackError(422, "give exactly one of source_jsonl or sample")
    if body.sample is not None and body.task_type == "steps":
        raise FeedbackError(
            422, "sample: a steps campaign labels solutions already split into steps; upload "
            "them as source_jsonl (step records, PRM800K or Math-Shepherd rows)"
        )  # fmt: skip
    try:
        if body.source_jsonl is not None:
            items = parse_source(body.task_type, body.source_jsonl)
        else:
            items = sampled_items(state, body.task_type, body.sample)
    except SourceError as error:
        raise FeedbackError(422, f"source: {error}") from None

    def run(session: Session, _: User) -> CampaignSummary:
        campaign = create_campaign(session, spec, items)
        session.flush()
        return summary(session, campaign)

    return caller(run)


def sampled_items(state: AppState, task: str, sample: SampleBody) -> list[NewItem]:
    prompts = parse_source("chat", sample.prompts_jsonl)  # rows need only a prompt
    if any(not item.prompt for item in prompts):
        raise SourceError("every prompt must be non-empty to sample responses for it")
    texts = [item.prompt for item in prompts]
    if sample.models is not None:  # one reply from each model, the item naming them
        first, second = (state.sample(texts, 1, model) for model in sample.models)
        pairs: list[NewItem] = []
        for item, a, b in zip(prompts, first, second, strict=True):
            if a[0] != b[0]:  # identical replies say nothing about the models
                row = {"prompt": item.prompt, "responses": [a[0], b[0]], "models": sample.models}
                pairs.extend(items_from_row(task, row, item.source["line"]))
        return pairs
    replies = state.sample(texts, sample.n)
    items: list[NewItem] = []
    for item, responses in zip(prompts, replies, strict=True):
        row: dict[str, Any] = {"prompt": item.prompt, "responses": responses}
        items.extend(items_from_row(task, row, item.source["line"]))
    return items


@router.get("/api/admin/campaigns/{campaign_id}", responses=refusals(404, 422))
def campaign_detail(campaign_id: Id, caller: AsAdmin) -> CampaignDetail:
    def run(session: Session, _: User) -> CampaignDetail:
        campaign = get_campaign(session, campaign_id)
        return CampaignDetail(
            **summary(session, campaign).model_dump(),
            stats=campaign_stats(session, campaign),
            skips=skip_reasons(session, campaign),
        )

    return caller(run)


@router.patch("/api/admin/campaigns/{campaign_id}", responses=refusals(404, 413, 422))
def patch_campaign(campaign_id: Id, body: CampaignPatch, caller: AsAdmin) -> CampaignSummary:
    def run(session: Session, _: User) -> CampaignSummary:
        campaign = get_campaign(session, campaign_id)
        set_status(session, campaign, body.status)
        return summary(session, campaign)

    return caller(run)
