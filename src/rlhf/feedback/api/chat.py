"""Chat campaigns, for their annotators: send a message and get two candidate replies, pick
the better one, finish the conversation. Each turn's choice is a label; the conversation up
to its last choice is exported too (:mod:`rlhf.feedback.service.chat`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import AsUser, Id, State
from rlhf.feedback.api.schemas import LabelAck, Rendered, Strict, refusals
from rlhf.feedback.db import Assignment, Campaign, ChatTurn, User
from rlhf.feedback.limits import MAX_CHAT_MESSAGE
from rlhf.feedback.render import to_html
from rlhf.feedback.service.chat import (
    MAX_CHAT_TURNS,
    ChatRequest,
    chat_choose,
    chat_finish,
    chat_prepare,
    chat_record,
)
from rlhf.feedback.tasks import shown_value

router = APIRouter(tags=["chat"], responses=refusals(401, 404, 409, 422))


class ChatBody(Strict):
    client_id: str = Field(min_length=8, max_length=64)
    message: str = Field(default="", max_length=MAX_CHAT_MESSAGE)


class ChooseBody(Strict):
    client_id: str = Field(min_length=8, max_length=64)
    turn: int = Field(ge=0, lt=MAX_CHAT_TURNS)
    choice: int = Field(ge=0, le=1)


class TurnView(BaseModel):
    """A turn as the annotator sees it: the candidates in their shown (shuffled) order."""

    index: int
    message: Rendered
    candidates: list[Rendered]
    chosen: int | None = Field(description="the position shown (0 or 1) of the chosen reply")


class TurnAnswer(BaseModel):
    turn: TurnView


class Finished(BaseModel):
    finished: bool


def turn_view(turn: ChatTurn, render: str) -> TurnView:
    user_message = turn.messages[-1]["content"]
    return TurnView(
        index=turn.index,
        message=Rendered(text=user_message, html=to_html(user_message, render)),
        candidates=[
            Rendered(text=turn.candidates[i], html=to_html(turn.candidates[i], render))
            for i in turn.order
        ],
        chosen=None
        if turn.chosen is None
        else shown_value("chat", {"chosen": turn.chosen}, turn.order)["choice"],
    )


@router.post("/api/assignments/{assignment_id}/chat", responses=refusals(413, 503))
def chat(assignment_id: Id, body: ChatBody, caller: AsUser, state: State) -> TurnAnswer:
    def answer(session: Session, turn: ChatTurn) -> TurnAnswer:
        campaign_id = session.get(Assignment, turn.assignment_id).campaign_id
        return TurnAnswer(turn=turn_view(turn, session.get(Campaign, campaign_id).render))

    def prepare(session: Session, user: User) -> TurnAnswer | ChatRequest:
        prepared = chat_prepare(session, user, assignment_id, body.client_id, body.message)
        return answer(session, prepared.turn) if prepared.turn else prepared

    request = caller(prepare)
    if isinstance(request, TurnAnswer):  # a retried message: the turn made the first time
        return request
    prepared = request.messages
    # the models answer outside any transaction: a slow reply holds no database lock
    if request.models:  # model against model: one reply from each, in the models' order
        replies = [state.sample([prepared], 1, model)[0][0] for model in request.models]
    else:
        replies = state.sample([prepared], 2)[0]

    def record(session: Session, user: User) -> TurnAnswer:
        turn = chat_record(session, user, assignment_id, body.client_id, prepared, replies)
        return answer(session, turn)

    return caller(record)


@router.post("/api/assignments/{assignment_id}/choose", responses=refusals(413))
def choose(assignment_id: Id, body: ChooseBody, caller: AsUser) -> LabelAck:
    def run(session: Session, user: User) -> LabelAck:
        ack = chat_choose(session, user, assignment_id, body.client_id, body.turn, body.choice)
        return LabelAck(label_id=ack.label_id, duplicate=ack.duplicate)

    return caller(run)


@router.post("/api/assignments/{assignment_id}/finish")
def finish(assignment_id: Id, caller: AsUser) -> Finished:
    def run(session: Session, user: User) -> Finished:
        chat_finish(session, user, assignment_id)
        return Finished(finished=True)

    return caller(run)
