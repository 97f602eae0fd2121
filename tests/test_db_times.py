"""Times in the database are UTC moments on both backends (api.db.models.UtcDateTime): written from any
zone, read back aware, compared in queries as the same moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from api.db.migrate import upgrade
from api.db.models import KBVersion, Shop
from api.jd import BEIJING
from api.routes.kb import version_out


def test_times_come_back_as_aware_utc_moments_and_compare_as_moments(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        upgrade(engine)
        at = datetime(2026, 11, 11, 0, 30, tzinfo=BEIJING)  # 2026-11-10 16:30 UTC
        with Session(engine) as s:
            s.add(Shop(id="s1", name="", api_key_hash="h", created_at=at))
            s.flush()
            s.add(KBVersion(shop_id="s1", version=1, created_at=at))
            s.add(KBVersion(shop_id="s1", version=2, created_at=datetime(2026, 11, 10, 16, 45)))  # naive: UTC
            s.commit()
        with Session(engine) as s:
            shop = s.get(Shop, "s1")
            assert shop is not None and shop.created_at.tzinfo is not None
            assert shop.created_at == at and shop.created_at.utcoffset() == timedelta(0)
            v1, v2 = s.scalars(select(KBVersion).order_by(KBVersion.version)).all()
            assert v2.created_at == datetime(2026, 11, 10, 16, 45, tzinfo=UTC)
            # a bound in Beijing time selects by the moment, not by the wall-clock digits
            later = s.scalars(
                select(KBVersion.version).where(
                    KBVersion.created_at > datetime(2026, 11, 11, 0, 40, tzinfo=BEIJING)
                )
            ).all()
            assert later == [2]
            # what the API writes carries its offset, whatever the database
            assert version_out(v1, None).created_at == "2026-11-10T16:30:00+00:00"
        with engine.connect() as conn:  # stored as UTC: the wall time read raw is 16:30, not 00:30
            raw = conn.execute(text("SELECT created_at FROM shops WHERE id = 's1'")).scalar_one()
        assert "16:30" in str(raw)
    finally:
        engine.dispose()
