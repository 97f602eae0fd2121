"""Tasks for the agents: raised when the bot answered from an entry marked notify (改地址, 修改订单 ...).

The bot answered the customer, so this is not a handoff; a person still has to act, with the
conversation's (masked) last messages as context. Listed per shop, oldest open task first, and closed
when done.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi import Path as PathParam
from sqlalchemy import select

from api.db.models import AgentTask, utcnow
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep
from api.web.schemas import DB_INT_MAX, TaskOut
from api.web.strict_json import StrictJSONRoute

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1/shops/{shop}", responses=SHOP_AUTH_RESPONSES, tags=["tasks"]
)
TaskId = Annotated[int, PathParam(ge=1, le=DB_INT_MAX)]


def task_out(t: AgentTask) -> TaskOut:
    return TaskOut(
        id=t.id,
        conversation_id=t.conversation_id,
        entry_id=t.entry_id,
        context=[str(m) for m in t.context or []],
        status=t.status,  # type: ignore[arg-type]
        created_at=t.created_at.isoformat(),
        done_at=t.done_at.isoformat() if t.done_at else None,
    )


@router.get("/tasks", response_model=list[TaskOut])
def list_tasks(
    shop: ShopDep,
    service: ServiceDep,
    task_status: Annotated[Literal["open", "done", "all"], Query(alias="status")] = "open",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TaskOut]:
    """The shop's tasks, oldest first (open ones by default)."""
    q = select(AgentTask).where(AgentTask.shop_id == shop.id)
    if task_status != "all":
        q = q.where(AgentTask.status == task_status)
    with service.db.session() as s:
        return [task_out(t) for t in s.scalars(q.order_by(AgentTask.id).limit(limit))]


@router.post(
    "/tasks/{task_id}/done", response_model=TaskOut, responses={404: {"description": "no such task"}}
)
def close_task(task_id: TaskId, shop: ShopDep, service: ServiceDep) -> TaskOut:
    """Mark a task done (closing it again changes nothing)."""
    with service.db.session() as s:
        t = s.get(AgentTask, task_id)
        if t is None or t.shop_id != shop.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id} in shop {shop.id!r}")
        if t.status != "done":
            t.status, t.done_at = "done", utcnow()
            s.flush()
        return task_out(t)
