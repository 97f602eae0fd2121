"""The demo shop of `make run`: a shop with the demo FAQ published and the demo catalog imported.

Opt-in (KEFU_DEMO_SHOP and KEFU_DEMO_API_KEY): on start, the shop is created if missing, its KB is
uploaded and published if it has none, and the catalog is imported if it has none, so a restart keeps
whatever was changed through the API since.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.catalog import repo as catalog_repo
from api.catalog.importer import load_catalog
from api.db.models import Entry, Shop
from api.kb import repo as kb_repo
from api.web.auth import hash_key
from api.web.deps import SHOP_ID
from engine.kb import load_kb

log = logging.getLogger("kefu.demo")


def seed_demo_shop(service: Any) -> bool:
    """Create and fill the demo shop as configured; False (and a log line) when it cannot be done."""
    settings = service.settings
    shop, key = settings.demo_shop, settings.demo_api_key
    if not shop or not SHOP_ID.match(shop):
        log.error("KEFU_DEMO_SHOP %r is not a valid shop id (a-z, 0-9, '-', '_')", shop)
        return False
    if key is None or not key.get_secret_value():
        log.error("KEFU_DEMO_SHOP is set but KEFU_DEMO_API_KEY is not: the demo shop is not created")
        return False
    key_hash = hash_key(key.get_secret_value())
    try:
        with service.db.session() as s:
            if s.get(Shop, shop) is None:
                s.add(Shop(id=shop, name="演示店铺", api_key_hash=key_hash, settings={}))
                log.info("demo shop %s created", shop)
    except IntegrityError:
        # several workers start on a fresh database at once: the one that created the shop fills it
        log.info("demo shop %s was created by another worker at the same moment; it fills the shop", shop)
        return True
    with service.db.session() as s:
        has_kb = bool(s.scalar(select(func.count()).select_from(Entry).where(Entry.shop_id == shop)))
        has_catalog = catalog_repo.revision(s, shop)[0] > 0
    if not has_catalog:
        skus = load_catalog(settings.demo_catalog)
        with service.db.session() as s:
            catalog_repo.replace_all(s, shop, skus)
        log.info("demo shop %s: %d SKUs imported from %s", shop, len(skus), settings.demo_catalog)
    service.catalogs.warm(shop)
    if not has_kb:
        entries = load_kb(settings.demo_kb)
        with service.db.session() as s:
            kb_repo.replace_all(s, shop, entries)
        version = service.publisher.publish(shop).version  # after the catalog: its names join the dictionary
        log.info("demo shop %s: KB %s published as version %d (building)", shop, settings.demo_kb, version)
    log.info(
        # the app does not know the port uvicorn listens on (make run: 8000)
        "talk to the demo shop: curl -s http://<host:port>/v1/shops/%s/messages"
        " -H 'X-API-Key: <KEFU_DEMO_API_KEY>' -H 'Content-Type: application/json'"
        ' -d \'{"conversation_id": "c1", "text": "你好"}\' (README: a whole conversation)',
        shop,
    )
    return True
