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
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.feedback.api import annotate, auth, campaigns, chat, export, health, pages, users
from rlhf.feedback.api.middleware import BodyLimit, Guard
from rlhf.feedback.api.state import AppState, Sampler
from rlhf.feedback.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES
from rlhf.feedback.service.errors import FeedbackError

log = logging.getLogger("rlhf.feedback")
ROUTERS = (pages, health, auth, annotate, chat, users, campaigns, export)


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
    sampler: Sampler | None = None,
    secure_cookies: bool | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The app on database ``db`` (a URL or a SQLite file path).

    ``sampler(prompts, n)`` returns n replies per prompt; with it, admins may have the
    server sample a campaign's candidates and chat campaigns work. ``secure_cookies``:
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
