"""The shops' editable KBs and their published versions in the database.

Every function takes the shop id and filters on it. Validation goes through engine.kb, so an upload, a
single-entry edit and a publish report problems exactly as `kefu build` does, and a bad edit changes
nothing that was stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.db.models import Entry, KBVersion, Shop, utcnow
from engine.kb import KBEntry, KBValidationError, kb_hash, load_kb


def _row_to_entry_dict(row: Entry) -> dict[str, Any]:
    return {
        "id": row.entry_id,
        "question": row.question,
        "similar": list(row.similar or []),
        "answer": row.answer,
        "category": row.category,
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
        "enabled": row.enabled,
        "action": row.action or "",
        "notify": bool(row.notify),
        "answer_variants": list(row.answer_variants or []),
    }


def list_entries(s: Session, shop: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    q = select(Entry).where(Entry.shop_id == shop).order_by(Entry.position, Entry.entry_id).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    return [_row_to_entry_dict(r) for r in s.scalars(q)]


def get_entry(s: Session, shop: str, entry_id: str) -> dict[str, Any] | None:
    if "\x00" in entry_id:  # no KB id has control characters, and PostgreSQL cannot compare a NUL
        return None
    row = s.get(Entry, (shop, entry_id))
    return None if row is None else _row_to_entry_dict(row)


def validated(entries: Iterable[dict[str, Any] | KBEntry], source: str) -> list[KBEntry]:
    """The whole KB through the engine's validator (raises KBValidationError listing every issue,
    sizes included: engine.kb.FIELD_LIMITS fit the kb_entries columns)."""
    return load_kb(list(entries), source_name=source)


def replace_all(s: Session, shop: str, entries: Sequence[KBEntry]) -> None:
    """Swap the shop's whole editable KB for validated entries, in the caller's transaction.

    Like every edit it locks the shop row first: two uploads at once would otherwise both delete, then
    both insert the same ids (a unique violation on PostgreSQL). On SQLite the caller's transaction
    holds the write lock (`Database.session(write_lock=True)`).
    """
    lock_shop(s, shop)
    s.execute(delete(Entry).where(Entry.shop_id == shop))
    s.add_all(_entry_row(shop, e, i) for i, e in enumerate(entries))


def upsert_entry(s: Session, shop: str, entry: dict[str, Any]) -> KBEntry:
    """Add or replace one entry, validated together with the rest of the KB (duplicates included)."""
    lock_shop(s, shop)  # as in replace_all: the KB it validates against stays as read
    current = list_entries(s, shop)
    ids = [e["id"] for e in current]
    new_id = str(entry.get("id", "")).strip()
    merged = [entry if e["id"] == new_id else e for e in current]
    if new_id not in ids:
        merged.append(entry)
    entries = validated(merged, f"shop {shop}")
    # the entry as validated (one per record, in order): its id normalised like any KB id, which drops
    # control characters that str.strip() keeps, so it is looked up by position, not by `new_id`
    kept = entries[next(i for i, e in enumerate(merged) if e is entry)]
    position = ids.index(kept.id) if kept.id in ids else len(ids)
    existing = s.get(Entry, (shop, kept.id))
    if existing is not None:
        s.delete(existing)
        s.flush()
    s.add(_entry_row(shop, kept, position))
    return kept


def delete_entry(s: Session, shop: str, entry_id: str) -> bool:
    if "\x00" in entry_id:  # as in get_entry
        return False
    lock_shop(s, shop)
    return bool(
        s.execute(delete(Entry).where(Entry.shop_id == shop, Entry.entry_id == entry_id)).rowcount  # type: ignore[attr-defined]
    )


def _entry_row(shop: str, e: KBEntry, position: int) -> Entry:
    return Entry(
        shop_id=shop,
        entry_id=e.id,
        position=position,
        question=e.question,
        similar=list(e.similar),
        answer=e.answer,
        category=e.category,
        valid_from=e.valid_from,
        valid_to=e.valid_to,
        enabled=e.enabled,
        action=e.action,
        notify=e.notify,
        answer_variants=list(e.answer_variants),
    )


def snapshot(s: Session, shop: str) -> list[KBEntry]:
    """The editable KB as validated entries: what a publish freezes."""
    return validated(list_entries(s, shop), f"shop {shop}")


def lock_shop(s: Session, shop: str) -> Shop | None:
    """The shop row, locked until the transaction ends: publishes and activations of a shop queue here.

    That is SELECT ... FOR UPDATE on PostgreSQL; SQLite ignores it, so there the transaction must have
    been opened with `Database.session(write_lock=True)` (BEGIN IMMEDIATE) to be serialized.
    """
    return s.get(Shop, shop, with_for_update=True, populate_existing=True)


def reusable_version(s: Session, shop: str, digest: str, options: dict[str, Any]) -> KBVersion | None:
    """The shop's latest building-or-ready version that froze this very KB with these engine options.

    Publishing it again would build the same model: the publish returns that version instead (a rollback
    makes an older version's KB the draft, so the match need not be the latest version). None when a newer
    version is still building: its build would overtake the reused one, so a new version is numbered.
    """
    rows = s.scalars(
        select(KBVersion)
        .where(KBVersion.shop_id == shop, KBVersion.status.in_(("building", "ready")))
        .order_by(KBVersion.version.desc())
    )
    for row in rows:
        if row.kb_hash == digest and dict(row.options or {}) == options:
            return row
        if row.status == "building":
            return None
    return None


def create_version(
    s: Session, shop: str, entries: Sequence[KBEntry], options: dict[str, Any] | None = None
) -> KBVersion:
    """A new version row in state `building`, numbered after the shop's last one.

    The shop row is locked first (and the caller's transaction holds SQLite's write lock), so
    concurrent publishes (on any replica) number their versions one after the other.
    """
    lock_shop(s, shop)
    row = KBVersion(
        shop_id=shop,
        version=latest_version(s, shop) + 1,
        request_seq=next_request(s, shop),
        status="building",
        kb_hash=kb_hash(entries),
        entries=len(entries),
        snapshot=[e.to_dict() for e in entries],
        options=dict(options or {}),
        metrics={},
        stage="queued",  # api.kb.builds.QUEUED: waiting for a build worker
        heartbeat_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def latest_version(s: Session, shop: str) -> int:
    return int(s.scalar(select(func.max(KBVersion.version)).where(KBVersion.shop_id == shop)) or 0)


def next_request(s: Session, shop: str) -> int:
    """The number of the merchant's next request for a version (KBVersion.request_seq): a publish, or
    an explicit activation. The caller holds the shop row locked (lock_shop): requests are numbered in
    turn."""
    return int(s.scalar(select(func.max(KBVersion.request_seq)).where(KBVersion.shop_id == shop)) or 0) + 1


def building_versions(s: Session, shop: str) -> list[int]:
    return list(
        s.scalars(
            select(KBVersion.version)
            .where(KBVersion.shop_id == shop, KBVersion.status == "building")
            .order_by(KBVersion.version)
        )
    )


def get_version(s: Session, shop: str, version: int) -> KBVersion | None:
    return s.scalar(select(KBVersion).where(KBVersion.shop_id == shop, KBVersion.version == version))


def list_versions(
    s: Session, shop: str, limit: int | None = None, before: int | None = None
) -> list[KBVersion]:
    """The shop's versions, newest first; `before`: only those numbered below it, `limit`: at most so many
    (a shop that publishes every few minutes has thousands)."""
    q = select(KBVersion).where(KBVersion.shop_id == shop)
    if before is not None:
        q = q.where(KBVersion.version < before)
    q = q.order_by(KBVersion.version.desc())
    if limit is not None:
        q = q.limit(limit)
    return list(s.scalars(q))


def finish_version(
    s: Session, shop: str, version: int, status: str, metrics: dict[str, Any], error: str | None
) -> None:
    row = get_version(s, shop, version)
    if row is not None:
        row.status, row.metrics, row.error, row.finished_at = status, metrics, error, utcnow()


def version_entries(row: KBVersion) -> list[KBEntry]:
    return load_kb(row.snapshot, source_name=f"version {row.version}")


def draft_entries(s: Session, shop: str) -> list[KBEntry]:
    """The editable KB as entries (empty when it has none), e.g. to export it."""
    rows = list_entries(s, shop)
    return validated(rows, f"shop {shop}") if rows else []


class DraftConflict(Exception):
    """Activating would replace an editable KB that holds edits no version has."""


def restore_draft(s: Session, shop: str, target: KBVersion, active: int | None, discard: bool) -> str:
    """Make `target`'s KB the editable KB, in the caller's transaction (the shop row locked); a note.

    Edits nobody published are not dropped silently: the draft may be replaced when it is empty, equals
    the KB of the version that was active or of `target`, or when `discard` says so; else
    DraftConflict, and nothing has changed.
    """
    current = list_entries(s, shop)
    try:
        current_hash = kb_hash(validated(current, f"shop {shop}")) if current else None
    except KBValidationError:
        current_hash = "invalid"  # cannot equal any version's KB: it holds edits
    published = {target.kb_hash}
    active_row = get_version(s, shop, active) if active is not None else None
    if active_row is not None:
        published.add(active_row.kb_hash)
    unpublished = current_hash is not None and current_hash not in published
    if unpublished and not discard:
        since = f"version {active}, the one active," if active_row is not None else "every version"
        raise DraftConflict(
            f"the editable KB has unpublished edits (it differs from {since}); nothing was changed. "
            f"Publish them first (POST kb/publish), or save them (GET kb/export?format=csv|xlsx), then "
            f"repeat with ?draft=discard to replace them with version {target.version}'s KB, or with "
            f"?draft=keep to serve version {target.version} and leave the editable KB as it is"
        )
    replace_all(s, shop, version_entries(target))
    note = f"the editable KB is now version {target.version}'s KB ({target.entries} entries)"
    return note + ("; its unpublished edits were discarded" if unpublished else "")


def snapshot_of_version(db: Any, shop: str, version: int) -> tuple[list[KBEntry], dict[str, Any]]:
    """The frozen KB of a version and its engine options, for a replica that must rebuild its model."""
    with db.session() as s:
        row = get_version(s, shop, version)
        if row is None:
            raise ValueError(f"version {version} of shop {shop} is gone")
        return version_entries(row), dict(row.options or {})
