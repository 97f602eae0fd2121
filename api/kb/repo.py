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
from engine.kb import KBEntry, KBIssue, KBValidationError, kb_hash, load_kb

# Sizes of the kb_entries columns the KB format itself does not limit (PostgreSQL refuses longer values).
COLUMN_LIMITS = {"id": 200, "category": 200, "action": 40}


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
    """The whole KB through the engine's validator (raises KBValidationError listing every issue)."""
    return check_sizes(load_kb(list(entries), source_name=source), source)


def check_sizes(entries: list[KBEntry], source: str) -> list[KBEntry]:
    """The entries, if every value fits its column; else KBValidationError listing those that do not."""
    issues = [
        KBIssue(source, None, column, f"{column} {value[:30]!r}... is longer than {limit} characters")
        for e in entries
        for column, limit in COLUMN_LIMITS.items()
        if len(value := getattr(e, column)) > limit
    ]
    if issues:
        raise KBValidationError(issues)
    return entries


def replace_all(s: Session, shop: str, entries: Sequence[KBEntry]) -> None:
    """Swap the shop's whole editable KB for validated entries, in the caller's transaction."""
    s.execute(delete(Entry).where(Entry.shop_id == shop))
    s.add_all(_entry_row(shop, e, i) for i, e in enumerate(entries))


def upsert_entry(s: Session, shop: str, entry: dict[str, Any]) -> KBEntry:
    """Add or replace one entry, validated together with the rest of the KB (duplicates included)."""
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


def create_version(
    s: Session, shop: str, entries: Sequence[KBEntry], options: dict[str, Any] | None = None
) -> KBVersion:
    """A new version row in state `building`, numbered after the shop's last one.

    The shop row is locked first, so concurrent publishes (on any replica) number their versions one
    after the other instead of colliding on the same number.
    """
    s.get(Shop, shop, with_for_update=True)
    last = s.scalar(select(func.max(KBVersion.version)).where(KBVersion.shop_id == shop)) or 0
    row = KBVersion(
        shop_id=shop,
        version=last + 1,
        status="building",
        kb_hash=kb_hash(entries),
        entries=len(entries),
        snapshot=[e.to_dict() for e in entries],
        options=dict(options or {}),
        metrics={},
    )
    s.add(row)
    s.flush()
    return row


def latest_version(s: Session, shop: str) -> int:
    return int(s.scalar(select(func.max(KBVersion.version)).where(KBVersion.shop_id == shop)) or 0)


def get_version(s: Session, shop: str, version: int) -> KBVersion | None:
    return s.scalar(select(KBVersion).where(KBVersion.shop_id == shop, KBVersion.version == version))


def list_versions(s: Session, shop: str) -> list[KBVersion]:
    return list(
        s.scalars(select(KBVersion).where(KBVersion.shop_id == shop).order_by(KBVersion.version.desc()))
    )


def finish_version(
    s: Session, shop: str, version: int, status: str, metrics: dict[str, Any], error: str | None
) -> None:
    row = get_version(s, shop, version)
    if row is not None:
        row.status, row.metrics, row.error, row.finished_at = status, metrics, error, utcnow()


def version_entries(row: KBVersion) -> list[KBEntry]:
    return load_kb(row.snapshot, source_name=f"version {row.version}")


def snapshot_of_version(db: Any, shop: str, version: int) -> tuple[list[KBEntry], dict[str, Any]]:
    """The frozen KB of a version and its engine options, for a replica that must rebuild its model."""
    with db.session() as s:
        row = get_version(s, shop, version)
        if row is None:
            raise ValueError(f"version {version} of shop {shop} is gone")
        return version_entries(row), dict(row.options or {})
