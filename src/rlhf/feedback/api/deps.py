"""FastAPI dependencies of the routers: the app's shared state (:data:`State`) and the
caller, as an annotator (:data:`AsUser`) or an admin (:data:`AsAdmin`); plus the id type of
path parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from rlhf.feedback.api.middleware import bearer_token
from rlhf.feedback.api.state import AppState
from rlhf.feedback.db import User
from rlhf.feedback.service.accounts import user_for_session, user_for_token
from rlhf.feedback.service.errors import FeedbackError

T = TypeVar("T")
COOKIE = "rlhf_session"
MAX_ID = 2**63 - 1  # ids are 64-bit in every database
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


async def feedback_state(request: Request) -> AppState:
    # create_app keeps the state on its own app, so two apps in one process (as in the
    # tests) never share a database
    return request.app.state.feedback


State = Annotated[AppState, Depends(feedback_state)]

# These two only document the ways to authenticate in the OpenAPI schema (and give /docs
# its Authorize button); they never refuse anything, :func:`user_of` decides.
bearer_scheme = HTTPBearer(
    auto_error=False, description="an account's token (shown once when it is made)"
)
cookie_scheme = APIKeyCookie(
    name=COOKIE, auto_error=False, description="the session cookie set by POST /api/login"
)


def user_of(session: Session, request: Request) -> User:
    """The active account the request comes from; else a 401."""
    token = bearer_token(request.headers)  # the one mechanism, as the Guard decided
    if token is not None:
        user = user_for_token(session, token)
    elif cookie := request.cookies.get(COOKIE):
        user = user_for_session(session, cookie)
    else:
        raise FeedbackError(401, "log in first")
    if user is None:
        raise FeedbackError(401, "your session or token is not valid; log in again")
    return user


class Caller:
    """Whoever sent the request, as the way to run the route's work: ``caller(work)`` runs
    ``work(session, user)`` in one transaction that first checks who is asking.

    The check is made inside the route's transaction rather than by the dependency itself:
    a request costs one transaction (SQLite runs them one at a time), the account checked is
    the one the work sees, and a malformed request is a 422 whoever sends it, because
    FastAPI validates the parameters before the route runs.
    """

    def __init__(self, state: AppState, request: Request, admin: bool) -> None:
        self.state = state
        self.request = request
        self.admin = admin

    def __call__(self, work: Callable[[Session, User], T]) -> T:
        def run(session: Session) -> T:
            user = user_of(session, self.request)
            if self.admin and user.role != "admin":
                raise FeedbackError(403, "admins only")
            return work(session, user)

        return self.state.transaction(run)


Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
Cookie = Annotated[str | None, Security(cookie_scheme)]


async def as_user(request: Request, state: State, _: Bearer, __: Cookie) -> Caller:
    return Caller(state, request, admin=False)


async def as_admin(request: Request, state: State, _: Bearer, __: Cookie) -> Caller:
    return Caller(state, request, admin=True)


AsUser = Annotated[Caller, Depends(as_user)]
AsAdmin = Annotated[Caller, Depends(as_admin)]
