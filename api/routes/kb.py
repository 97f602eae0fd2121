"""A shop's KB: upload (CSV/XLSX/JSON/JSONL), entry CRUD, publish, versions and rollback.

A bad upload or edit answers 422 with every problem (file, row, column) and leaves what was stored as
it was. Publishing answers 202 at once; the build runs in the background and only a model that
passes its own evaluation is swapped in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, UploadFile, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from api.db.models import KBVersion
from api.kb import repo as kb_repo
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep
from api.web.schemas import DB_INT_MAX, EntryIn, EntryOut, UploadOut, VersionOut
from engine.kb import SUPPORTED_SUFFIXES, KBValidationError

router = APIRouter(prefix="/v1/shops/{shop}", responses=SHOP_AUTH_RESPONSES, tags=["kb"])
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
VersionNumber = Annotated[int, PathParam(ge=1, le=DB_INT_MAX)]


def issues_response(err: KBValidationError) -> JSONResponse:
    return JSONResponse(
        status_code=422,
        content={
            "detail": f"{len(err.issues)} problem(s) in the knowledge base; nothing was changed",
            "issues": [
                {"source": i.source, "row": i.row, "column": i.column, "message": i.message}
                for i in err.issues
            ],
        },
    )


def entry_out(e: dict[str, Any]) -> EntryOut:
    def iso(v: Any) -> str | None:
        return v.isoformat() if v is not None else None

    return EntryOut(
        id=e["id"],
        question=e["question"],
        similar=list(e["similar"]),
        answer=e["answer"],
        category=e["category"],
        valid_from=iso(e["valid_from"]),
        valid_to=iso(e["valid_to"]),
        enabled=e["enabled"],
        action=e.get("action") or "",
        notify=bool(e.get("notify")),
        answer_variants=list(e.get("answer_variants") or []),
    )


def version_out(row: KBVersion, active: int | None) -> VersionOut:
    return VersionOut(
        version=row.version,
        status=row.status,  # type: ignore[arg-type]
        active=row.version == active,
        entries=row.entries,
        kb_hash=row.kb_hash,
        options=row.options or {},
        metrics=row.metrics or {},
        error=row.error,
        created_at=row.created_at.isoformat(),
        finished_at=row.finished_at.isoformat() if row.finished_at else None,
    )


@router.post(
    "/kb",
    response_model=UploadOut,
    responses={422: {"description": "the file has problems; every one is listed with row and column"}},
)
async def upload_kb(
    shop: ShopDep,
    service: ServiceDep,
    file: Annotated[UploadFile, File(description="the KB: .csv, .xlsx, .json or .jsonl")],
    publish: Annotated[bool, Query(description="also publish it as a new version")] = False,
) -> Any:
    """Replace the shop's editable KB with a file (all or nothing)."""
    name = Path(file.filename or "kb.csv").name
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise HTTPException(
            422,
            f"{name}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}",
        )
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"{name} is larger than 20 MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            from engine.kb import load_kb

            entries = kb_repo.check_sizes(load_kb(path, source_name=name), name)
        except KBValidationError as e:
            return issues_response(e)
    with service.db.session() as s:
        kb_repo.replace_all(s, shop.id, entries)
    version = None
    if publish:
        version, _ = service.publisher.publish(shop.id)
    return UploadOut(entries=len(entries), version=version)


@router.get("/entries", response_model=list[EntryOut])
def list_entries(
    shop: ShopDep,
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EntryOut]:
    with service.db.session() as s:
        return [entry_out(e) for e in kb_repo.list_entries(s, shop.id, offset, limit)]


@router.get("/entries/{entry_id}", response_model=EntryOut)
def get_entry(entry_id: str, shop: ShopDep, service: ServiceDep) -> EntryOut:
    with service.db.session() as s:
        e = kb_repo.get_entry(s, shop.id, entry_id)
    if e is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no entry {entry_id!r} in shop {shop.id!r}")
    return entry_out(e)


@router.put(
    "/entries/{entry_id}",
    response_model=EntryOut,
    responses={422: {"description": "the entry (with the rest of the KB) has problems"}},
)
def put_entry(entry_id: str, body: EntryIn, shop: ShopDep, service: ServiceDep) -> Any:
    """Add or replace an entry; checked together with the rest of the KB (duplicates included)."""
    record = body.model_dump()
    record["id"] = entry_id
    try:
        with service.db.session() as s:
            kept = kb_repo.upsert_entry(s, shop.id, record)
            saved = kb_repo.get_entry(s, shop.id, kept.id)  # the id as stored: stripped, no control chars
    except KBValidationError as e:
        return issues_response(e)
    assert saved is not None
    return entry_out(saved)


@router.delete("/entries/{entry_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_entry(entry_id: str, shop: ShopDep, service: ServiceDep) -> None:
    with service.db.session() as s:
        if not kb_repo.delete_entry(s, shop.id, entry_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no entry {entry_id!r} in shop {shop.id!r}")


@router.post(
    "/kb/publish",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=VersionOut,
    responses={422: {"description": "the editable KB has problems (or is empty)"}},
)
def publish(shop: ShopDep, service: ServiceDep) -> Any:
    """Freeze the editable KB as a new version and build it in the background."""
    try:
        version, _ = service.publisher.publish(shop.id)
    except KBValidationError as e:
        return issues_response(e)
    with service.db.session() as s:
        row = kb_repo.get_version(s, shop.id, version)
        assert row is not None
        return version_out(row, shop.active_version)


@router.get("/kb/versions", response_model=list[VersionOut])
def versions(shop: ShopDep, service: ServiceDep) -> list[VersionOut]:
    with service.db.session() as s:
        return [version_out(r, shop.active_version) for r in kb_repo.list_versions(s, shop.id)]


def _version_or_404(s: Any, shop: str, version: int) -> KBVersion:
    row = kb_repo.get_version(s, shop, version)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no version {version} in shop {shop!r}")
    return row


@router.get("/kb/versions/{version}", response_model=VersionOut)
def version(version: VersionNumber, shop: ShopDep, service: ServiceDep) -> VersionOut:
    with service.db.session() as s:
        return version_out(_version_or_404(s, shop.id, version), shop.active_version)


@router.post("/kb/versions/{version}/activate", response_model=VersionOut)
def activate(version: VersionNumber, shop: ShopDep, service: ServiceDep) -> VersionOut:
    """Serve an earlier (or any ready) version: rollback without a rebuild."""
    with service.db.session() as s:
        row = _version_or_404(s, shop.id, version)
        if row.status != "ready":
            raise HTTPException(status.HTTP_409_CONFLICT, f"version {version} is {row.status}, not ready")
    service.publisher.activate(shop.id, version)
    with service.db.session() as s:
        return version_out(_version_or_404(s, shop.id, version), version)
