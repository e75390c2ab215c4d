"""Request and answer models that several routers share: the strict request body base, the
refusal every error answers with, rendered text, and a label's acknowledgement."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from rlhf.feedback.tasks import text_problem


class Strict(BaseModel):
    """A request body: unknown fields are refused (a misspelt field is an error, not a
    silently missing value), and so is text no database can store."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def storable(cls, value: Any) -> Any:
        problem = text_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)  # pydantic names the field
        return value


class Detail(BaseModel):
    """Every refusal, whatever its status: a message for the person."""

    detail: str


REFUSALS = {
    401: "not logged in, or the session or token is not valid (any more)",
    403: "admins only; or a write with the session cookie from another origin",
    404: "no such thing, or it is not yours",
    409: "the request conflicts with the current state (closed, expired, done, taken)",
    413: "the request body is over this server's limit",
    422: "a parameter or field is malformed; the message names it",
    503: "the model is missing, failed, or the server is too busy",
}


def refusals(*statuses: int, json_route: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer with these statuses. Naming 422 also
    replaces FastAPI's default validation-error schema, which is not what this app answers
    (its handler turns every validation error into one ``detail`` message).

    A route whose success is not JSON (``json_route=False``) names the JSON media type itself:
    FastAPI would file a ``model`` under the route's own media type. Its ``$ref`` resolves
    because the JSON routes register :class:`Detail`.
    """
    if json_route:
        return {status: {"model": Detail, "description": REFUSALS[status]} for status in statuses}
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Detail"}}}
    return {status: {"description": REFUSALS[status], "content": content} for status in statuses}


class Rendered(BaseModel):
    """A text as stored and as safe HTML to show (:mod:`rlhf.feedback.render`)."""

    text: str
    html: str


class LabelAck(BaseModel):
    """A stored label. A retry with the same ``client_id`` answers the first one's id, with
    ``duplicate`` true."""

    label_id: int
    duplicate: bool
