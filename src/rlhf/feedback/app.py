"""The feedback web app: JSON API under ``/api``, pages for annotators and admins.

``create_app(db)`` builds it; ``rlhf feedback serve`` runs it under uvicorn. Every endpoint
is documented in docs/feedback.md (and live at ``/docs``).

Who may do what:

* nobody logged in: the login page, ``POST /api/login``, ``GET /api/health``;
* an annotator: their own assignments, labels and progress, nothing of anyone else's;
* an admin: everything under ``/api/admin`` (campaigns, accounts, statistics, export).

A request is authenticated by exactly one of ``Authorization: Bearer TOKEN`` or the session
cookie set by ``/api/login`` (:func:`bearer_token` decides). The cookie is HttpOnly and
SameSite=Strict (so no other site can submit in an annotator's name), Secure whenever the app
is reached over HTTPS, and a write made with it must come from the app's own origin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Annotated, Any, TypeVar

from fastapi import Body, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhf.feedback import service
from rlhf.feedback.campaigns import NewItem, SourceError, items_from_row, parse_source
from rlhf.feedback.db import (
    SCHEMA_VERSION,
    Assignment,
    Campaign,
    ChatTurn,
    Item,
    Label,
    SchemaError,
    User,
    database_url,
    make_engine,
    migrate,
    session_factory,
)
from rlhf.feedback.limits import (
    MAX_BODY_BYTES,
    MAX_CAMPAIGN_NAME,
    MAX_CHAT_MESSAGE,
    MAX_GUIDELINES,
    MAX_SKIP_REASON,
    MAX_UPLOAD_BYTES,
    MAX_USER_NAME,
)
from rlhf.feedback.render import prompt_view, to_html
from rlhf.feedback.service import FeedbackError, Sampler
from rlhf.feedback.tasks import EXPORT_FORMATS, shown_value, text_problem

log = logging.getLogger("rlhf.feedback")
COOKIE = "rlhf_session"
STATIC = files("rlhf.feedback") / "static"
T = TypeVar("T")


MAX_ID = 2**63 - 1  # ids are 64-bit in every database
Id = Annotated[int, Path(ge=1, le=MAX_ID)]


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# No inline script anywhere, on every page: a script that slipped into model text could not
# run even if it reached the page unescaped.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (maybe empty), or None.

    This alone decides how a request is authenticated: a Bearer header means the token and
    nothing else (an invalid one is refused, never replaced by the cookie); any other
    request, one with another scheme such as Basic from a proxy included, is a cookie
    request and its writes pass :func:`cross_site`.
    """
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def cross_site(headers: Headers) -> str | None:
    """Why a cookie-authenticated write must be refused as cross-site, or None.

    SameSite=Strict keeps the cookie off other *sites*, but another port or subdomain of the
    same site still sends it; the browser's Sec-Fetch-Site and Origin headers tell those
    apart. Scripts using a Bearer token are not affected (no ambient credential).
    """
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"refused: a {site} request may not act with your session"
    origin = headers.get("origin")
    if origin is None:
        return None
    hosts = {headers.get("host"), headers.get("x-forwarded-host")}
    if urllib.parse.urlsplit(origin).netloc not in hosts - {None}:
        return f"refused: a request from {origin} may not act with your session"
    return None


class Guard:
    """ASGI middleware: refuses cross-origin writes made with the session cookie
    (:func:`cross_site`) and puts the security headers on every answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if scope["method"] not in SAFE_METHODS and bearer_token(headers) is None:
            refusal = cross_site(headers)
            if refusal:
                return await JSONResponse({"detail": refusal}, 403)(scope, receive, send)
        api_pages = scope["path"].startswith(("/docs", "/redoc"))  # FastAPI's own, not ours

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for header, value in SECURITY_HEADERS.items():
                    response_headers.setdefault(header, value)
                if not api_pages:
                    response_headers.setdefault("Content-Security-Policy", CSP)
            await send(message)

        await self.app(scope, receive, send_secured)


# the requests that carry a campaign's whole source file, under the larger upload limit
UPLOADS = {("POST", "/api/admin/campaigns")}


class TooLarge(HTTPException):
    """A request body over its limit. Raised while FastAPI reads the body, it passes through
    FastAPI's body parsing (which turns other errors into a 400) to the app's JSON answer."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body: over this server's limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: refuses a request body over ``limit`` bytes (``upload_limit`` for the
    :data:`UPLOADS`) with a 413 before it is buffered: at once when its Content-Length says
    so, else as soon as the chunks received pass the limit (a chunked body declares none)."""

    def __init__(self, app: Any, limit: int, upload_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = (scope["method"], scope["path"]) in UPLOADS
        limit = self.upload_limit if upload else self.limit
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdecimal() and int(declared) > limit:
            refusal = TooLarge(limit)
            response = JSONResponse({"detail": refusal.detail}, refusal.status_code)
            return await response(scope, receive, send)
        received = 0

        async def receive_within_limit() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TooLarge(limit)
            return message

        await self.app(scope, receive_within_limit, send)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def storable(cls, value: Any) -> Any:
        problem = text_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)  # pydantic names the field
        return value


class LoginBody(Strict):
    token: str = Field(min_length=1, max_length=200)


class SkipBody(Strict):
    reason: str = Field(max_length=MAX_SKIP_REASON)


class ChatBody(Strict):
    client_id: str = Field(min_length=8, max_length=64)
    message: str = Field(default="", max_length=MAX_CHAT_MESSAGE)


class ChooseBody(Strict):
    client_id: str = Field(min_length=8, max_length=64)
    turn: int = Field(ge=0, lt=service.MAX_CHAT_TURNS)
    choice: int = Field(ge=0, le=1)


class UserBody(Strict):
    name: str = Field(min_length=1, max_length=MAX_USER_NAME)
    role: str = "annotator"


class UserPatch(Strict):
    active: bool


class SampleBody(Strict):
    prompts_jsonl: str = Field(min_length=1)
    n: int = Field(default=2, ge=1, le=9)


class CampaignBody(Strict):
    name: str = Field(min_length=1, max_length=MAX_CAMPAIGN_NAME)
    task_type: str
    guidelines: str = Field(default="", max_length=MAX_GUIDELINES)
    k: int = 1
    render: str = "text"
    source_jsonl: str | None = None
    sample: SampleBody | None = None


class CampaignPatch(Strict):
    status: str


class App:
    """The app's shared state: the database and, if serving a model, its sampler."""

    def __init__(self, db: str, sampler: Sampler | None, secure_cookies: bool | None) -> None:
        self.url = database_url(db)
        self.engine = make_engine(self.url)
        self.sessions = session_factory(self.engine)
        self.sampler = sampler
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
                self.admin_token = service.ensure_admin(session)
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

    def sample(self, prompts: list[Any], n: int) -> list[list[str]]:
        if self.sampler is None:
            raise FeedbackError(503, "this server has no model (serve with --model)")
        with self._model_lock:
            try:
                replies = self.sampler(prompts, n)
            except Exception as error:
                log.exception("sampling failed")
                raise FeedbackError(503, f"the model could not answer: {error}") from error
        if len(replies) != len(prompts) or any(len(group) != n for group in replies):
            raise FeedbackError(503, f"the model gave the wrong number of replies (asked {n} each)")
        return replies


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
    have ``max_upload_bytes`` (:class:`BodyLimit`).
    """
    state = App(db, sampler, secure_cookies)

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
    app.state.feedback = state
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(FeedbackError)
    async def feedback_error(_: Request, error: FeedbackError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _message(error)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code)

    # ------------------------------------------------------------------ who is asking

    def user_of(session: Session, request: Request) -> User:
        token = bearer_token(request.headers)  # the one mechanism, as the Guard decided
        if token is not None:
            user = service.user_for_token(session, token)
        elif cookie := request.cookies.get(COOKIE):
            user = service.user_for_session(session, cookie)
        else:
            raise FeedbackError(401, "log in first")
        if user is None:
            raise FeedbackError(401, "your session or token is not valid; log in again")
        return user

    def admin_of(session: Session, request: Request) -> User:
        user = user_of(session, request)
        if user.role != "admin":
            raise FeedbackError(403, "admins only")
        return user

    def read(request: Request, work: Callable[[Session, User], T], admin: bool = False) -> T:
        def run(session: Session) -> T:
            user = (admin_of if admin else user_of)(session, request)
            return work(session, user)

        return state.transaction(run)

    # ------------------------------------------------------------------------- pages

    def page(name: str) -> FileResponse:
        return FileResponse(str(STATIC / name), media_type="text/html")

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> RedirectResponse:
        try:
            user = state.transaction(lambda session: user_of(session, request))
        except FeedbackError:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse("/admin" if user.role == "admin" else "/annotate", 303)

    @app.get("/login", include_in_schema=False)
    def login_page() -> FileResponse:
        return page("login.html")

    @app.get("/annotate", include_in_schema=False)
    def annotate_page() -> FileResponse:
        return page("annotate.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return page("admin.html")

    # -------------------------------------------------------------------------- auth

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        with state.sessions() as session:
            session.execute(select(1))
        return {"ok": True, "schema_version": SCHEMA_VERSION, "model": state.sampler is not None}

    @app.post("/api/login")
    def login(body: LoginBody, request: Request) -> JSONResponse:
        def run(session: Session) -> tuple[str, User]:
            user = service.user_for_token(session, body.token.strip())
            if user is None:
                raise FeedbackError(401, "unknown token")
            return service.open_session(session, user), user

        cookie, user = state.transaction(run)
        response = JSONResponse({"name": user.name, "role": user.role})
        secure = state.secure_cookies
        if secure is None:
            forwarded = request.headers.get("x-forwarded-proto", "")
            secure = request.url.scheme == "https" or forwarded == "https"
        response.set_cookie(
            COOKIE, cookie, max_age=service.SESSION_DAYS * 86400, httponly=True,
            samesite="strict", secure=secure, path="/",
        )  # fmt: skip
        return response

    @app.post("/api/logout")
    def logout(request: Request) -> JSONResponse:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            state.transaction(lambda session: service.close_session(session, cookie))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        return read(request, lambda _, user: {"name": user.name, "role": user.role})

    # --------------------------------------------------------------------- annotators

    def campaign_row(session: Session, user: User, campaign: Campaign) -> dict[str, Any]:
        return {
            "id": campaign.id, "name": campaign.name, "task_type": campaign.task_type,
            "guidelines": campaign.guidelines, "k": campaign.k, "status": campaign.status,
            "progress": service.annotator_progress(session, user, campaign),
        }  # fmt: skip

    @app.get("/api/campaigns")
    def campaigns(request: Request) -> list[dict[str, Any]]:
        def run(session: Session, user: User) -> list[dict[str, Any]]:
            # active ones, and paused ones where an item handed out is waiting for this user
            in_hand = select(Assignment.campaign_id).where(
                Assignment.user_id == user.id, Assignment.status == "pending"
            )
            shown = (Campaign.status == "active") | (
                (Campaign.status == "paused") & Campaign.id.in_(in_hand)
            )
            query = select(Campaign).where(shown).order_by(Campaign.id)
            return [campaign_row(session, user, c) for c in session.scalars(query)]

        return read(request, run)

    def assignment_view(session: Session, user: User, assignment: Assignment) -> dict[str, Any]:
        campaign = session.get(Campaign, assignment.campaign_id)
        item = session.get(Item, assignment.item_id)
        render = campaign.render
        view: dict[str, Any] = {
            "id": assignment.id, "campaign_id": campaign.id, "campaign": campaign.name,
            "task_type": campaign.task_type, "guidelines": campaign.guidelines,
            "status": assignment.status, "prompt": prompt_view(item.prompt, render),
            "responses": [
                {"text": item.responses[i], "html": to_html(item.responses[i], render)}
                for i in assignment.order
            ],
            "progress": service.annotator_progress(session, user, campaign),
        }  # fmt: skip
        if campaign.task_type == "chat":
            turns = session.scalars(
                select(ChatTurn).where(ChatTurn.assignment_id == assignment.id)
                .order_by(ChatTurn.index)
            )  # fmt: skip
            view["opening"] = item.prompt if isinstance(item.prompt, str) else ""
            view["prompt"] = [] if isinstance(item.prompt, str) else view["prompt"]
            view["turns"] = [turn_view(turn, render) for turn in turns]
        return view

    def turn_view(turn: ChatTurn, render: str) -> dict[str, Any]:
        user_message = turn.messages[-1]["content"]
        return {
            "index": turn.index,
            "message": {"text": user_message, "html": to_html(user_message, render)},
            "candidates": [
                {"text": turn.candidates[i], "html": to_html(turn.candidates[i], render)}
                for i in turn.order
            ],
            "chosen": None
            if turn.chosen is None
            else shown_value("chat", {"chosen": turn.chosen}, turn.order)["choice"],
        }

    @app.get("/api/campaigns/{campaign_id}/next")
    def next_item(campaign_id: Id, request: Request) -> dict[str, Any]:
        def run(session: Session, user: User) -> dict[str, Any]:
            campaign = service.get_campaign(session, campaign_id)
            assignment = service.next_assignment(session, user, campaign)
            if assignment is None:
                return {
                    "assignment": None, "message": "nothing left to label here, thank you",
                    "progress": service.annotator_progress(session, user, campaign),
                }  # fmt: skip
            return {"assignment": assignment_view(session, user, assignment), "message": None}

        return read(request, run)

    @app.post("/api/assignments/{assignment_id}/label")
    def label(
        assignment_id: Id, request: Request, payload: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        def run(session: Session, user: User) -> dict[str, Any]:
            ack = service.submit_label(session, user, assignment_id, payload)
            return {"label_id": ack.label_id, "duplicate": ack.duplicate}

        return read(request, run)

    @app.post("/api/assignments/{assignment_id}/skip")
    def skip(assignment_id: Id, body: SkipBody, request: Request) -> dict[str, Any]:
        def run(session: Session, user: User) -> dict[str, Any]:
            service.skip(session, user, assignment_id, body.reason)
            return {"skipped": True}

        return read(request, run)

    @app.post("/api/assignments/{assignment_id}/chat")
    def chat(assignment_id: Id, body: ChatBody, request: Request) -> dict[str, Any]:
        def answer(session: Session, turn: ChatTurn) -> dict[str, Any]:
            campaign_id = session.get(Assignment, turn.assignment_id).campaign_id
            return {"turn": turn_view(turn, session.get(Campaign, campaign_id).render)}

        def prepare(session: Session, user: User) -> dict[str, Any] | list[dict[str, str]]:
            prepared = service.chat_prepare(
                session, user, assignment_id, body.client_id, body.message
            )
            return answer(session, prepared.turn) if prepared.turn else prepared.messages

        prepared = read(request, prepare)
        if isinstance(prepared, dict):  # a retried message: the turn made the first time
            return prepared
        # the model answers outside any transaction: a slow reply holds no database lock
        replies = state.sample([prepared], 2)[0]

        def record(session: Session, user: User) -> dict[str, Any]:
            turn = service.chat_record(
                session, user, assignment_id, body.client_id, prepared, replies
            )
            return answer(session, turn)

        return read(request, record)

    @app.post("/api/assignments/{assignment_id}/choose")
    def choose(assignment_id: Id, body: ChooseBody, request: Request) -> dict[str, Any]:
        def run(session: Session, user: User) -> dict[str, Any]:
            ack = service.chat_choose(
                session, user, assignment_id, body.client_id, body.turn, body.choice
            )
            return {"label_id": ack.label_id, "duplicate": ack.duplicate}

        return read(request, run)

    @app.post("/api/assignments/{assignment_id}/finish")
    def finish(assignment_id: Id, request: Request) -> dict[str, Any]:
        def run(session: Session, user: User) -> dict[str, Any]:
            service.chat_finish(session, user, assignment_id)
            return {"finished": True}

        return read(request, run)

    @app.get("/api/me/labels")
    def own_labels(
        request: Request, campaign_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None
    ) -> list[dict[str, Any]]:
        return read(request, lambda session, user: service.my_labels(session, user, campaign_id))

    # ------------------------------------------------------------------------ admins

    def user_row(user: User) -> dict[str, Any]:
        return {
            "id": user.id, "name": user.name, "role": user.role, "active": user.active,
            "created_at": user.created_at.isoformat() + "Z",
        }  # fmt: skip

    @app.get("/api/admin/users")
    def users(request: Request) -> list[dict[str, Any]]:
        def run(session: Session, _: User) -> list[dict[str, Any]]:
            return [user_row(u) for u in session.scalars(select(User).order_by(User.id))]

        return read(request, run, admin=True)

    @app.post("/api/admin/users", status_code=201)
    def add_user(body: UserBody, request: Request) -> dict[str, Any]:
        def run(session: Session, _: User) -> dict[str, Any]:
            user, token = service.create_user(session, body.name, body.role)
            return {**user_row(user), "token": token}

        return read(request, run, admin=True)

    def user_by_id(session: Session, user_id: int) -> User:
        user = session.get(User, user_id)
        if user is None:
            raise FeedbackError(404, f"no user {user_id}")
        return user

    @app.post("/api/admin/users/{user_id}/token")
    def new_token(user_id: Id, request: Request) -> dict[str, Any]:
        def run(session: Session, _: User) -> dict[str, Any]:
            user = user_by_id(session, user_id)
            return {**user_row(user), "token": service.rotate_token(session, user)}

        return read(request, run, admin=True)

    @app.patch("/api/admin/users/{user_id}")
    def patch_user(user_id: Id, body: UserPatch, request: Request) -> dict[str, Any]:
        def run(session: Session, admin: User) -> dict[str, Any]:
            user = user_by_id(session, user_id)
            if user.id == admin.id and not body.active:
                raise FeedbackError(409, "you cannot deactivate your own account")
            user.active = body.active
            return user_row(user)

        return read(request, run, admin=True)

    def admin_campaign_row(session: Session, campaign: Campaign) -> dict[str, Any]:
        items = session.scalar(select(func.count()).where(Item.campaign_id == campaign.id))
        labels = session.scalar(select(func.count()).where(Label.campaign_id == campaign.id))
        return {
            "id": campaign.id, "name": campaign.name, "task_type": campaign.task_type,
            "guidelines": campaign.guidelines, "k": campaign.k, "render": campaign.render,
            "status": campaign.status, "items": items, "labels": labels,
            "created_at": campaign.created_at.isoformat() + "Z",
            "export_formats": list(EXPORT_FORMATS[campaign.task_type]),
        }  # fmt: skip

    @app.get("/api/admin/campaigns")
    def admin_campaigns(request: Request) -> list[dict[str, Any]]:
        def run(session: Session, _: User) -> list[dict[str, Any]]:
            query = select(Campaign).order_by(Campaign.id)
            return [admin_campaign_row(session, c) for c in session.scalars(query)]

        return read(request, run, admin=True)

    @app.post("/api/admin/campaigns", status_code=201)
    def add_campaign(body: CampaignBody, request: Request) -> dict[str, Any]:
        read(request, lambda session, user: None, admin=True)
        spec = service.CampaignSpec(body.name, body.task_type, body.guidelines, body.k, body.render)
        service.check_spec(spec)  # before the model samples anything
        if (body.source_jsonl is None) == (body.sample is None):
            raise FeedbackError(422, "give exactly one of source_jsonl or sample")
        try:
            if body.source_jsonl is not None:
                items = parse_source(body.task_type, body.source_jsonl)
            else:
                items = sampled_items(body.task_type, body.sample)
        except SourceError as error:
            raise FeedbackError(422, f"source: {error}") from None

        def run(session: Session, _: User) -> dict[str, Any]:
            campaign = service.create_campaign(session, spec, items)
            session.flush()
            return admin_campaign_row(session, campaign)

        return read(request, run, admin=True)

    def sampled_items(task: str, sample: SampleBody) -> list[NewItem]:
        prompts = parse_source("chat", sample.prompts_jsonl)  # rows need only a prompt
        if any(not item.prompt for item in prompts):
            raise SourceError("every prompt must be non-empty to sample responses for it")
        replies = state.sample([item.prompt for item in prompts], sample.n)
        items: list[NewItem] = []
        for item, responses in zip(prompts, replies, strict=True):
            row = {"prompt": item.prompt, "responses": responses}
            items.extend(items_from_row(task, row, item.source["line"]))
        return items

    @app.get("/api/admin/campaigns/{campaign_id}")
    def campaign_detail(campaign_id: Id, request: Request) -> dict[str, Any]:
        def run(session: Session, _: User) -> dict[str, Any]:
            campaign = service.get_campaign(session, campaign_id)
            return {
                **admin_campaign_row(session, campaign),
                "stats": service.campaign_stats(session, campaign),
                "skips": service.skip_reasons(session, campaign),
            }

        return read(request, run, admin=True)

    @app.patch("/api/admin/campaigns/{campaign_id}")
    def patch_campaign(campaign_id: Id, body: CampaignPatch, request: Request) -> dict:
        def run(session: Session, _: User) -> dict[str, Any]:
            campaign = service.get_campaign(session, campaign_id)
            service.set_status(session, campaign, body.status)
            return admin_campaign_row(session, campaign)

        return read(request, run, admin=True)

    @app.get("/api/admin/campaigns/{campaign_id}/export")
    def export(
        campaign_id: Id, request: Request, format: Annotated[str | None, Query()] = None
    ) -> Response:
        def run(session: Session, _: User) -> tuple[str, bytes]:
            campaign = service.get_campaign(session, campaign_id)
            rows = service.export_rows(session, campaign, format)
            # the whole file is made before the answer starts: a failure is an error status,
            # never a truncated file that looks complete
            body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            return campaign.name, body.encode()

        name, body = read(request, run, admin=True)
        ascii_name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
        disposition = (
            f'attachment; filename="{ascii_name}.jsonl"; '
            f"filename*=UTF-8''{urllib.parse.quote(name + '.jsonl', safe='')}"
        )
        return Response(
            body, media_type="application/x-ndjson",
            headers={"Content-Disposition": disposition},
        )  # fmt: skip

    return app
