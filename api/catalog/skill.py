"""The catalog skill: which product a conversation is about, and spec questions answered from its SKU.

The product comes from the JD push (`TurnContext.sku_id`, applied by the policy), from a product link or
SKU id in the message, or from a model name ("星曜14 Pro"). A confident spec question about a known
product is answered from that SKU's attributes, ahead of the FAQ's generic spec entry; without a known
product the bot asks which one, offering the shop's best-sellers, and answers the pending question when
the customer picks one (by number, by name or model, or with a link). A product named alone gets a short
introduction.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from api.catalog.importer import Sku
from api.catalog.links import CODE, LABEL, LABEL_SEP, LINK, product_ids
from api.catalog.spec import (
    SpecMatcher,
    answer,
    compact,
    concept_of,
    spec_concepts,
    spec_matcher,
    value_of,
)
from api.dialog.conversation import Option, Reply, Turn, resolve_choice
from engine.results import Decision

NAME = "catalog"
MAX_OFFERED = 3
# what the skill's turns are known by in the exchange log (api.store.traffic counts them apart)
ENTRY_PREFIX = "sku:"  # the entry id of an answer from the catalog: sku:<id> or sku:<id>:<attribute>
REASON_WHICH = "which product?"  # the start of the reason of a "which product?" clarify
_DIGITS = re.compile(r"(?<![0-9A-Za-z])(\d{6,20})(?![0-9A-Za-z])")
# links and labelled ids ("商品编码：NB-1601"): taken out of the text before names and questions are read
# a link ends at a space or the first character no URL holds: a question typed right after it stays
_URL = re.compile(rf"https?://[!-~]+|{LINK}[!-~]*|3\.cn/[!-~]*|{LABEL}{LABEL_SEP}{CODE}", re.IGNORECASE)
_INTRO_HINTS = 4
# "这款…" points at one product: asked without a known product, it asks which
_THIS_PRODUCT = re.compile(r"这款|这个|这台|这部|这一款|该款|此款|它")


@dataclass(frozen=True)
class Mention:
    """Products a message names: one SKU, several (a series, a model sold in several configurations)."""

    skus: list[Sku]
    spans: list[str]  # compact text of what named them, taken out before the spec question is matched


class Catalog:
    """A shop's catalog ready for conversations: lookups by id, model and name, the spec matcher."""

    def __init__(self, skus: Sequence[Sku], spec: SpecMatcher | Callable[[], SpecMatcher]) -> None:
        self.skus = list(skus)
        self.by_id = {s.sku_id: s for s in self.skus}
        self._spec = spec
        ranked = sorted(enumerate(self.skus), key=lambda p: (p[1].sales is None, -(p[1].sales or 0), p[0]))
        self.best_sellers = [s for _, s in ranked]
        # longest first: "星曜14 Air 酷睿版" before "星曜14 Air"
        self._names = sorted(
            {(compact(s.name), s.sku_id) for s in self.skus if len(compact(s.name)) >= 4},
            key=lambda p: -len(p[0]),
        )
        models: dict[str, list[Sku]] = {}
        series: dict[str, list[Sku]] = {}
        for s in self.skus:
            if len(compact(s.model)) >= 2:
                models.setdefault(compact(s.model), []).append(s)
            head = compact(s.model.split()[0]) if s.model.split() else ""
            if len(head) >= 3 and not head.isdigit():
                series.setdefault(head, []).append(s)
        self._models = sorted(models.items(), key=lambda p: -len(p[0]))
        self._series = sorted(series.items(), key=lambda p: -len(p[0]))

    @classmethod
    def of(cls, skus: Sequence[Sku], target_precision: float = 0.95) -> Catalog:
        attributes = {a for s in skus for a in s.attributes}
        concepts = spec_concepts(
            attributes, any(s.price is not None for s in skus), any(s.model for s in skus)
        )
        return cls(skus, lambda: spec_matcher(concepts, target_precision))

    @property
    def spec(self) -> SpecMatcher:
        if not isinstance(self._spec, SpecMatcher):
            self._spec = self._spec()
        return self._spec

    def find(self, text: str) -> Mention | None:
        """The products a message names: a link or SKU id, a full name, a model, else a series."""
        ids = product_ids(text)
        ids += [m.group(1) for m in _DIGITS.finditer(text) if m.group(1) in self.by_id]
        for sku_id in ids:
            if sku_id in self.by_id:
                return Mention([self.by_id[sku_id]], [])
        t = compact(_URL.sub(" ", text))
        for name, sku_id in self._names:
            if name in t:
                return Mention([self.by_id[sku_id]], [name])
        for table in (self._models, self._series):
            hits: list[Sku] = []
            spans: list[str] = []
            for key, skus in table:
                if key in t and not any(key in s for s in spans):
                    spans.append(key)
                    hits += [s for s in skus if s not in hits]
            if hits:
                return Mention(hits, spans)
        return None

    def without_mentions(self, text: str, mention: Mention | None) -> str:
        """The message without links, labelled ids and product names: what is left is the question."""
        t = compact(_URL.sub(" ", text))
        for span in mention.spans if mention else ():
            t = t.replace(span, " ")
        return t.strip()

    def option(self, sku: Sku) -> Option:
        """A product as a clarify option: its model, or its full name when several SKUs share the model."""
        shared = len(next((skus for key, skus in self._models if key == compact(sku.model)), [])) > 1
        label = sku.name if shared or not sku.model else sku.model
        price = f"，{sku.price:g}元" if sku.price is not None else ""
        return Option(f"{ENTRY_PREFIX}{sku.sku_id}", f"{label}{price}")

    def uniform(self, concept_key: str, skus: Sequence[Sku] | None = None) -> bool:
        """Whether all these products (default: the whole catalog) have the same value for a concept:
        asking which of them then helps nobody."""
        concept = self.spec.concepts.get(concept_key) or concept_of(concept_key)
        pool = self.skus if skus is None else skus
        values = {(found[1] if (found := value_of(s, concept)) else None) for s in pool}
        return len(values) == 1 and None not in values

    def ranked(self, skus: Sequence[Sku]) -> list[Sku]:
        order = {s.sku_id: i for i, s in enumerate(self.best_sellers)}
        return sorted(skus, key=lambda s: order.get(s.sku_id, len(order)))


class CatalogSkill:
    """The Skill (api.dialog.conversation) over one shop's catalog."""

    name = NAME

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def respond(self, turn: Turn) -> Reply | None:
        cat = self.catalog
        if not cat.skus:
            return None
        mention = cat.find(turn.text)
        pending = turn.prev.pending if (turn.prev.pending or {}).get("skill") == NAME else None
        if pending is not None:
            turn.state.pending = None  # answered now, or the customer moved on
            chosen = self._chosen(turn.text, pending, mention)
            if chosen is not None:
                turn.state.sku_id = chosen.sku_id
                return self._after_choice(turn, chosen, pending)
            if mention is not None and len(mention.skus) > 1:  # "星曜14": a series; ask again, narrower
                attribute = pending.get("attribute")
                return self._which(
                    turn,
                    cat.ranked(mention.skus)[:MAX_OFFERED],
                    str(attribute) if attribute else None,
                    str(pending.get("question") or ""),
                    float(pending.get("confidence") or 1.0),
                    f"{len(mention.skus)} products match the name",
                )
        if mention is not None and len(mention.skus) == 1:
            turn.state.sku_id = mention.skus[0].sku_id
        question = cat.without_mentions(turn.question, mention)
        spec = cat.spec.match(question) if question else None
        current = cat.by_id.get(turn.state.sku_id or "")
        if spec is not None and spec.concept is not None:
            if current is not None:
                return self._answer(turn, current, spec.concept.key, question, spec.confidence, spec.reason)
            if len(cat.skus) == 1:  # a one-product shop: no need to ask which
                only = cat.skus[0]
                turn.state.sku_id = only.sku_id
                return self._answer(turn, only, spec.concept.key, question, spec.confidence, spec.reason)
            if (
                mention is None
                and turn.result.decision is Decision.ANSWER
                and not _THIS_PRODUCT.search(question)
                and cat.uniform(spec.concept.key)
            ):
                return None  # "预装的是什么系统", the same for every product: the merchant's FAQ answers
            if mention is not None and cat.uniform(spec.concept.key, mention.skus):
                # "星曜14 Pro有背光吗": two configurations of one model, the same keyboard: no need to ask
                first = cat.ranked(mention.skus)[0]
                return self._answer(turn, first, spec.concept.key, question, spec.confidence, spec.reason)
            offered = cat.ranked(mention.skus) if mention else cat.best_sellers
            key = spec.concept.key
            return self._which(turn, offered[:MAX_OFFERED], key, question, spec.confidence, spec.reason)
        if mention is None:
            return None
        kb = turn.result
        if kb.decision is Decision.ANSWER and question and not _only_product(question):
            return None  # "星曜14 Pro 能开专票吗": the FAQ answers; the product is remembered
        if len(mention.skus) > 1:
            reason = f"{len(mention.skus)} products match the name"
            return self._which(turn, cat.ranked(mention.skus)[:MAX_OFFERED], None, question, 1.0, reason)
        return self._intro(turn, mention.skus[0])

    # ------------------------------------------------------------------------------ the pending pick
    def _chosen(self, text: str, pending: dict[str, Any], mention: Mention | None) -> Sku | None:
        offered = [self.catalog.by_id[i] for i in pending.get("options") or () if i in self.catalog.by_id]
        if mention is not None:  # a link, an id, a model: any product of the catalog, offered or not
            return mention.skus[0] if len(mention.skus) == 1 else None
        options = [self.catalog.option(s) for s in offered]
        picked = resolve_choice(text, options)
        if picked is None:
            return None
        return self.catalog.by_id.get(picked.entry_id.removeprefix(ENTRY_PREFIX))

    def _after_choice(self, turn: Turn, sku: Sku, pending: dict[str, Any]) -> Reply:
        attribute = pending.get("attribute")
        if not attribute:
            return self._intro(turn, sku)
        confidence = float(pending.get("confidence") or 0.0)
        reason = f"customer chose {sku.label} for the pending {attribute} question"
        question = str(pending.get("question") or "")
        said = self._answer(turn, sku, str(attribute), question, confidence, reason)
        # the chosen product's data does not say: tell so, and offer what it does say
        return said or self._intro(turn, sku, f"这款的资料里没有写{attribute}哦。")

    # ------------------------------------------------------------------------------ replies
    def _answer(
        self, turn: Turn, sku: Sku, concept_key: str, question: str, confidence: float, reason: str
    ) -> Reply | None:
        concept = self.catalog.spec.concepts.get(concept_key) or concept_of(concept_key)
        said = answer(sku, concept, question)
        if said is None:
            return None  # the catalog does not say: the FAQ (or a person) answers
        entry_id = f"{ENTRY_PREFIX}{sku.sku_id}:{said.attribute}"
        turn.state = replace(
            turn.state, clarify_options=[], misses=0, last_answered_entry=entry_id, mood=None, pending=None
        )
        return Reply("answer", said.text, entry_id, confidence, reason=reason)

    def _which(
        self,
        turn: Turn,
        offered: list[Sku],
        attribute: str | None,
        question: str,
        confidence: float,
        reason: str,
    ) -> Reply:
        """Ask which product; the answer to the pending question waits in `state.pending`."""
        options = [self.catalog.option(s) for s in offered]
        what = f"的{attribute}" if attribute else ""
        lines = "\n".join(f"{i}. {o.question}" for i, o in enumerate(options, start=1))
        text = f"请问您想了解哪一款{what}呢？\n{lines}\n回复序号或型号即可，也可以直接发商品链接给我哦。"
        turn.state = replace(
            turn.state,
            clarify_options=[],
            pending={
                "skill": NAME,
                "attribute": attribute,
                "question": question,
                "confidence": confidence,
                "options": [s.sku_id for s in offered],
            },
        )
        return Reply("clarify", text, None, confidence, options=options, reason=f"{REASON_WHICH} {reason}")

    def _intro(self, turn: Turn, sku: Sku, lead: str = "") -> Reply:
        hints = "、".join(list(dict.fromkeys(concept_of(a).key for a in sku.attributes))[:_INTRO_HINTS])
        price = f"，售价{sku.price:g}元" if sku.price is not None else ""
        ask = f"想了解它的哪方面呢？比如{hints}。" if hints else "想了解它的哪方面呢？"
        entry_id = f"{ENTRY_PREFIX}{sku.sku_id}"
        turn.state = replace(
            turn.state, clarify_options=[], misses=0, last_answered_entry=entry_id, mood=None
        )
        text = f"{lead}您看的是{sku.name}{price}。{ask}"
        return Reply("answer", text, entry_id, 1.0, reason=f"product {sku.sku_id} named")


_ONLY_PRODUCT = re.compile(
    r"^(?:这款|这个|这台|那|那个|那款|看看|看下|看一下|介绍一下|介绍下|请问|你好|在吗|[\s，,。？?！!~～])*$"
)


def _only_product(question: str) -> bool:
    """Nothing but the product's name (and a filler) is left: the customer wants to talk about it."""
    return bool(_ONLY_PRODUCT.match(question))


# ------------------------------------------------------------------------------------- per shop
@dataclass
class _Cached:
    revision: tuple[int, datetime | None, float]  # (SKUs, last change, target precision) when read
    catalog: Catalog | None
    checked: float  # when the revision was last read (the Catalogs' clock)


class Catalogs:
    """Each shop's Catalog, reloaded when the stored catalog changes.

    Whether it changed is one cheap query (the revision), asked at most once per `ttl` seconds per shop
    (KEFU_LOOKUP_CACHE_SECONDS; 0: on every call): within that time a catalog written by another process
    is not seen yet. A write in this process calls `invalidate` once committed, so it is seen at once.
    """

    def __init__(self, db: Any, ttl: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.db = db
        self.ttl = ttl
        self._clock = clock
        self._cached: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._generation = 0  # counts invalidations: a read that overlapped one is not trusted for `ttl`

    def get(self, shop: str, target_precision: float = 0.95) -> Catalog | None:
        """The shop's catalog, or None when it has none."""
        from api.catalog import repo

        with self._lock:
            hit = self._cached.get(shop)
            generation = self._generation
        now = self._clock()
        if hit is not None and hit.revision[2] == target_precision and now - hit.checked < self.ttl:
            return hit.catalog
        with self.db.session() as s:
            count, changed = repo.revision(s, shop)
            key = (count, changed, target_precision)
            if hit is not None and hit.revision == key:
                catalog = hit.catalog
                skus: list[Sku] | None = None
            else:
                skus = repo.all_skus(s, shop) if count else []
        if skus is not None:
            catalog = Catalog.of(skus, target_precision) if skus else None
        with self._lock:
            # read while a write was being committed: keep it, but check again on the next call
            fresh = self._generation == generation
            self._cached[shop] = _Cached(key, catalog, now if fresh else float("-inf"))
        return catalog

    def invalidate(self, shop: str) -> None:
        """The shop's catalog was written (committed) in this process: read its revision on the next call."""
        with self._lock:
            self._generation += 1
            hit = self._cached.get(shop)
            if hit is not None:
                hit.checked = float("-inf")

    def warm(self, shop: str, target_precision: float = 0.95) -> threading.Thread:
        """Build the shop's spec matcher in the background, so the first spec question does not wait."""

        def run() -> None:
            catalog = self.get(shop, target_precision)
            if catalog is not None:
                catalog.spec  # noqa: B018 - the property builds and caches it

        t = threading.Thread(target=run, name="kefu-catalog-warm", daemon=True)
        t.start()
        return t
