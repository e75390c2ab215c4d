"""Admins export a campaign's labels as JSON Lines of :mod:`rlhf.data` records, the files
``rlhf rm``, ``dpo``, ``kto``, ``sft`` and ``prm`` read (:mod:`rlhf.feedback.service.export`)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from rlhf.feedback.api.deps import AsAdmin, Id
from rlhf.feedback.api.schemas import refusals
from rlhf.feedback.db import User
from rlhf.feedback.service.campaigns import get_campaign
from rlhf.feedback.service.export import export_rows

router = APIRouter(tags=["admin: campaigns"])


class JSONLines(Response):
    # a class rather than a media_type argument, so that the OpenAPI schema names it too
    media_type = "application/x-ndjson"


@router.get(
    "/api/admin/campaigns/{campaign_id}/export",
    response_class=JSONLines,
    responses={
        200: {"description": "one record per line, as a download named after the campaign"},
        **refusals(401, 403, 404, 422, json_route=False),
    },
)
def export(
    campaign_id: Id,
    caller: AsAdmin,
    format: Annotated[
        str | None, Query(description="one of the campaign's export_formats; else the first")
    ] = None,
) -> JSONLines:
    def run(session: Session, _: User) -> tuple[str, bytes]:
        campaign = get_campaign(session, campaign_id)
        rows = export_rows(session, campaign, format)
        # the whole file is made before the answer starts: a failure is an error status,
        # never a truncated file that looks complete
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return campaign.name, body.encode()

    name, body = caller(run)
    ascii_name = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    disposition = (
        f'attachment; filename="{ascii_name}.jsonl"; '
        f"filename*=UTF-8''{urllib.parse.quote(name + '.jsonl', safe='')}"
    )
    return JSONLines(body, headers={"Content-Disposition": disposition})
