"""Size limits of the feedback app, in one place (docs/feedback.md, "Limits").

Each is far above real use and far below what lets one request fill the server's memory or
the database: an annotator once stored a 20 MB edit, and an unauthenticated 200 MB login
body was read in full. A request body over its limit is refused with a 413 while it is read
(:class:`rlhf.feedback.api.middleware.BodyLimit`), a text over its limit with a 422 naming the field.
"""

from __future__ import annotations

# bytes of one request body; both can be set per server (``create_app``)
MAX_BODY_BYTES = 2**20
MAX_UPLOAD_BYTES = 64 * 2**20  # a campaign upload: its whole source file is in the request

# characters
MAX_TEXT = 100_000  # a prompt, message or response of a campaign source; an edited response
MAX_CHAT_MESSAGE = 8_000
MAX_USER_NAME = 80
MAX_CAMPAIGN_NAME = 120
MAX_GUIDELINES = 20_000
MAX_SKIP_REASON = 500
