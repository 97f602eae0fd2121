"""Async JD replies: a push is acknowledged at once, answered and sent back through JOS by a task queue.

A shop whose settings say `jd_reply_mode: "async"` gets `{"code": 0, "message_id": ..., "queued": true}`
as soon as the push is verified and its id claimed; a huey task then runs the matcher and sends the
reply (or a handoff's notice) with the chat push (api.jd.outbound). Why a queue: JD's push times out long
before a slow order lookup or a JOS hiccup is over, and a reply sent later is still a reply.

- Storage: KEFU_QUEUE_URL; by default a SQLite file under data_dir (one host), `redis://...` shared by
  replicas. The service runs KEFU_QUEUE_WORKERS worker threads in-process (0: run `kefu worker`).
- Idempotent by message id: the `jd_messages` row records each step (queued -> answering -> sending ->
  sent | failed) and every step is claimed with a conditional UPDATE, so a task that runs twice answers
  once and sends once; `upid` (the same for every attempt) lets JD drop a copy of a timed-out send too.
- Retries with exponential backoff (KEFU_JD_SEND_BACKOFF, doubled each time) while JOS fails transiently,
  within KEFU_JD_REPLY_DEADLINE from receipt: a reply that cannot be sent in time is not sent late but
  recorded as a handoff (code not_delivered), as is one JOS refuses for good.
- What crosses the queue (the customer's text and pin, the reply) is encrypted with KEFU_SECRET_KEY.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from fastapi.responses import JSONResponse
from huey import Huey
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from api.db.models import Exchange, JdMessage, Shop, utcnow
from api.dialog.conversation import HANDOFF_TEXT, TurnContext
from api.dialog.privacy import mask_pii
from api.jd import JosError
from api.jd.outbound import JdNotConfigured, bot_pin, send_chat_message, upid_for
from api.metrics import AUTH_FAILURES, HANDOFFS, JD_DELIVERY_LATENCY, JD_OUTBOUND
from api.store.queue import make_huey as make_queue
from api.store.queue import start_thread_consumer

log = logging.getLogger("kefu.jd.queue")

NOT_DELIVERED = "reply not delivered in time"
NOT_DELIVERABLE = "reply could not be delivered"  # JOS refused it for good
SEND_TIMEOUT = 10.0  # one chat push at most (less when the deadline is nearer)
PUBLIC_STATUS = {"queued": "queued", "answering": "queued", "sending": "queued", "sent": "sent"}


def make_huey(settings: Any) -> Huey:
    """The replies' queue (`{prefix}jd-replies`) in the storage of KEFU_QUEUE_URL (api.store.queue)."""
    return make_queue(settings, "jd-replies")


def async_replies(service: Any, shop: Shop, params: Mapping[str, str | None]) -> bool:
    """Whether this push is answered through the queue: the shop chose async replies, and the reply can
    be addressed (the push names the customer) and sent (a bot pin is configured). Otherwise it is
    answered in the HTTP response, as before."""
    settings = shop.settings or {}
    return (
        settings.get("jd_reply_mode") == "async"
        and bool(params.get("customer_pin"))
        and bool(bot_pin(service.settings, settings))
    )


def accept(service: Any, shop: Shop, params: Mapping[str, str | None], message_id: str, digest: str) -> Any:
    """Claim the message id and enqueue its answer; a replay gets the stored status instead."""
    try:
        with service.db.session() as s:
            s.add(JdMessage(shop_id=shop.id, message_digest=digest, reply=None, delivery="queued"))
    except IntegrityError:
        AUTH_FAILURES.labels("replay").inc()
        return replay_status(service, shop.id, digest, message_id)
    job = {
        k: params.get(k) or None for k in ("conversation_id", "text", "customer_pin", "sku_id", "order_id")
    }
    try:
        service.jd_queue.answer_task(shop.id, digest, service.secret_box.encrypt(json.dumps(job)))
    except Exception:
        # release the claim, as the sync path does: JD's retry of this message id is then processed
        with service.db.session() as s:
            s.execute(
                delete(JdMessage).where(JdMessage.shop_id == shop.id, JdMessage.message_digest == digest)
            )
        raise
    return {"code": 0, "message_id": message_id, "queued": True}


def replay_status(service: Any, shop_id: str, digest: str, message_id: str) -> JSONResponse:
    """What became of a message id seen before: queued, sent or failed (with the stored, masked reply once
    there is one). Nothing is enqueued again."""
    with service.db.session() as s:
        row = s.get(JdMessage, (shop_id, digest))
        delivery, stored = (row.delivery, row.reply) if row is not None else ("failed", None)
    if delivery is None:  # a message answered in the HTTP response (the shop was sync then)
        status = "sent" if stored is not None else "queued"
    else:
        status = PUBLIC_STATUS.get(delivery, "failed")
    body: dict[str, Any] = {
        "code": 0,
        "message_id": message_id,
        "queued": status == "queued",
        "status": status,
    }
    if stored is not None:
        body["reply"] = stored.get("reply")
    return JSONResponse(body, headers={"X-Kefu-Replay": "true"})


class JdQueue:
    """The huey instance, its two tasks and the in-process consumer of one Service."""

    def __init__(self, service: Any, huey: Huey | None = None) -> None:
        self.service = service
        self.huey = huey if huey is not None else make_huey(service.settings)
        self.answer_task = self.huey.task(name="kefu.jd.answer")(self._answer)
        self.send_task = self.huey.task(name="kefu.jd.send")(self._send)
        self._consumer: Any = None
        self._lock = threading.Lock()

    # -- consumer -------------------------------------------------------------------------------------
    def start(self, workers: int) -> None:
        """Worker threads (and the scheduler that releases delayed retries) in this process. Started by
        hand rather than with Consumer.run(), which wants the main thread for its signal handlers."""
        with self._lock:
            if workers <= 0 or self.huey.immediate or self._consumer is not None:
                return
            # an idle worker looks for work at least twice a second
            self._consumer = start_thread_consumer(self.huey, workers, max_delay=0.5, shutdown_timeout=5.0)
        log.info("JD reply queue: %d worker thread(s)", workers)

    def stop(self) -> None:
        """Let running tasks finish (up to 5 s), then stop; queued tasks wait for the next start."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.stop(graceful=True)
        self.huey.storage.close()  # its connection (a SQLite file's three descriptors); reopened on use

    # -- tasks ----------------------------------------------------------------------------------------
    def _move(self, shop_id: str, digest: str, old: str, new: str, **values: Any) -> bool:
        """Claim a step: the row goes from `old` to `new` for exactly one caller."""
        key = (JdMessage.shop_id == shop_id, JdMessage.message_digest == digest)
        with self.service.db.session() as s:
            done = s.execute(
                update(JdMessage).where(*key, JdMessage.delivery == old).values(delivery=new, **values)
            )
        return bool(getattr(done, "rowcount", 0))

    def _remaining(self, received: datetime) -> float:
        """Seconds left before the reply's deadline."""
        elapsed = (utcnow() - received).total_seconds()
        return float(self.service.settings.jd_reply_deadline) - elapsed

    def _answer(self, shop_id: str, digest: str, sealed: str) -> None:
        """Run the matcher once for a queued message, store the reply, and make the first send attempt."""
        from api.dialog.handle import handle_message

        service = self.service
        if not self._move(shop_id, digest, "queued", "answering"):
            return  # answered already (a task delivered twice), or the id was pruned
        job = json.loads(service.secret_box.decrypt(sealed))
        with service.db.session() as s:
            shop = s.get(Shop, shop_id)
            row = s.get(JdMessage, (shop_id, digest))
            received = row.created_at if row is not None else utcnow()
            if shop is not None:
                s.expunge(shop)
        if shop is None:
            return
        if self._remaining(received) <= 0:
            self._give_up(shop_id, digest, "expired", "the answer was not computed in time")
            return
        context = TurnContext(
            sku_id=job.get("sku_id"), customer_pin=job.get("customer_pin"), order_id=job.get("order_id")
        )
        try:
            reply = handle_message(
                service, shop, job["conversation_id"], job["text"], channel="jd", context=context
            )
        except Exception as e:
            log.exception("answering a queued JD message failed")
            self._give_up(shop_id, digest, "failed", f"answering failed: {type(e).__name__}")
            return
        text = str(reply.get("text") or HANDOFF_TEXT)  # a handoff sends the notice it carries
        stored = {"code": 0, "reply": {**reply, "text": mask_pii(str(reply.get("text", "")))}}
        if not self._move(shop_id, digest, "answering", "sending", reply=stored):
            return
        out = service.secret_box.encrypt(json.dumps({"to": job["customer_pin"], "body": text}))
        self._send(shop_id, digest, out)

    def _send(self, shop_id: str, digest: str, sealed: str) -> None:
        """One send attempt: sent, retried later with backoff, or given up (handoff) at the deadline."""
        service = self.service
        with service.db.session() as s:
            row = s.get(JdMessage, (shop_id, digest))
            if row is None or row.delivery != "sending":
                return  # sent or given up already
            attempt, received = row.send_attempts + 1, row.created_at
            shop = s.get(Shop, shop_id)
            shop_settings = dict(shop.settings or {}) if shop is not None else {}
        key = (JdMessage.shop_id == shop_id, JdMessage.message_digest == digest)
        with service.db.session() as s:  # one runner per attempt: a task delivered twice sends once
            claimed = s.execute(
                update(JdMessage)
                .where(*key, JdMessage.delivery == "sending", JdMessage.send_attempts == attempt - 1)
                .values(send_attempts=attempt)
            )
        if not getattr(claimed, "rowcount", 0):
            return
        remaining = self._remaining(received)
        if remaining <= 0:
            self._give_up(shop_id, digest, "expired", "deadline passed before the send")
            return
        message = json.loads(service.secret_box.decrypt(sealed))
        try:
            send_chat_message(
                service,
                shop_id,
                shop_settings,
                upid=upid_for(shop_id, digest),
                to_pin=message["to"],
                body=message["body"],
                timeout=min(SEND_TIMEOUT, remaining),
            )
        except JdNotConfigured as e:
            self._give_up(shop_id, digest, "failed", str(e))
            return
        except JosError as e:
            error = f"{type(e).__name__}: {e}"[:500]
            if not e.retryable:
                self._give_up(shop_id, digest, "failed", error)
                return
            delay = float(service.settings.jd_send_backoff) * 2 ** (attempt - 1)
            if delay >= self._remaining(received):  # the retry would come too late: no late reply
                self._give_up(shop_id, digest, "expired", error)
                return
            with service.db.session() as s:
                s.execute(update(JdMessage).where(*key).values(send_error=error))
            JD_OUTBOUND.labels("retry").inc()
            log.warning("JD reply send attempt %d failed (%s); retrying in %.1fs", attempt, error, delay)
            self.send_task.schedule((shop_id, digest, sealed), delay=delay)
            return
        if self._move(shop_id, digest, "sending", "sent", sent_at=utcnow(), send_error=None):
            JD_OUTBOUND.labels("sent").inc()
            JD_DELIVERY_LATENCY.observe(max(0.0, (utcnow() - received).total_seconds()))

    def sweep(self, grace: float = 60.0) -> int:
        """Give up on replies still in work well past their deadline (a worker that died mid-step, a queue
        lost with its host): each becomes the same recorded handoff as a reply that expired, so a person
        picks the conversation up instead of it waiting for ever. Returns how many."""
        limit = utcnow() - timedelta(seconds=float(self.service.settings.jd_reply_deadline) + grace)
        with self.service.db.session() as s:
            stuck = s.execute(
                select(JdMessage.shop_id, JdMessage.message_digest).where(
                    JdMessage.delivery.in_(("queued", "answering", "sending")), JdMessage.created_at < limit
                )
            ).all()
        for shop_id, digest in stuck:
            self._give_up(shop_id, digest, "expired", "still in work past the deadline (worker lost)")
        if stuck:
            log.warning("gave up on %d JD replies stuck past their deadline", len(stuck))
        return len(stuck)

    def _give_up(self, shop_id: str, digest: str, outcome: str, error: str) -> None:
        """The reply will not reach the customer: record it as a handoff (stored reply, exchange log,
        handoff metric) so that a person picks the conversation up."""
        reason = NOT_DELIVERED if outcome == "expired" else NOT_DELIVERABLE
        self.service.exchange_log.sync()  # the exchange rewritten below may still be in the buffer
        with self.service.db.session() as s:
            row = s.get(JdMessage, (shop_id, digest))
            if row is None or row.delivery in ("sent", "failed"):
                return
            old = dict((row.reply or {}).get("reply") or {})
            handoff: dict[str, Any] = {
                "reason": reason,
                "last_messages": [],
                "candidates_tried": [],
                "mood": None,
            }
            row.reply = {
                "code": 0,
                "reply": {
                    **old,
                    "kind": "handoff",
                    "text": HANDOFF_TEXT,
                    "reason": reason,
                    "handoff": {**handoff, "code": "not_delivered"},
                    "undelivered": old.get("text"),
                },
            }
            row.delivery = "failed"
            row.send_error = error[:500]
            exchange = s.get(Exchange, old["exchange_id"]) if old.get("exchange_id") else None
            if exchange is not None and exchange.shop_id == shop_id:
                exchange.decision, exchange.reason = "handoff", reason
        HANDOFFS.labels(shop_id, "not_delivered").inc()
        JD_OUTBOUND.labels(outcome).inc()
        log.warning("JD reply not delivered (%s): %s", outcome, error)
