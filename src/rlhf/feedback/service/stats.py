"""A campaign's statistics for its admins: progress, per-annotator throughput, gold
agreement and position bias, Krippendorff's alpha, and the reasons items were skipped.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhf.feedback.agreement import krippendorff_alpha
from rlhf.feedback.db import Assignment, Campaign, Item, Label, User
from rlhf.feedback.tasks import agreement_units, matches_gold


def campaign_stats(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Progress, per-annotator throughput and gold agreement, and Krippendorff's alpha."""
    items = session.scalar(select(func.count()).where(Item.campaign_id == campaign.id))
    counts = dict(
        session.execute(
            select(Assignment.status, func.count())
            .where(Assignment.campaign_id == campaign.id).group_by(Assignment.status)
        ).all()
    )  # fmt: skip
    per_item = (
        select(Assignment.item_id)
        .where(Assignment.campaign_id == campaign.id, Assignment.status == "done")
        .group_by(Assignment.item_id)
        .having(func.count() >= campaign.k)
        .subquery()
    )
    complete = session.scalar(select(func.count()).select_from(per_item))
    labels = session.execute(
        select(Label, Item.gold, User.name, Assignment.order)
        .join(Item, Item.id == Label.item_id)
        .join(User, User.id == Label.user_id)
        .join(Assignment, Assignment.id == Label.assignment_id)
        .where(Label.campaign_id == campaign.id)
        .order_by(Label.id)
    ).all()
    by_user: dict[str, list[tuple[Label, Any]]] = defaultdict(list)
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    picked_first: dict[str, int] = defaultdict(int)
    for label, gold, name, order in labels:
        by_user[name].append((label, gold))
        by_item[label.item_id].append(label.value)
        if campaign.task_type == "pairwise":
            picked_first[name] += label.value["better"] == order[0]
    skipped = dict(
        session.execute(
            select(User.name, func.count()).select_from(Assignment)
            .join(User, User.id == Assignment.user_id)
            .where(Assignment.campaign_id == campaign.id, Assignment.status == "skipped")
            .group_by(User.name)
        ).all()
    )  # fmt: skip
    annotators = []
    for name in sorted(set(by_user) | set(skipped)):
        rows = by_user.get(name, [])
        seconds = [label.seconds for label, _ in rows]
        gold_rows = [(label, gold) for label, gold in rows if gold is not None]
        agree = sum(
            matches_gold(campaign.task_type, label.value, gold) for label, gold in gold_rows
        )
        span = (rows[-1][0].created_at - rows[0][0].created_at).total_seconds() if rows else 0
        annotators.append({
            "name": name, "labels": len(rows), "skipped": skipped.get(name, 0),
            "median_seconds": round(statistics.median(seconds), 1) if seconds else None,
            "labels_per_hour": round(3600 * (len(rows) - 1) / span, 1) if span > 0 else None,
            "gold_items": len(gold_rows),
            "gold_agreement": round(agree / len(gold_rows), 3) if gold_rows else None,
            # position bias: the responses' order is random, so ~0.5 unless A is favoured
            "picked_first": (
                round(picked_first[name] / len(rows), 3)
                if campaign.task_type == "pairwise" and rows else None
            ),
        })  # fmt: skip
    if campaign.task_type == "chat":
        by_item = {}
    units = agreement_units(campaign.task_type, {i: v for i, v in by_item.items() if len(v) > 1})
    alpha = krippendorff_alpha(units.units, units.level) if units.units else None
    return {
        "items": items, "complete_items": complete, "labels": len(labels),
        "pending": counts.get("pending", 0), "skipped": counts.get("skipped", 0),
        "annotators": annotators,
        "alpha": {
            "value": None if alpha is None else round(alpha, 4), "level": units.level,
            "units": len(units.units),
        },
    }  # fmt: skip


def skip_reasons(session: Session, campaign: Campaign) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Assignment.item_id, Assignment.skip_reason, User.name)
        .join(User, User.id == Assignment.user_id)
        .where(Assignment.campaign_id == campaign.id, Assignment.status == "skipped")
        .order_by(Assignment.id)
    )
    return [{"item_id": item, "reason": reason, "annotator": name} for item, reason, name in rows]
