"""A shop's KB: upload (CSV/XLSX/JSON/JSONL), entry CRUD, publish, versions, rollback and export.

A bad upload or edit answers 422 with every problem (file, row, column) and leaves what was stored as
it was. Publishing answers 202 at once; the build runs on the task queue (api/kb/builds.py; its stage and
progress show on the version) and only a model that passes its own evaluation is swapped in. A rollback
(activate) also makes that version's KB the editable one, refusing with 409 rather than silently dropping
edits nobody published. The editable KB and every version export as CSV or XLSX that upload back
unchanged. `kb/mining` proposes what to add to the KB from the shop's log (api/kb/mining.py), as JSON or
as a file in the KB's columns.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.db.models import KBVersion, Shop
from api.kb import mining
from api.kb import repo as kb_repo
from api.kb.publisher import version_state
from api.settings import Settings
from api.web.deps import SHOP_AUTH_RESPONSES, ServiceDep, ShopDep
from api.web.schemas import (
    DB_INT_MAX,
    ActivateOut,
    EntryIn,
    EntryOut,
    IssueOut,
    MiningOut,
    PublishOut,
    UploadOut,
    VersionOut,
)
from api.web.strict_json import StrictJSONRoute
from api.web.uploads import read_upload, upload_body, upload_name
from engine.kb import KBEntry, KBIssue, KBTooLarge, KBValidationError, ReadLimits, dump_kb
from engine.mining import proposals_file

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1/shops/{shop}", responses=SHOP_AUTH_RESPONSES, tags=["kb"]
)
# the setting behind each engine.kb.KBTooLarge limit, named in the 413 answer
LIMIT_SETTINGS = {
    "rows": "KEFU_KB_MAX_ROWS",
    "cells": "KEFU_KB_MAX_CELLS",
    "bytes": "KEFU_KB_MAX_INFLATED_BYTES",
}
VersionNumber = Annotated[int, PathParam(ge=1, le=DB_INT_MAX)]
VERSIONS_PAGE = 100  # versions per page of GET kb/versions, unless asked otherwise
VERSIONS_MAX_PAGE = 1000


def _ref(path: str, method: str) -> str:
    """An OpenAPI operationRef to one of this router's operations (a JSON pointer: / is ~1)."""
    return f"#/paths/{('/v1/shops/{shop}' + path).replace('~', '~0').replace('/', '~1')}/{method}"


# OpenAPI links: what a client (and schemathesis's stateful tests) can call next with a response's ids
_ENTRY = {"shop": "$request.path.shop", "entry_id": "$response.body#/id"}
_VERSION = {"shop": "$request.path.shop", "version": "$response.body#/version"}
ENTRY_LINKS = {
    "GetEntry": {"operationRef": _ref("/entries/{entry_id}", "get"), "parameters": _ENTRY},
    "DeleteEntry": {"operationRef": _ref("/entries/{entry_id}", "delete"), "parameters": _ENTRY},
}
VERSION_LINKS = {
    "GetVersion": {"operationRef": _ref("/kb/versions/{version}", "get"), "parameters": _VERSION},
    "ActivateVersion": {
        "operationRef": _ref("/kb/versions/{version}/activate", "post"),
        "parameters": _VERSION,
    },
}


def issue_dict(i: KBIssue) -> dict[str, Any]:
    """A KB problem or warning as the API gives it: where (file, row, column) and what."""
    return {"source": i.source, "row": i.row, "column": i.column, "message": i.message}


def issues_response(err: KBValidationError, what: str = "knowledge base") -> JSONResponse:
    """422 listing every problem of an uploaded file or edit (file, row, column); nothing was stored.

    What the reader also warned about (e.g. which sheet of a workbook it read) comes as `warnings`."""
    content: dict[str, Any] = {
        "detail": f"{len(err.issues)} problem(s) in the {what}; nothing was changed",
        "issues": [issue_dict(i) for i in err.issues],
    }
    if err.warnings:
        content["warnings"] = [issue_dict(w) for w in err.warnings]
    return JSONResponse(status_code=422, content=content)


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


def version_out(row: KBVersion, active: KBVersion | None, now: datetime | None = None) -> VersionOut:
    """A version as the API shows it; `active`: the shop's active version's row (None: none is)."""
    return VersionOut(
        version=row.version,
        status=row.status,  # type: ignore[arg-type]
        active=active is not None and row.version == active.version,
        state=version_state(row, active, now),
        entries=row.entries,
        kb_hash=row.kb_hash,
        options=row.options or {},
        metrics=row.metrics or {},
        error=row.error,
        created_at=row.created_at.isoformat(),
        finished_at=row.finished_at.isoformat() if row.finished_at else None,
        stage=row.stage,
        progress=min(1.0, max(0.0, float(row.progress or 0.0))),
        attempts=row.attempts or 0,
    )


@router.post(
    "/kb",
    response_model=UploadOut,
    responses={
        413: {"description": "the file, or what it inflates to (rows, cells, bytes), is over a limit"},
        422: {"description": "the file has problems; every one is listed with row and column"},
    },
    openapi_extra=upload_body("file", "the KB: .csv, .xlsx, .json or .jsonl"),
)
async def upload_kb(
    request: Request,
    shop: ShopDep,
    service: ServiceDep,
    publish: Annotated[bool, Query(description="also publish it as a new version")] = False,
) -> Any:
    """Replace the shop's editable KB with a file (all or nothing).

    Only the shop's own key gets the body read; reading, validating and storing the file (and freezing the
    publish) run in the KB process (api/kb/writes.py): a large or hostile file must not stall the event
    loop that answers every other shop, nor the KB's writes take the CPU that serves their messages.
    """
    max_bytes = service.settings.kb_max_upload_bytes
    filename, data = await read_upload(request, "file", max_bytes)
    name, suffix = upload_name(filename, "kb.csv")
    try:
        stored = await service.store_upload(
            shop.id, name, suffix, data, read_limits(service.settings), publish
        )
    except KBValidationError as e:
        return issues_response(e)
    except KBTooLarge as e:
        return too_large_response(e)
    warnings = [IssueOut(**issue_dict(w)) for w in stored.warnings]
    if stored.frozen is None:
        return UploadOut(entries=stored.entries, warnings=warnings)
    published = await run_in_threadpool(service.publisher.queue_frozen, shop.id, stored.frozen)
    return UploadOut(
        entries=stored.entries, version=published.version, reused=published.reused, warnings=warnings
    )


def too_large_response(e: KBTooLarge) -> JSONResponse:
    """413 naming the read limit a file went over and the setting that raises it."""
    setting = LIMIT_SETTINGS[e.what]
    return JSONResponse(
        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        content={"detail": f"{e} ({setting})", "limit": {"setting": setting, "value": e.limit}},
    )


def read_limits(settings: Settings) -> ReadLimits:
    """What reading an uploaded KB may take, from the KEFU_KB_MAX_* settings."""
    return ReadLimits(
        max_rows=settings.kb_max_rows,
        max_cells=settings.kb_max_cells,
        max_inflated_bytes=settings.kb_max_inflated_bytes,
    )


@router.get("/entries", response_model=list[EntryOut])
def list_entries(
    shop: ShopDep,
    service: ServiceDep,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EntryOut]:
    with service.db.session() as s:
        return [entry_out(e) for e in kb_repo.list_entries(s, shop.id, offset, limit)]


# {entry_id:path}: ids may hold "/" (uploads accept them), which a plain parameter would not match
@router.get("/entries/{entry_id:path}", response_model=EntryOut)
def get_entry(entry_id: str, shop: ShopDep, service: ServiceDep) -> EntryOut:
    with service.db.session() as s:
        e = kb_repo.get_entry(s, shop.id, entry_id)
    if e is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no entry {entry_id!r} in shop {shop.id!r}")
    return entry_out(e)


@router.put(
    "/entries/{entry_id:path}",
    response_model=EntryOut,
    responses={
        200: {"description": "the entry as stored", "links": ENTRY_LINKS},
        422: {"description": "the entry (with the rest of the KB) has problems"},
    },
)
def put_entry(entry_id: str, body: EntryIn, shop: ShopDep, service: ServiceDep) -> Any:
    """Add or replace an entry; checked together with the rest of the KB (duplicates included)."""
    record = body.model_dump()
    record["id"] = entry_id
    try:
        with service.db.session(write_lock=True) as s:
            kept = kb_repo.upsert_entry(s, shop.id, record)
            saved = kb_repo.get_entry(s, shop.id, kept.id)  # the id as stored: stripped, no control chars
    except KBValidationError as e:
        return issues_response(e)
    assert saved is not None
    return entry_out(saved)


@router.delete("/entries/{entry_id:path}", status_code=status.HTTP_204_NO_CONTENT)
def delete_entry(entry_id: str, shop: ShopDep, service: ServiceDep) -> None:
    with service.db.session(write_lock=True) as s:
        if not kb_repo.delete_entry(s, shop.id, entry_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no entry {entry_id!r} in shop {shop.id!r}")


@router.post(
    "/kb/publish",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PublishOut,
    responses={
        202: {"description": "the version being built (or reused)", "links": VERSION_LINKS},
        422: {"description": "the editable KB has problems (or is empty)"},
    },
)
def publish(shop: ShopDep, service: ServiceDep) -> Any:
    """Freeze the editable KB as a new version and enqueue its build (follow it on kb/versions/{version}:
    status, stage, progress, attempts, error).

    The same KB published twice builds once: when the KB (its kb_hash) and the engine options equal
    those of the shop's latest version that is building or ready, no version is made and that one is
    returned with `reused: true` (still 202); if it is ready but not active (after a rollback), it is
    activated. Concurrent publishes of a shop are serialized, so they never get the same number.
    """
    try:
        published = service.publisher.publish(shop.id)
    except KBValidationError as e:
        return issues_response(e)
    with service.db.session() as s:
        row = kb_repo.get_version(s, shop.id, published.version)
        shop_row = s.get(Shop, shop.id)
        assert row is not None and shop_row is not None
        out = version_out(row, _active_row(s, shop_row))
    return PublishOut(**out.model_dump(), reused=published.reused)


@router.get(
    "/kb/versions",
    response_model=list[VersionOut],
    responses={200: {"headers": {"Link": {"description": 'the next page, rel="next", when there is one'}}}},
)
def versions(
    request: Request,
    response: Response,
    shop: ShopDep,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=VERSIONS_MAX_PAGE, description="versions per page")] = VERSIONS_PAGE,
    before: Annotated[
        int | None, Query(ge=1, le=DB_INT_MAX, description="only versions numbered below this one")
    ] = None,
) -> list[VersionOut]:
    """The shop's versions, newest first, a page at a time: a `Link` header with `rel="next"` gives the
    next page's address (by version number, so a publish in between shifts nothing)."""
    with service.db.session() as s:
        rows = kb_repo.list_versions(s, shop.id, limit + 1, before)
        more, rows = len(rows) > limit, rows[:limit]
        active = next((r for r in rows if r.version == shop.active_version), None)
        if active is None:
            active = _active_row(s, shop)
        now = datetime.now(UTC)
        page = [version_out(r, active, now) for r in rows]
    if more:
        after = request.url.include_query_params(limit=limit, before=rows[-1].version)
        response.headers["Link"] = f'<{after}>; rel="next"'
    return page


def _active_row(s: Session, shop: Shop) -> KBVersion | None:
    """The row of the shop's active version (as `shop` says it is), if any."""
    return kb_repo.get_version(s, shop.id, shop.active_version) if shop.active_version else None


def _version_or_404(s: Any, shop: str, version: int) -> KBVersion:
    row = kb_repo.get_version(s, shop, version)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no version {version} in shop {shop!r}")
    return row


@router.get("/kb/versions/{version}", response_model=VersionOut)
def version(version: VersionNumber, shop: ShopDep, service: ServiceDep) -> VersionOut:
    with service.db.session() as s:
        return version_out(_version_or_404(s, shop.id, version), _active_row(s, shop))


@router.post(
    "/kb/versions/{version}/activate",
    response_model=ActivateOut,
    responses={
        409: {
            "description": "the version is not ready, or the editable KB has unpublished edits "
            "(publish or export them, or repeat with draft=discard or draft=keep); nothing was changed"
        }
    },
)
def activate(
    version: VersionNumber,
    shop: ShopDep,
    service: ServiceDep,
    draft: Annotated[
        Literal["discard", "keep"] | None,
        Query(
            description="what to do with an editable KB that has unpublished edits: discard them (it "
            "becomes this version's KB) or keep it as it is (only the served model rolls back); "
            "without it such an activation is refused with 409"
        ),
    ] = None,
) -> ActivateOut:
    """Serve an earlier (or any ready) version without a rebuild, and make its KB the editable KB.

    Edits then start from the KB being served, so the next publish does not bring back what was rolled
    back. An editable KB with unpublished edits is not replaced silently: see `draft`. The activation
    sticks: versions still building end ready but are not served (`draft_note` names them), while
    versions published afterwards are served once built.
    """
    with service.db.session() as s:
        row = _version_or_404(s, shop.id, version)
        if row.status != "ready":
            raise HTTPException(status.HTTP_409_CONFLICT, f"version {version} is {row.status}, not ready")
    notes: list[str] = []
    building: list[int] = []

    def restore(s: Session, target: KBVersion, active: int | None) -> None:
        building.extend(kb_repo.building_versions(s, shop.id))  # as of the activation (shop row locked)
        if draft != "keep":
            notes.append(kb_repo.restore_draft(s, shop.id, target, active, discard=draft == "discard"))

    try:
        service.publisher.activate(shop.id, version, with_locked=restore)
    except kb_repo.DraftConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    with service.db.session() as s:
        row = _version_or_404(s, shop.id, version)
        out = version_out(row, row)
    held = ""
    if building:
        numbers = ", ".join(map(str, building))
        which = f"version {numbers}" if len(building) == 1 else f"versions {numbers}"
        held = f"; {which}, still building, will end ready but not served (activate it then to serve it)"
    if draft == "keep":
        note = f"the editable KB was left as it was: the next publish serves it instead of version {version}"
        return ActivateOut(**out.model_dump(), draft="kept", draft_note=note + held)
    return ActivateOut(**out.model_dump(), draft="replaced", draft_note=notes[0] + held)


EXPORT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
ExportFormat = Annotated[Literal["csv", "xlsx"], Query(description="csv (UTF-8 with BOM, for Excel) or xlsx")]
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the KB as a file download, in the upload format (it uploads back unchanged)",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            EXPORT_TYPES["xlsx"]: {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _download(entries: list[KBEntry], name: str, fmt: str) -> Response:
    """The entries written by engine.kb (so load_kb reads them back unchanged) as an attachment."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"kb.{fmt}"
        dump_kb(entries, path)
        data = path.read_bytes()
    disposition = f'attachment; filename="{name}.{fmt}"'
    return Response(data, media_type=EXPORT_TYPES[fmt], headers={"Content-Disposition": disposition})


@router.get("/kb/export", response_class=Response, responses=EXPORT_RESPONSES)
def export_draft(shop: ShopDep, service: ServiceDep, format: ExportFormat = "csv") -> Response:
    """The editable KB (what the next publish freezes), e.g. to keep edits before a rollback."""
    with service.db.session() as s:
        entries = kb_repo.draft_entries(s, shop.id)
    return _download(entries, f"{shop.id}-kb-draft", format)


@router.get("/kb/versions/{version}/export", response_class=Response, responses=EXPORT_RESPONSES)
def export_version(
    version: VersionNumber, shop: ShopDep, service: ServiceDep, format: ExportFormat = "csv"
) -> Response:
    """The KB a version was published from, any status."""
    with service.db.session() as s:
        entries = kb_repo.version_entries(_version_or_404(s, shop.id, version))
    return _download(entries, f"{shop.id}-kb-v{version}", format)


MINING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the proposals and figures (json), or the proposals as a file in the KB's columns",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            EXPORT_TYPES["xlsx"]: {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"description": "a bad period (the parameter is named): reversed, out of range or too long"},
}


@router.get("/kb/mining", response_model=MiningOut, responses=MINING_RESPONSES)
def kb_mining(
    shop: ShopDep,
    service: ServiceDep,
    since: Annotated[
        datetime | None, Query(description="from (Beijing time without a zone; default: until - 30 days)")
    ] = None,
    until: Annotated[datetime | None, Query(description="to, excluded (default: now)")] = None,
    format: Annotated[
        Literal["json", "csv", "xlsx"],
        Query(description="json (proposals and figures), or csv / xlsx to edit and upload back"),
    ] = "json",
) -> Any:
    """What the bot did not answer well in a period (at most 92 days), clustered with the served model:
    each cluster proposed as a new entry or as paraphrases of the entry it is closest to, in the KB's
    columns. Mined: messages handed off or clarified, corrected by an agent or thumbed down, and those
    answered in conversations the customer rated badly on JD (see api/kb/mining.py); never the console's
    Try messages, which are the merchant's tests. Texts are as logged, masked. A new entry's answer is
    left blank: fill it in, then upload the rows with your KB."""
    try:
        start, end = mining.period(since, until)
    except mining.PeriodError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(e)) from e
    result = mining.mine_shop(service, shop, start, end)
    if format == "json":
        return result.to_dict()
    name = f"{shop.id}-mined-{start:%Y%m%d}-{end:%Y%m%d}.{format}"
    disposition = f'attachment; filename="{name}"'
    return Response(
        proposals_file(result.rows, format),
        media_type=EXPORT_TYPES[format],
        headers={"Content-Disposition": disposition},
    )
