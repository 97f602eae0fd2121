"""The editable KB against the live version: entries added, removed and changed (field by field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.kb import KBEntry

FIELDS = (
    "question",
    "similar",
    "answer",
    "category",
    "enabled",
    "valid_from",
    "valid_to",
    "action",
    "notify",
)


@dataclass
class Change:
    id: str
    fields: list[tuple[str, Any, Any]]  # (field, live value, draft value)


@dataclass
class KBDiff:
    added: list[KBEntry] = field(default_factory=list)
    removed: list[KBEntry] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _value(e: KBEntry, name: str) -> Any:
    if name == "similar":
        return list(e.similar) + [f"⟨{v}⟩" for v in e.answer_variants]  # variants shown with the paraphrases
    value = getattr(e, name)
    return value.isoformat() if hasattr(value, "isoformat") else value


def diff(draft: list[KBEntry], live: list[KBEntry]) -> KBDiff:
    """What publishing `draft` would change in the `live` KB, in the draft's order."""
    before = {e.id: e for e in live}
    after_ids = {e.id for e in draft}
    out = KBDiff()
    for e in draft:
        old = before.get(e.id)
        if old is None:
            out.added.append(e)
            continue
        changes = [(f, _value(old, f), _value(e, f)) for f in FIELDS if _value(old, f) != _value(e, f)]
        if changes:
            out.changed.append(Change(e.id, changes))
        else:
            out.unchanged += 1
    out.removed = [e for e in live if e.id not in after_ids]
    return out
