"""Logging in and out with the session cookie, and who the caller is (``/api/me``).

Scripts may skip the cookie and send ``Authorization: Bearer TOKEN`` instead
(:func:`rlhf.feedback.api.middleware.bearer_token`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import COOKIE, AsUser, State
from rlhf.feedback.api.schemas import Strict, refusals
from rlhf.feedback.db import User
from rlhf.feedback.service.accounts import (
    SESSION_DAYS,
    close_session,
    open_session,
    user_for_token,
)
from rlhf.feedback.service.errors import FeedbackError

router = APIRouter(tags=["auth"])


class LoginBody(Strict):
    token: str = Field(min_length=1, max_length=200)


class Account(BaseModel):
    name: str
    role: str  # admin or annotator


class LoggedOut(BaseModel):
    ok: bool


@router.post("/api/login", responses=refusals(401, 413, 422))
def login(body: LoginBody, request: Request, response: Response, state: State) -> Account:
    def run(session: Session) -> tuple[str, User]:
        user = user_for_token(session, body.token.strip())
        if user is None:
            raise FeedbackError(401, "unknown token")
        return open_session(session, user), user

    cookie, user = state.transaction(run)
    secure = state.secure_cookies
    if secure is None:
        forwarded = request.headers.get("x-forwarded-proto", "")
        secure = request.url.scheme == "https" or forwarded == "https"
    response.set_cookie(
        COOKIE, cookie, max_age=SESSION_DAYS * 86400, httponly=True,
        samesite="strict", secure=secure, path="/",
    )  # fmt: skip
    return Account(name=user.name, role=user.role)


@router.post("/api/logout", responses=refusals(403))
def logout(request: Request, response: Response, state: State) -> LoggedOut:
    cookie = request.cookies.get(COOKIE)
    if cookie:
        state.transaction(lambda session: close_session(session, cookie))
    response.delete_cookie(COOKIE, path="/")
    return LoggedOut(ok=True)


@router.get("/api/me", responses=refusals(401))
def me(caller: AsUser) -> Account:
    return caller(lambda _, user: Account(name=user.name, role=user.role))
