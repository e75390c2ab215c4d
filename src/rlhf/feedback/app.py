"""The feedback web app: JSON API under ``/api``, pages for annotators and admins.

``create_app(db)`` builds it; ``rlhf feedback serve`` runs it under uvicorn. Every endpoint
is documented in docs/feedback.md (and live at ``/docs``). The routes are in
:mod:`rlhf.feedback.api`, one router per concern; this module assembles them.

Who may do what:

* nobody logged in: the login page, ``POST /api/login``, ``GET /api/health``;
* an annotator: their own assignments, labels and progress, nothing of anyone else's;
* an admin: everything under ``/api/admin`` (campaigns, accounts, statistics, export).

How a request is authenticated, and why cookie writes must come from the app's own origin:
:mod:`rlhf.feedback.api.middleware`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.feedback.api import (
    annotate,
    auth,
    campaigns,
    chat,
    export,
    health,
    loops,
    pages,
    users,
)
from rlhf.feedback.api.middleware import BodyLimit, Guard
from rlhf.feedback.api.state import AppState, Sampler
from rlhf.feedback.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES
from rlhf.feedback.service.errors import FeedbackError

log = logging.getLogger("rlhf.feedback")
ROUTERS = (pages, health, auth, annotate, chat, users, campaigns, export, loops)


def _message(error: RequestValidationError) -> str:
    parts = []
    for problem in error.errors()[:3]:
        if problem.get("type") == "json_invalid":
            return "body: not valid JSON"
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(
    db: str,
    sampler: Sampler | Mapping[str, Sampler] | None = None,
    secure_cookies: bool | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The app on database ``db`` (a URL or a SQLite file path).

    ``sampler(prompts, n)`` returns n replies per prompt; with it, admins may have the
    server sample a campaign's candidates and chat campaigns work. A mapping of names to
    samplers serves several models: a chat campaign may then pit two of them against each
    other (its ``models``), each turn one reply from each. ``secure_cookies``:
    None marks the cookie Secure when the request came over HTTPS (directly or as
    ``X-Forwarded-Proto`` from a proxy uvicorn trusts); True or False forces it.
    ``max_body_bytes``: the largest request body, except a campaign upload's, which may
    have ``max_upload_bytes`` (:class:`~rlhf.feedback.api.middleware.BodyLimit`).
    """
    state = AppState(db, sampler, secure_cookies)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        token = state.start()  # rlhf feedback serve has started it already, and said the token
        if token:
            log.warning("created the admin account; its token (shown once): %s", token)
        yield
        state.engine.dispose()

    app = FastAPI(title="rlhf feedback", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes)
    app.add_middleware(Guard)  # outermost: its headers go on the 413s too
    app.state.feedback = state  # what rlhf.feedback.api.deps.State hands to the routes
    app.mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static")
    for module in ROUTERS:
        app.include_router(module.router)

    @app.exception_handler(FeedbackError)
    async def feedback_error(_: Request, error: FeedbackError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _message(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code)

    return app


class ServedApp:
    """The app under uvicorn in a background thread of this process, for a program that
    also does other work (``rlhf loop`` serves its rounds' campaigns while it trains), as a
    context manager: ``url`` once entered, ``state`` the app's :class:`AppState` (its
    transactions are the ones the routes use, so the program and the routes never write at
    once). ``port`` 0: a free one; ``sampler`` as :func:`create_app` takes it."""

    def __init__(
        self,
        db: str,
        host: str = "127.0.0.1",
        port: int = 0,
        sampler: Sampler | Mapping[str, Sampler] | None = None,
    ) -> None:
        self.app = create_app(db, sampler=sampler)
        self.state: AppState = self.app.state.feedback
        self.host, self.port = host, port
        self.url = ""
        self._server: Any = None
        self._thread: Any = None
        self._socket: Any = None

    def __enter__(self) -> ServedApp:
        import socket
        import threading
        import time

        import uvicorn

        self.state.start()  # the schema before any request; the first admin's token kept
        self._socket = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((self.host, self.port))
        except OSError as error:
            self._socket.close()
            raise OSError(
                f"cannot serve the feedback app on {self.host}:{self.port}: {error}"
            ) from None
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name="feedback-app",
        )  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if not self._server.started:
            self.__exit__()
            raise RuntimeError(f"the feedback app did not start on {self.host}:{self.port}")
        port = self._socket.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self.state.engine.dispose()
