"""Knowledge base: upload (row errors before anything is stored), browse and search, add and edit
entries and paraphrases, the diff against the live version, publish with build progress, versions with
roll back, and any version (or the draft) as XLSX.

An upload's warnings (what loaded but deserves a look: ignored columns, hidden rows, the sheet read ...)
are kept in the store for the page the upload redirects to, and shown in the page's language
(api/console/kbwarnings.py). A version is shown by what the merchant gets from it (`version_state` of
api/kb/publisher.py, the API's `state`): a ready version is live, about to be activated by its build, or
ready but not active (an older one, or one whose build ended after the merchant rolled back: a rollback
sticks), which can be activated.

The same functions as the API's KB routes (api/routes/kb.py, api/kb/repo.py): validation through
engine.kb, so a problem is reported exactly as the API and `kefu build` report it, and a bad upload or
edit stores nothing.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.console import kbwarnings
from api.console.kbdiff import diff
from api.console.web import PREFIX, Console, ConsoleDep, CsrfDep, render, see_other
from api.db.models import KBVersion, Shop
from api.kb import repo as kb_repo
from api.kb.publisher import NOT_ACTIVATED, version_state
from api.routes.kb import _download, read_limits
from api.web.strict_json import StrictJSONRoute
from api.web.uploads import upload_name
from engine.kb import KBEntry, KBIssue, KBTooLarge, KBValidationError

router = APIRouter(route_class=StrictJSONRoute, prefix=PREFIX, include_in_schema=False)
PAGE_SIZE = 50
VERSIONS_PAGE = 50  # versions per page of the versions page, newest first
VersionNo = Annotated[int, Query(ge=1, le=2**31 - 1)]
WARNINGS_TTL = 3600  # seconds an upload's warnings stay readable by the page it redirects to
NotesKey = Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _matches(e: dict[str, Any], q: str) -> bool:
    q = q.casefold()
    texts = [e["id"], e["question"], e["answer"], e["category"], *e["similar"]]
    return any(q in str(t).casefold() for t in texts)


@router.get("/kb")
def kb_page(
    request: Request,
    console: ConsoleDep,
    q: Annotated[str, Query(max_length=200)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    with console.service.db.session() as s:
        entries = kb_repo.list_entries(s, console.shop.id)
    found = [e for e in entries if _matches(e, q)] if q.strip() else entries
    pages = max(1, -(-len(found) // PAGE_SIZE))
    page = min(page, pages)
    shown = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    notice = console.t("kb.saved") if request.query_params.get("saved") else ""
    return render(
        request,
        "kb.html",
        console,
        q=q,
        entries=shown,
        total=len(entries),
        found=len(found),
        page_no=page,
        pages=pages,
        notice=notice,
    )


# ---------------------------------------------------------------- entries


def _entry_form(
    request: Request,
    console: Console,
    entry: dict[str, Any],
    is_new: bool,
    status_code: int = 200,
    issues: list[KBIssue] | None = None,
) -> Response:
    return render(
        request,
        "kb_entry.html",
        console,
        status_code,
        page="kb-entry",
        entry=entry,
        is_new=is_new,
        issues=issues or [],
    )


@router.get("/kb/entry")
def entry_page(
    request: Request,
    console: ConsoleDep,
    id: Annotated[str, Query(max_length=200)] = "",
    question: Annotated[str, Query(max_length=2000)] = "",
    similar: Annotated[str, Query(max_length=20000)] = "",
) -> Response:
    """Edit an entry (`id`), or a new one, prefilled from `question` and `similar` (Unanswered)."""
    if id:
        with console.service.db.session() as s:
            entry = kb_repo.get_entry(s, console.shop.id, id)
        if entry is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_entry", id=id))
        return _entry_form(request, console, entry, is_new=False)
    blank = {"id": "", "question": question, "similar": _lines(similar), "answer": "", "category": ""}
    return _entry_form(request, console, {**blank, "enabled": True}, is_new=True)


@router.post("/kb/entry")
def save_entry(
    request: Request,
    console: CsrfDep,
    id: Annotated[str, Form(max_length=200)] = "",
    question: Annotated[str, Form(max_length=5000)] = "",
    similar: Annotated[str, Form(max_length=200_000)] = "",
    answer: Annotated[str, Form(max_length=50_000)] = "",
    category: Annotated[str, Form(max_length=500)] = "",
    enabled: Annotated[str, Form(max_length=10)] = "",
    is_new: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Add or replace one entry, checked with the rest of the KB (a duplicate id or question included)."""
    shop = console.shop.id
    record: dict[str, Any] = {
        "id": id.strip(),
        "question": question,
        "similar": _lines(similar),
        "answer": answer,
        "category": category,
        "enabled": enabled == "on",
    }
    with console.service.db.session() as s:
        existing = kb_repo.get_entry(s, shop, record["id"]) if record["id"] else None
    if existing is not None:  # fields the console does not edit are kept as they were
        record = {**existing, **record}
    if is_new and existing is not None:
        issue = KBIssue("console", None, "id", console.t("kb.id_taken", id=record["id"]))
        return _entry_form(request, console, record, True, 400, [issue])
    try:
        with console.service.db.session(write_lock=True) as s:
            kept = kb_repo.upsert_entry(s, shop, record)
    except KBValidationError as e:
        return _entry_form(request, console, record, bool(is_new), 400, e.issues)
    return see_other(f"{PREFIX}/kb?q={kept.id}&saved=1")


@router.post("/kb/entry/delete")
def delete_entry(request: Request, console: CsrfDep, id: Annotated[str, Form(max_length=200)]) -> Response:
    with console.service.db.session(write_lock=True) as s:
        if not kb_repo.delete_entry(s, console.shop.id, id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_entry", id=id))
    return see_other(f"{PREFIX}/kb")


@router.post("/kb/paraphrase")
def add_paraphrase(
    request: Request,
    console: CsrfDep,
    entry_id: Annotated[str, Form(max_length=200)],
    text: Annotated[str, Form(max_length=2000)],
    back: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """One click from Unanswered: a customer's message becomes a paraphrase of an entry."""
    shop = console.shop.id
    with console.service.db.session() as s:
        entry = kb_repo.get_entry(s, shop, entry_id)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_entry", id=entry_id))
    text = text.strip()
    if text and text not in entry["similar"] and text != entry["question"]:
        entry["similar"] = [*entry["similar"], text]
        try:
            with console.service.db.session(write_lock=True) as s:
                kb_repo.upsert_entry(s, shop, entry)
        except KBValidationError as e:
            return _entry_form(request, console, entry, False, 400, e.issues)
    return see_other(back if back.startswith(PREFIX + "/") else f"{PREFIX}/kb?q={entry_id}&saved=1")


# ---------------------------------------------------------------- upload


@router.get("/kb/upload")
def upload_page(request: Request, console: ConsoleDep) -> Response:
    return render(request, "kb_upload.html", console, page="kb-upload", issues=[])


@router.post("/kb/upload")
async def upload(request: Request, console: CsrfDep) -> Response:
    """Replace the editable KB with a file, all or nothing; its problems are listed by row and column."""
    service = console.service
    form = await request.form()
    upload = form.get("file")
    data = await upload.read() if upload is not None and not isinstance(upload, str) else b""
    if not data:
        return render(
            request,
            "kb_upload.html",
            console,
            400,
            page="kb-upload",
            issues=[],
            error=console.t("kb.no_file"),
        )
    try:
        name, suffix = upload_name(str(getattr(upload, "filename", "") or ""), "kb.csv")
    except HTTPException as e:  # a file type the KB reader does not take
        return render(
            request, "kb_upload.html", console, 400, page="kb-upload", issues=[], error=str(e.detail)
        )
    try:
        stored = await service.store_upload(
            console.shop.id, name, suffix, data, read_limits(service.settings), publish=False
        )
    except KBValidationError as e:
        warnings, more = kbwarnings.listed(e.warnings, console.t)
        return render(
            request,
            "kb_upload.html",
            console,
            400,
            page="kb-upload",
            issues=e.issues,
            filename=name,
            warnings=warnings,
            warnings_more=more,
        )
    except KBTooLarge as e:
        return render(request, "kb_upload.html", console, 413, page="kb-upload", issues=[], error=str(e))

    # what loaded but deserves a look, for the diff page the upload redirects to
    found: list[KBIssue] = stored.warnings
    notes = ""
    if found:
        notes = secrets.token_urlsafe(16)
        kept = kbwarnings.stored(found)
        await run_in_threadpool(service.store.set_json, _notes_key(console, notes), kept, WARNINGS_TTL)
    return see_other(f"{PREFIX}/kb/diff?uploaded={stored.entries}" + (f"&notes={notes}" if notes else ""))


def _notes_key(console: Console, notes: str) -> str:
    """Where an upload's warnings wait for the page it redirects to: the shop's, under a random name."""
    return f"console:kb-upload:{console.shop.id}:{notes}"


# ---------------------------------------------------------------- diff, publish, versions


def _live(s: Session, shop: Shop) -> KBVersion | None:
    return kb_repo.get_version(s, shop.id, shop.active_version) if shop.active_version else None


@router.get("/kb/diff")
def diff_page(
    request: Request,
    console: ConsoleDep,
    uploaded: Annotated[int | None, Query(ge=0, le=10**7)] = None,
    notes: NotesKey = "",
) -> Response:
    with console.service.db.session() as s:
        live_row = _live(s, console.shop)
        live = kb_repo.version_entries(live_row) if live_row else []
        try:
            draft = kb_repo.snapshot(s, console.shop.id)
            issues: list[KBIssue] = []
        except KBValidationError as e:
            draft, issues = [], e.issues
    notice = console.t("kb.uploaded", n=uploaded) if uploaded is not None else ""
    stored = console.service.store.get_json(_notes_key(console, notes)) if notes else None
    warnings, more = kbwarnings.shown(stored, console.t)
    return render(
        request,
        "kb_diff.html",
        console,
        page="kb-diff",
        diff=diff(draft, live),
        live_version=live_row.version if live_row else None,
        issues=issues,
        draft_size=len(draft),
        notice=notice,
        warnings=warnings,
        warnings_more=more,
    )


@router.post("/kb/publish")
def publish(request: Request, console: CsrfDep) -> Response:
    """Freeze the editable KB as a version and build it in the background; the page follows the build."""
    try:
        published = console.service.publisher.publish(console.shop.id)
    except KBValidationError as e:
        with console.service.db.session() as s:
            live_row = _live(s, console.shop)
            live = kb_repo.version_entries(live_row) if live_row else []
        return render(
            request,
            "kb_diff.html",
            console,
            400,
            page="kb-diff",
            diff=diff([], live),
            live_version=live_row.version if live_row else None,
            issues=e.issues,
            draft_size=0,
            error=console.t("kb.cannot_publish"),
        )
    return see_other(f"{PREFIX}/kb/publish?version={published.version}&reused={int(published.reused)}")


@router.get("/kb/publish")
def publish_page(
    request: Request, console: ConsoleDep, version: VersionNo, reused: Annotated[int, Query(ge=0, le=1)] = 0
) -> Response:
    with console.service.db.session() as s:
        shop, row = _version_and_shop(s, console, version)
        build = _build_status(console, row, kb_repo.get_version(s, shop.id, shop.active_version or 0))
    return render(
        request,
        "kb_publish.html",
        console,
        page="kb-publish",
        version=row,
        build=build,
        reused=bool(reused),
    )


def _version_and_shop(s: Session, console: Console, version: int) -> tuple[Shop, KBVersion]:
    """The session's shop as it is now (its active version) and one of its versions, or a 404."""
    shop = s.get(Shop, console.shop.id, populate_existing=True)
    row = kb_repo.get_version(s, console.shop.id, version)
    if shop is None or row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_version", version=version))
    return shop, row


def _build_status(console: Console, row: KBVersion, active: KBVersion | None) -> dict[str, Any]:
    """A version's build as the publish page shows it; `pending`: the page should ask again (still
    building, being activated, or live but not yet loaded here)."""
    t = console.t
    progress = console.service.build_progress(console.shop.id, row.version) or {}
    stage = str(progress.get("stage") or "")
    fraction = float(progress.get("fraction") or 0.0)
    state = version_state(row, active)
    message = ""
    pending = state in ("building", "activating")
    if row.status == "ready":
        fraction = 1.0
        values = {"version": row.version, "entries": row.entries}
        if state == "live":
            served = console.service.registry.get(console.shop.id)
            message = t("kb.build_ready", **values)
            if served is None or served.version != row.version:
                message += " " + t("kb.build_not_served")
                pending = True
        elif state == "activating":
            message = t("kb.build_activating", **values)
        else:
            live = t("kb.live_version", version=active.version) if active else t("kb.no_live_version")
            message = t("kb.build_inactive", live=live, **values)
            if NOT_ACTIVATED in (row.metrics or {}):
                message += " " + t("kb.not_activated")
    elif row.status in ("failed", "superseded"):
        message = t("kb.build_" + row.status, error=row.error or "")
    return {
        "version": row.version,
        "status": row.status,
        "state": state,
        "active": state == "live",
        "pending": pending,
        "status_text": t("status." + state),
        "stage": stage,
        "stage_text": t("stage." + stage) if stage else "",
        "fraction": fraction,
        "message": message,
    }


@router.get("/kb/build-status")
def build_status(console: ConsoleDep, version: VersionNo) -> JSONResponse:
    """A version's build, for the publish page's progress bar (polled by console.js)."""
    with console.service.db.session() as s:
        shop, row = _version_and_shop(s, console, version)
        active = kb_repo.get_version(s, shop.id, shop.active_version or 0)
        return JSONResponse(_build_status(console, row, active), headers={"Cache-Control": "no-store"})


def _versions(s: Session, shop: str, before: int | None = None) -> dict[str, Any]:
    """The versions page's: a page of the shop's versions (detached, newest first, below `before`), the
    state of each (version_state), which were held back by a rollback made while they built, and the
    number the next (older) page starts below, if there is one."""
    shop_row = s.get(Shop, shop, populate_existing=True)
    rows = kb_repo.list_versions(s, shop, VERSIONS_PAGE + 1, before)
    older = rows[VERSIONS_PAGE - 1].version if len(rows) > VERSIONS_PAGE else None
    rows = rows[:VERSIONS_PAGE]
    active_no = shop_row.active_version if shop_row else None
    active = next((r for r in rows if r.version == active_no), None)
    if active is None and active_no:
        active = kb_repo.get_version(s, shop, active_no)
    now = datetime.now(UTC)
    states = {r.version: version_state(r, active, now) for r in rows}
    held = {r.version for r in rows if NOT_ACTIVATED in (r.metrics or {})}
    for row in rows:
        s.expunge(row)
    return {"versions": rows, "states": states, "held": held, "older": older, "paged": before is not None}


@router.get("/kb/versions")
def versions_page(
    request: Request,
    console: ConsoleDep,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> Response:
    with console.service.db.session() as s:
        listed = _versions(s, console.shop.id, before)
    back = request.query_params.get("rolled_back", "")
    forward = request.query_params.get("activated", "")
    notice = console.t("kb.rolled_back", version=back) if back.isdigit() else ""
    if forward.isdigit():
        notice = console.t("kb.activated", version=forward)
    return render(request, "kb_versions.html", console, page="kb-versions", notice=notice, **listed)


@router.post("/kb/rollback")
def rollback(
    request: Request,
    console: CsrfDep,
    version: Annotated[int, Form(ge=1, le=2**31 - 1)],
    draft: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Serve a ready version again and make its KB the editable one; unpublished edits are not dropped
    silently: the page asks whether to discard or keep them (as the API's ?draft= does)."""
    service, shop = console.service, console.shop.id
    with service.db.session() as s:
        row = kb_repo.get_version(s, shop, version)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_version", version=version))
        if row.status != "ready":
            raise HTTPException(status.HTTP_409_CONFLICT, console.t("kb.not_ready", version=version))

    def restore(s: Session, target: KBVersion, active: int | None) -> None:
        kb_repo.restore_draft(s, shop, target, active, discard=draft == "discard")

    try:
        service.publisher.activate(shop, version, with_locked=None if draft == "keep" else restore)
    except kb_repo.DraftConflict:
        with service.db.session() as s:
            listed = _versions(s, shop)
        return render(
            request, "kb_versions.html", console, 409, page="kb-versions", conflict=version, **listed
        )
    before = console.shop.active_version  # as the request found it
    if before is None or version > before:  # forward: a version never served, or rolled back from
        return see_other(f"{PREFIX}/kb/versions?activated={version}")
    return see_other(f"{PREFIX}/kb/versions?rolled_back={version}")


def _export(entries: list[KBEntry], name: str, fmt: str) -> Response:
    if fmt not in ("xlsx", "csv"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "xlsx or csv")
    return _download(entries, name, fmt)


@router.get("/kb/export/draft.{fmt}")
def export_draft(console: ConsoleDep, fmt: str) -> Response:
    with console.service.db.session() as s:
        entries = kb_repo.draft_entries(s, console.shop.id)
    return _export(entries, f"{console.shop.id}-kb-draft", fmt)


@router.get("/kb/export/{version:int}.{fmt}")
def export_version(console: ConsoleDep, version: int, fmt: str) -> Response:
    """A version's KB (any status) as XLSX or CSV, in the upload format."""
    with console.service.db.session() as s:
        row = kb_repo.get_version(s, console.shop.id, version) if 1 <= version < 2**31 else None
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, console.t("kb.no_version", version=version))
        entries = kb_repo.version_entries(row)
    return _export(entries, f"{console.shop.id}-kb-v{version}", fmt)
