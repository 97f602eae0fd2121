"""GET /healthz: is the process up, and which model does it serve."""

from __future__ import annotations

from fastapi import APIRouter

from api.web.schemas import HealthResponse
from api.web.state import HolderDep
from api.web.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute, tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
def healthz(holder: HolderDep) -> HealthResponse:
    """Always 200 while the process runs; `model_loaded` says whether /v1/match can answer.

    Liveness and readiness are split by the caller: a probe that needs a model checks the flag.
    """
    m = holder.current
    if m is None:
        return HealthResponse(model_loaded=False, entries=0, kb_hash=None, dense=False)
    return HealthResponse(
        model_loaded=True, entries=len(m), kb_hash=m.info.get("kb_hash"), dense=m.dense_enabled
    )
