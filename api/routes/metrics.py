"""GET /metrics: Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.metrics import render
from api.web.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, tags=["ops"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    body, content_type = render()
    return Response(content=body, media_type=content_type)
