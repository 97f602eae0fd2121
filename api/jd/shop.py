"""A shop's JOS access for the pulls (evaluations, statistics, chat logs): credentials, counted calls."""

from __future__ import annotations

from typing import Any

from api.db.models import Shop
from api.jd import JosClient, JosError
from api.metrics import JOS_ERRORS


class JdNotConfigured(RuntimeError):
    """The shop cannot call JOS yet; the message says what to set and where."""


def shop_credentials(service: Any, shop_id: str) -> tuple[str, str, str]:
    """(app key, app secret, access token) of a shop, decrypted; JdNotConfigured when one is missing."""
    with service.db.session() as s:
        shop = s.get(Shop, shop_id)
        where = f"PUT /v1/shops/{shop_id}/jd-credentials"
        if shop is None or not shop.jd_app_key or not shop.jd_app_secret:
            raise JdNotConfigured(f"shop {shop_id!r} has no JD credentials; set them with {where}")
        if not shop.jd_access_token:
            # JOS would refuse the call as bad credentials, which reads as a wrong AppKey or AppSecret
            raise JdNotConfigured(f"shop {shop_id!r} has no JD access token; set it with {where}")
        box = service.secret_box
        return (
            box.decrypt(shop.jd_app_key),
            box.decrypt(shop.jd_app_secret),
            box.decrypt(shop.jd_access_token),
        )


def counted_call(client: JosClient, name: str, biz: dict[str, Any]) -> Any:
    """One JOS call; a failure is counted in kefu_jos_errors_total by kind, then raised."""
    try:
        return client.call(name, biz)
    except JosError as e:
        JOS_ERRORS.labels(type(e).__name__).inc()
        raise
