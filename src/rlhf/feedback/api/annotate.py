"""An annotator's work: the campaigns open to them, their next item, labelling or skipping
it, and their own labels. Chat campaigns' turns are :mod:`~rlhf.feedback.api.chat`'s.

An annotator sees only their own assignments and labels; another's assignment reads as not
found (:func:`rlhf.feedback.service.assignments.own_assignment`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.api.chat import TurnView, turn_view
from rlhf.feedback.api.deps import MAX_ID, AsUser, Id
from rlhf.feedback.api.schemas import LabelAck, Rendered, Strict, refusals
from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, User
from rlhf.feedback.limits import MAX_SKIP_REASON
from rlhf.feedback.render import prompt_view, to_html
from rlhf.feedback.service.assignments import annotator_progress, next_assignment, skip
from rlhf.feedback.service.campaigns import get_campaign
from rlhf.feedback.service.labels import my_labels, submit_label

router = APIRouter(tags=["annotate"], responses=refusals(401))


class SkipBody(Strict):
    reason: str = Field(max_length=MAX_SKIP_REASON)


class Progress(BaseModel):
    """The caller's own progress in a campaign."""

    done: int
    remaining: int  # open to them now, the item in hand included


class CampaignView(BaseModel):
    id: int
    name: str
    task_type: str
    guidelines: str
    k: int
    status: str
    progress: Progress


class PromptMessage(BaseModel):
    role: str
    text: str
    html: str


class AssignmentView(BaseModel):
    """An item handed to the caller, its responses in the order shown to them (random and
    recorded: labels refer to the shown order, the server maps them back). A steps item's
    responses are its steps, in their own order."""

    id: int
    campaign_id: int
    campaign: str
    task_type: str
    guidelines: str
    status: str
    prompt: list[PromptMessage]
    responses: list[Rendered]
    progress: Progress
    opening: str | None = Field(
        default=None, description="chat campaigns only: the opening message, if any"
    )
    turns: list[TurnView] | None = Field(
        default=None, description="chat campaigns only: the turns so far"
    )
    answer: str | None = Field(
        default=None, description="steps campaigns only: the problem's known final answer"
    )


class NextItem(BaseModel):
    assignment: AssignmentView | None
    message: str | None = Field(description="why there is no assignment")
    progress: Progress | None = Field(
        default=None, description="only when there is no assignment (else it has its own)"
    )


class Skipped(BaseModel):
    skipped: bool


class OwnLabel(BaseModel):
    """One of the caller's labels, its value in the order they saw the responses."""

    label_id: int
    campaign_id: int
    campaign: str
    task_type: str
    assignment_id: int
    turn: int | None = Field(description="chat campaigns: the turn the label chose in")
    prompt: str | list[dict[str, Any]]
    value: dict[str, Any]
    created_at: str


def progress_of(session: Session, user: User, campaign: Campaign) -> Progress:
    return Progress(**annotator_progress(session, user, campaign))


def campaign_view(session: Session, user: User, campaign: Campaign) -> CampaignView:
    return CampaignView(
        id=campaign.id, name=campaign.name, task_type=campaign.task_type,
        guidelines=campaign.guidelines, k=campaign.k, status=campaign.status,
        progress=progress_of(session, user, campaign),
    )  # fmt: skip


@router.get("/api/campaigns")
def campaigns(caller: AsUser) -> list[CampaignView]:
    def run(session: Session, user: User) -> list[CampaignView]:
        # active ones, and paused ones where an item handed out is waiting for this user
        in_hand = select(Assignment.campaign_id).where(
            Assignment.user_id == user.id, Assignment.status == "pending"
        )
        shown = (Campaign.status == "active") | (
            (Campaign.status == "paused") & Campaign.id.in_(in_hand)
        )
        query = select(Campaign).where(shown).order_by(Campaign.id)
        return [campaign_view(session, user, c) for c in session.scalars(query)]

    return caller(run)


def assignment_view(session: Session, user: User, assignment: Assignment) -> AssignmentView:
    campaign = session.get(Campaign, assignment.campaign_id)
    item = session.get(Item, assignment.item_id)
    render = campaign.render
    view = AssignmentView(
        id=assignment.id, campaign_id=campaign.id, campaign=campaign.name,
        task_type=campaign.task_type, guidelines=campaign.guidelines, status=assignment.status,
        prompt=prompt_view(item.prompt, render),
        responses=[
            Rendered(text=item.responses[i], html=to_html(item.responses[i], render))
            for i in assignment.order
        ],
        progress=progress_of(session, user, campaign),
    )  # fmt: skip
    if campaign.task_type == "chat":
        turns = session.scalars(
            select(ChatTurn).where(ChatTurn.assignment_id == assignment.id)
            .order_by(ChatTurn.index)
        )  # fmt: skip
        # a plain prompt opens the conversation; a list of messages is its context
        view.opening = item.prompt if isinstance(item.prompt, str) else ""
        view.prompt = [] if isinstance(item.prompt, str) else view.prompt
        view.turns = [turn_view(turn, render) for turn in turns]
    if campaign.task_type == "steps":
        view.answer = item.source.get("answer")
        if isinstance(item.prompt, str) and not item.prompt.strip():
            view.prompt = []  # a Math-Shepherd row without "Step 1:": the problem is in step 1
    return view


# exclude_unset: the chat-only fields, and the progress of an empty answer, are left out
# where they do not apply rather than sent as null
@router.get(
    "/api/campaigns/{campaign_id}/next",
    response_model_exclude_unset=True,
    responses=refusals(404, 409, 422, 503),
)
def next_item(campaign_id: Id, caller: AsUser) -> NextItem:
    def run(session: Session, user: User) -> NextItem:
        campaign = get_campaign(session, campaign_id)
        assignment = next_assignment(session, user, campaign)
        if assignment is None:
            return NextItem(
                assignment=None, message="nothing left to label here, thank you",
                progress=progress_of(session, user, campaign),
            )  # fmt: skip
        return NextItem(assignment=assignment_view(session, user, assignment), message=None)

    return caller(run)


@router.post("/api/assignments/{assignment_id}/label", responses=refusals(404, 409, 413, 422))
def label(
    assignment_id: Id,
    caller: AsUser,
    payload: Annotated[
        dict[str, Any],
        Body(
            description="client_id (new per submission) and the task's answer: choice, "
            "ranks, rating, up, text or labels (steps), in the order the responses were shown"
        ),
    ],
) -> LabelAck:
    def run(session: Session, user: User) -> LabelAck:
        ack = submit_label(session, user, assignment_id, payload)
        return LabelAck(label_id=ack.label_id, duplicate=ack.duplicate)

    return caller(run)


@router.post("/api/assignments/{assignment_id}/skip", responses=refusals(404, 409, 413, 422))
def skip_item(assignment_id: Id, body: SkipBody, caller: AsUser) -> Skipped:
    def run(session: Session, user: User) -> Skipped:
        skip(session, user, assignment_id, body.reason)
        return Skipped(skipped=True)

    return caller(run)


@router.get("/api/me/labels", responses=refusals(422))
def own_labels(
    caller: AsUser, campaign_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
) -> list[OwnLabel]:
    return caller(lambda session, user: my_labels(session, user, campaign_id))
