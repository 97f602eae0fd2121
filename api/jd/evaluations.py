"""Customers' evaluations of customer service (评价详情, 分数, 时间), pulled from JOS into the feedback store.

The JOS method is configuration (KEFU_JOS_EVALUATION_METHOD), and so is the shape of its answer: the
records are the first list of objects in the result, and each field is looked up under the names JD
APIs commonly use for it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select

from api.db.models import JdEvaluation, Shop
from api.dialog.privacy import mask_pii
from api.jd import JosClient, JosError, parse_beijing_timestamp
from api.jd.records import first_records, first_value
from api.metrics import JOS_ERRORS

log = logging.getLogger("kefu.evaluations")

ID_KEYS = ("id", "evaluationId", "evaluation_id", "commentId", "comment_id", "evaId")
SCORE_KEYS = ("score", "grade", "star", "evaluationScore", "分数")
CONTENT_KEYS = ("content", "evaluationContent", "detail", "comment", "评价详情")
TIME_KEYS = ("time", "created", "createTime", "create_time", "evaluationTime", "evaluateTime", "时间")


class EvaluationsNotConfigured(RuntimeError):
    pass


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):  # epoch milliseconds, as JD APIs often give
            from datetime import UTC

            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        return parse_beijing_timestamp(str(value)[:19])
    except (ValueError, OverflowError, OSError):
        return None


def _score(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def pull(service: Any, shop_id: str, page_size: int = 50, max_pages: int = 20) -> dict[str, int]:
    """Fetch evaluations for one shop and store the new ones; returns counts."""
    method = service.settings.jos_evaluation_method
    if not method:
        raise EvaluationsNotConfigured(
            "set KEFU_JOS_EVALUATION_METHOD to the JOS method that lists evaluations"
        )
    with service.db.session() as s:
        shop = s.get(Shop, shop_id)
        where = f"PUT /v1/shops/{shop_id}/jd-credentials"
        if shop is None or not shop.jd_app_key or not shop.jd_app_secret:
            raise EvaluationsNotConfigured(f"shop {shop_id!r} has no JD credentials; set them with {where}")
        if not shop.jd_access_token:
            # JOS would refuse the call as bad credentials, which reads as a wrong AppKey or AppSecret
            raise EvaluationsNotConfigured(f"shop {shop_id!r} has no JD access token; set it with {where}")
        box = service.secret_box
        creds = (
            box.decrypt(shop.jd_app_key),
            box.decrypt(shop.jd_app_secret),
            box.decrypt(shop.jd_access_token) if shop.jd_access_token else None,
        )
    seen = new = 0
    with JosClient(*creds, base_url=service.settings.jos_url) as client:
        for page in range(1, max_pages + 1):
            try:
                result = client.call(method, {"page": page, "pageSize": page_size})
            except JosError as e:
                JOS_ERRORS.labels(type(e).__name__).inc()
                raise
            records = first_records(result)
            seen += len(records)
            new += _store(service, shop_id, records)
            if len(records) < page_size:
                break
    log.info("shop %s: %d evaluations seen, %d new", shop_id, seen, new)
    return {"seen": seen, "new": new}


def _store(service: Any, shop_id: str, records: list[dict[str, Any]]) -> int:
    new = 0
    with service.db.session() as s:
        known = set(s.scalars(select(JdEvaluation.jd_id).where(JdEvaluation.shop_id == shop_id)))
        for r in records:
            jd_id = first_value(r, ID_KEYS)
            if jd_id is None or str(jd_id) in known:
                continue
            known.add(str(jd_id))
            s.add(
                JdEvaluation(
                    shop_id=shop_id,
                    jd_id=str(jd_id)[:100],
                    score=_score(first_value(r, SCORE_KEYS)),
                    content_masked=mask_pii(str(first_value(r, CONTENT_KEYS) or "")),
                    evaluated_at=_when(first_value(r, TIME_KEYS)),
                )
            )
            new += 1
    return new


def list_evaluations(service: Any, shop_id: str, limit: int = 100) -> list[dict[str, Any]]:
    with service.db.session() as s:
        rows = s.scalars(
            select(JdEvaluation)
            .where(JdEvaluation.shop_id == shop_id)
            .order_by(JdEvaluation.id.desc())
            .limit(limit)
        )
        return [
            {
                "jd_id": r.jd_id,
                "score": r.score,
                "content": r.content_masked,
                "evaluated_at": r.evaluated_at.isoformat() if r.evaluated_at else None,
                "pulled_at": r.pulled_at.isoformat(),
            }
            for r in rows
        ]
