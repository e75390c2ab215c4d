"""Accounts (:class:`User`) and their login sessions: tokens, cookies, the first admin.

Only hashes of tokens and session ids are stored; the secrets are shown once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.db import LoginSession, User, utcnow
from rlhf.feedback.limits import MAX_USER_NAME
from rlhf.feedback.service.errors import FeedbackError

ROLES = ("admin", "annotator")
SESSION_DAYS = 14


def _hash(secret: str) -> str:
    # Tokens and session ids are 256 random bits, so a fast hash is safe: there is nothing
    # to brute-force, and a stolen database gives no usable token.
    return hashlib.sha256(secret.encode()).hexdigest()


# -------------------------------------------------------------------------------- accounts


def create_user(session: Session, name: str, role: str) -> tuple[User, str]:
    """A new account and its token (shown once; only its hash is stored)."""
    name = name.strip()
    if not name or len(name) > MAX_USER_NAME:
        raise FeedbackError(422, f"name: 1 to {MAX_USER_NAME} characters")
    if role not in ROLES:
        raise FeedbackError(422, f"role: one of {', '.join(ROLES)}, not {role!r}")
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise FeedbackError(409, f"name: an account named {name!r} exists")
    token = "rlhf_" + secrets.token_urlsafe(32)
    user = User(name=name, role=role, token_hash=_hash(token))
    session.add(user)
    session.flush()
    return user, token


def rotate_token(session: Session, user: User) -> str:
    """A new token for ``user``; the old one and every open session stop working."""
    token = "rlhf_" + secrets.token_urlsafe(32)
    user.token_hash = _hash(token)
    session.query(LoginSession).filter(LoginSession.user_id == user.id).delete()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    user = session.scalar(select(User).where(User.token_hash == _hash(token)))
    return user if user is not None and user.active else None


def open_session(session: Session, user: User) -> str:
    """A login session for ``user``: the cookie value (only its hash is stored)."""
    cookie = secrets.token_urlsafe(32)
    expires = utcnow() + dt.timedelta(days=SESSION_DAYS)
    session.add(LoginSession(id_hash=_hash(cookie), user_id=user.id, expires_at=expires))
    return cookie


def user_for_session(session: Session, cookie: str) -> User | None:
    login = session.get(LoginSession, _hash(cookie))
    if login is None or login.expires_at < utcnow():
        return None
    user = session.get(User, login.user_id)
    return user if user is not None and user.active else None


def close_session(session: Session, cookie: str) -> None:
    session.query(LoginSession).filter(LoginSession.id_hash == _hash(cookie)).delete()


def ensure_admin(session: Session) -> str | None:
    """On a database with no admin, create ``admin`` and return its token; else None."""
    if session.scalar(select(User.id).where(User.role == "admin").limit(1)) is not None:
        return None
    name = "admin"
    while session.scalar(select(User.id).where(User.name == name)) is not None:
        name += "_"
    return create_user(session, name, "admin")[1]
