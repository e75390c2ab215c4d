"""The app's shared state, one per :func:`~rlhf.feedback.app.create_app`: the database, the
models to sample from (if any, by name), and the transaction every request runs in. Routes receive it
through :data:`rlhf.feedback.api.deps.State`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from rlhf.feedback.db import SchemaError, database_url, make_engine, migrate, session_factory
from rlhf.feedback.service.accounts import ensure_admin
from rlhf.feedback.service.errors import FeedbackError

log = logging.getLogger("rlhf.feedback")
T = TypeVar("T")

# (prompts: str or message dicts, replies per prompt) -> that many replies per prompt
Sampler = Callable[[list[Any], int], list[list[str]]]
DEFAULT_MODEL = "model"  # the name of a server's one model when it serves one unnamed


class AppState:
    """The app's shared state: the database and, if serving models, their samplers by name
    (one sampler alone is named :data:`DEFAULT_MODEL`)."""

    def __init__(
        self,
        db: str,
        sampler: Sampler | Mapping[str, Sampler] | None,
        secure_cookies: bool | None,
    ) -> None:
        self.url = database_url(db)
        self.engine = make_engine(self.url)
        self.sessions = session_factory(self.engine)
        if sampler is None:
            self.samplers: dict[str, Sampler] = {}
        elif isinstance(sampler, Mapping):
            self.samplers = dict(sampler)
        else:
            self.samplers = {DEFAULT_MODEL: sampler}
        self.secure_cookies = secure_cookies
        self.admin_token: str | None = None
        self.started = False
        # one generation at a time: the model and its KV cache are not thread-safe
        self._model_lock = threading.Lock()
        # SQLite runs one transaction at a time anyway (each takes the write lock when it
        # begins); queueing them here, in arrival order, replaces SQLite's busy handler, which
        # polls with growing sleeps and left some requests waiting seconds under load.
        sqlite = self.url.startswith("sqlite")
        self._one_at_a_time = threading.Lock() if sqlite else contextlib.nullcontext()

    def start(self) -> str | None:
        """Create or migrate the schema; the first call on a database without an admin
        creates one and returns its token (later calls return None)."""
        if self.started:
            return None
        try:
            migrate(self.engine)
            with self.sessions() as session:
                self.admin_token = ensure_admin(session)
                session.commit()
        except OperationalError as error:
            reason = str(error.orig or error).strip().splitlines()[0]
            raise SchemaError(f"cannot open the database {self.engine.url!r}: {reason}") from None
        self.started = True
        return self.admin_token

    def transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a transaction and commit before answering (an acknowledged label
        is a stored label). A unique-constraint race is retried once: the retry sees the
        winner's row (e.g. the first copy of a retried submission) and answers from it."""
        for attempt in range(2):
            with self._one_at_a_time, self.sessions() as session:
                try:
                    result = work(session)
                    session.commit()
                    return result
                except IntegrityError as error:
                    session.rollback()
                    if attempt:
                        raise FeedbackError(
                            409, "a concurrent request conflicted; retry"
                        ) from error
        raise AssertionError("unreachable")

    def sample(self, prompts: list[Any], n: int, model: str | None = None) -> list[list[str]]:
        """n replies per prompt from ``model`` (None: the server's first model)."""
        if not self.samplers:
            raise FeedbackError(503, "this server has no model (serve with --model)")
        name = model if model is not None else next(iter(self.samplers))
        if name not in self.samplers:
            served = ", ".join(self.samplers)
            raise FeedbackError(503, f"this server does not serve the model {name!r} ({served})")
        with self._model_lock:
            try:
                replies = self.samplers[name](prompts, n)
            except Exception as error:
                log.exception("sampling failed")
                raise FeedbackError(503, f"the model could not answer: {error}") from error
        if len(replies) != len(prompts) or any(len(group) != n for group in replies):
            raise FeedbackError(503, f"the model gave the wrong number of replies (asked {n} each)")
        return replies
