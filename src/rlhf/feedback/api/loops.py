"""Admins follow ``rlhf loop`` runs: each loop's rounds (status, labels, the round's summary:
reward-model accuracy on the fresh labels, the policy's win rate, ratings per checkpoint) and
start a round that waits for them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import AsAdmin, Id
from rlhf.feedback.api.schemas import refusals
from rlhf.feedback.db import User
from rlhf.feedback.service.loops import loops_overview, start_round

router = APIRouter(tags=["admin: loops"], responses=refusals(401, 403))


class RoundRow(BaseModel):
    number: int
    status: str  # waiting | sampling | labelling | training | done
    campaign_id: int | None
    campaign: str | None
    labels: int  # labels stored in the round's campaign so far
    summary: dict[str, Any]  # written by the loop when the round is done


class LoopRow(BaseModel):
    id: int
    name: str
    out: str
    settings: dict[str, Any]
    created_at: str
    rounds: list[RoundRow]


class Started(BaseModel):
    loop_id: int
    number: int
    status: str


@router.get("/api/admin/loops")
def loops(caller: AsAdmin) -> list[LoopRow]:
    def run(session: Session, _: User) -> list[LoopRow]:
        return [LoopRow(**row) for row in loops_overview(session)]

    return caller(run)


@router.post("/api/admin/loops/{loop_id}/start", responses=refusals(404, 409, 422))
def start(loop_id: Id, caller: AsAdmin) -> Started:
    def run(session: Session, _: User) -> Started:
        entry = start_round(session, loop_id)
        return Started(loop_id=loop_id, number=entry.number, status=entry.status)

    return caller(run)
