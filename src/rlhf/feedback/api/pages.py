"""The HTML pages: login, the annotator's and the admin's page, and ``/`` sending each person
to theirs. The pages are static files; everything they show comes from the JSON API."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from rlhf.feedback.api.deps import AsUser
from rlhf.feedback.service.errors import FeedbackError

STATIC = files("rlhf.feedback") / "static"

router = APIRouter(tags=["pages"], default_response_class=HTMLResponse)


def page(name: str) -> FileResponse:
    return FileResponse(str(STATIC / name), media_type="text/html")


@router.get(
    "/",
    response_class=RedirectResponse,
    status_code=303,
    responses={303: {"description": "to /login, or to /admin or /annotate by the role"}},
)
def root(caller: AsUser) -> RedirectResponse:
    try:
        user = caller(lambda _, user: user)
    except FeedbackError:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse("/admin" if user.role == "admin" else "/annotate", 303)


@router.get("/login")
def login_page() -> FileResponse:
    return page("login.html")


@router.get("/annotate")
def annotate_page() -> FileResponse:
    return page("annotate.html")


@router.get("/admin")
def admin_page() -> FileResponse:
    return page("admin.html")
