"""Chat campaigns' conversations (:class:`ChatTurn`): a turn is the annotator's message and
two model replies; choosing one stores a :class:`Label`. The model runs between
:func:`chat_prepare` and :func:`chat_record`, outside any transaction.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.db import Assignment, Campaign, ChatTurn, Item, Label, User, utcnow
from rlhf.feedback.service.assignments import check_open, leave_pending, own_assignment
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.service.labels import Ack, check_client_id, existing_label

MAX_CHAT_TURNS = 20


def _turns(session: Session, assignment: Assignment) -> list[ChatTurn]:
    query = select(ChatTurn).where(ChatTurn.assignment_id == assignment.id)
    return list(session.scalars(query.order_by(ChatTurn.index)))


@dataclass
class ChatRequest:
    """A chat message waiting for the model: the conversation to answer (and, in a campaign
    of model against model, the two models, candidate 0's first), or the turn a retried
    request already made."""

    messages: list[dict[str, str]] | None = None
    turn: ChatTurn | None = None
    models: list[str] | None = None


def chat_prepare(
    session: Session, user: User, assignment_id: int, client_id: str, message: str
) -> ChatRequest:
    """Check the annotator's next message and build the conversation the model answers
    (or find the turn a retry of this message made). The model runs between this and
    :func:`chat_record`."""
    client_id = check_client_id(client_id)
    assignment = own_assignment(session, user, assignment_id)
    turns = _turns(session, assignment)
    for turn in turns:
        if turn.client_id == client_id:
            return ChatRequest(turn=turn)  # a retried message
    check_open(session, assignment)
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
    return ChatRequest(
        messages=[*history, {"role": "user", "content": message}],
        models=(campaign.settings or {}).get("models"),
    )


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
    check_open(session, assignment)
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
    client_id = check_client_id(client_id)
    assignment = own_assignment(session, user, assignment_id)
    existing = existing_label(session, user, client_id)
    if existing is not None:
        if existing.assignment_id != assignment.id or existing.turn != turn_index:
            raise FeedbackError(409, "client_id: already used for another choice")
        return Ack(existing.id, duplicate=True)
    check_open(session, assignment)
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
    check_open(session, assignment)
    turns = _turns(session, assignment)
    if not any(turn.chosen is not None for turn in turns):
        raise FeedbackError(409, "pick a reply at least once before finishing")
    leave_pending(session, assignment, "done")
