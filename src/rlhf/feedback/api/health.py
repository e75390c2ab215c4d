"""``GET /api/health``: whether the app can reach its database, and what it serves."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select

from rlhf.feedback.api.deps import State
from rlhf.feedback.db import SCHEMA_VERSION

router = APIRouter(tags=["health"])


class Health(BaseModel):
    ok: bool
    schema_version: int
    model: bool  # whether this server samples (campaigns from prompts, chat campaigns)
    models: list[str]  # the names of the models it serves (chat campaigns may pit two)


@router.get("/api/health")
def health(state: State) -> Health:
    with state.sessions() as session:
        session.execute(select(1))
    return Health(
        ok=True, schema_version=SCHEMA_VERSION, model=bool(state.samplers),
        models=list(state.samplers),
    )  # fmt: skip
