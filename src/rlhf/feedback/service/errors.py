"""The one error the service raises: a refusal with the HTTP status the API answers with,
so that a bad request is a clear 4xx and never a 500."""

from __future__ import annotations


class FeedbackError(Exception):
    """A request the app refuses, with the HTTP status and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
