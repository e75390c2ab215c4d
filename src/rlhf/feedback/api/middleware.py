"""ASGI middleware of the feedback app, outside FastAPI's routing: the cross-site refusal and
security headers (:class:`Guard`) and the request body limits (:class:`BodyLimit`).

A request is authenticated by exactly one of ``Authorization: Bearer TOKEN`` or the session
cookie set by ``/api/login`` (:func:`bearer_token` decides). The cookie is HttpOnly and
SameSite=Strict (so no other site can submit in an annotator's name), Secure whenever the app
is reached over HTTPS, and a write made with it must come from the app's own origin.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders

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
