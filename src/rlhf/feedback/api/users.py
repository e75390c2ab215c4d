"""Admins manage accounts: list them, create one (its token is shown once), issue a new token,
deactivate or reactivate one."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import AsAdmin, Id
from rlhf.feedback.api.schemas import Strict, refusals
from rlhf.feedback.db import User
from rlhf.feedback.limits import MAX_USER_NAME
from rlhf.feedback.service.accounts import create_user, rotate_token
from rlhf.feedback.service.errors import FeedbackError

router = APIRouter(tags=["admin: accounts"], responses=refusals(401, 403))


class UserBody(Strict):
    name: str = Field(min_length=1, max_length=MAX_USER_NAME)
    role: str = "annotator"


class UserPatch(Strict):
    active: bool


class UserRow(BaseModel):
    id: int
    name: str
    role: str
    active: bool
    created_at: str  # ISO 8601, UTC


class UserWithToken(UserRow):
    token: str = Field(description="shown this once; only its hash is stored")


def user_row(user: User) -> UserRow:
    return UserRow(
        id=user.id, name=user.name, role=user.role, active=user.active,
        created_at=user.created_at.isoformat() + "Z",
    )  # fmt: skip


def user_by_id(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise FeedbackError(404, f"no user {user_id}")
    return user


@router.get("/api/admin/users")
def users(caller: AsAdmin) -> list[UserRow]:
    def run(session: Session, _: User) -> list[UserRow]:
        return [user_row(u) for u in session.scalars(select(User).order_by(User.id))]

    return caller(run)


@router.post("/api/admin/users", status_code=201, responses=refusals(409, 413, 422))
def add_user(body: UserBody, caller: AsAdmin) -> UserWithToken:
    def run(session: Session, _: User) -> UserWithToken:
        user, token = create_user(session, body.name, body.role)
        return UserWithToken(**user_row(user).model_dump(), token=token)

    return caller(run)


@router.post("/api/admin/users/{user_id}/token", responses=refusals(404, 422))
def new_token(user_id: Id, caller: AsAdmin) -> UserWithToken:
    def run(session: Session, _: User) -> UserWithToken:
        user = user_by_id(session, user_id)
        return UserWithToken(**user_row(user).model_dump(), token=rotate_token(session, user))

    return caller(run)


@router.patch("/api/admin/users/{user_id}", responses=refusals(404, 409, 413, 422))
def patch_user(user_id: Id, body: UserPatch, caller: AsAdmin) -> UserRow:
    def run(session: Session, admin: User) -> UserRow:
        user = user_by_id(session, user_id)
        if user.id == admin.id and not body.active:
            raise FeedbackError(409, "you cannot deactivate your own account")
        user.active = body.active
        return user_row(user)

    return caller(run)
