"""What the feedback app does, apart from HTTP, one module per aggregate it owns:

* :mod:`~.accounts` — users, tokens and login sessions, the first admin;
* :mod:`~.campaigns` — campaign settings, creation, status;
* :mod:`~.assignments` — handing items to annotators, expiry, skips, progress;
* :mod:`~.labels` — labels of the single-answer tasks, an annotator's own labels;
* :mod:`~.chat` — chat campaigns' turns and the choices between two replies;
* :mod:`~.stats` — a campaign's statistics and skip reasons;
* :mod:`~.export` — labels as :mod:`rlhf.data` records.

Every function takes an open SQLAlchemy session; the caller commits. A refusal is a
:class:`FeedbackError` carrying the HTTP status the API answers with. The names below are
the API that code outside this package (the ``rlhf feedback`` commands, the benchmarks)
calls as ``service.NAME``; the app imports from the modules themselves.
"""

from rlhf.feedback.service.accounts import create_user, ensure_admin, rotate_token
from rlhf.feedback.service.campaigns import CampaignSpec, create_campaign, get_campaign
from rlhf.feedback.service.errors import FeedbackError
from rlhf.feedback.service.export import export_rows

__all__ = [
    "CampaignSpec",
    "FeedbackError",
    "create_campaign",
    "create_user",
    "ensure_admin",
    "export_rows",
    "get_campaign",
    "rotate_token",
]
