"""Reports on a shop's logged traffic: the figures `kefu report --traffic-url` draws (api/store/traffic)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status

from api.store import traffic
from api.store.exchanges import TEST_CHANNELS
from api.store.periods import PeriodError
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep
from api.web.schemas import TrafficOut
from api.web.strict_json import StrictJSONRoute

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1/shops/{shop}", responses=SHOP_AUTH_RESPONSES, tags=["reports"]
)

TRAFFIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad period (the parameter is named): reversed, out of range or too long"},
}


@router.get("/report/traffic", response_model=TrafficOut, responses=TRAFFIC_RESPONSES)
def traffic_report(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[
        datetime | None, Query(description="from (Beijing time without a zone; default: until - 7 days)")
    ] = None,
    until: Annotated[datetime | None, Query(description="to, excluded (default: now)")] = None,
    bucket: Annotated[
        Literal["hour", "day"] | None,
        Query(description="per hour or per Beijing day (default: hours up to 3 days, else days)"),
    ] = None,
    include_console: Annotated[
        bool,
        Query(description="count the console's Try messages too (the merchant's own tests; default: not)"),
    ] = False,
) -> Any:
    """The shop's traffic in a period (at most 92 days): messages; answer / clarify / handoff rates over
    time with small talk apart; handoffs by reason; latency; confidence; JD ratings by what the bot did in
    the rated chat; feedback; the entries answered most and the questions handed off most (masked).
    The console's Try messages are the merchant's tests: left out unless include_console is true."""
    try:
        start, end = traffic.traffic_period(since, until)
        service.exchange_log.sync()
        with service.db.session() as s:
            excluded = () if include_console else TEST_CHANNELS
            return traffic.traffic_figures(s, shop.id, start, end, bucket, exclude_channels=excluded)
    except PeriodError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e
