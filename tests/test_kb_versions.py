"""Which version a publish may repeat instead of building: the KB repository's rule, on a real database."""

from __future__ import annotations

from pathlib import Path

from api.db.migrate import upgrade
from api.db.models import Shop
from api.db.session import Database
from api.kb import repo
from engine.kb import kb_hash, load_kb

A = load_kb([{"id": "a", "question": "能开发票吗", "answer": "能"}], source_name="a")
B = load_kb([{"id": "b", "question": "几天能到", "answer": "两天"}], source_name="b")


def test_a_publish_repeats_the_latest_matching_version_unless_a_newer_one_is_building(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/kefu.db")
    upgrade(db.engine)
    with db.session() as s:
        s.add(Shop(id="s", name="", api_key_hash="h", settings={}))
    with db.session() as s:
        v1 = repo.create_version(s, "s", A).version
        repo.finish_version(s, "s", v1, "ready", {}, None)
        v2 = repo.create_version(s, "s", B).version
        repo.finish_version(s, "s", v2, "ready", {}, None)
    with db.session() as s:
        # rolled back to v1's KB: publishing it again repeats v1, though v2 is newer (and ready)
        assert getattr(repo.reusable_version(s, "s", kb_hash(A), {}), "version", None) == v1
        assert getattr(repo.reusable_version(s, "s", kb_hash(B), {}), "version", None) == v2
        assert repo.reusable_version(s, "s", kb_hash(A), {"synonyms": {"票": ["发票"]}}) is None
        v3 = repo.create_version(s, "s", B).version  # a newer build of another KB is running
    with db.session() as s:
        # v1 must not be activated now: v3's build would finish after it and serve B again
        assert repo.reusable_version(s, "s", kb_hash(A), {}) is None
        assert getattr(repo.reusable_version(s, "s", kb_hash(B), {}), "version", None) == v3
    db.dispose()
