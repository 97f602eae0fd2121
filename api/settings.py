"""Service configuration, read from `KEFU_*` environment variables (or a `.env` file)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything the HTTP service needs; engine tuning lives in the model, not here."""

    model_config = SettingsConfigDict(env_prefix="KEFU_", env_file=".env", extra="ignore")

    model_path: Path = Path("models/demo")
    # Built into model_path at startup when model_path holds no model yet; None disables building.
    kb_path: Path | None = Path("models/demo-shop-kb.csv")
    # Only used when building from kb_path: a loaded model keeps the channels it was built with.
    dense: bool = True
    max_top_k: int = Field(default=20, ge=1)
    max_text_chars: int = Field(default=2000, ge=1)
    log_level: LogLevel = "INFO"
    # ---- request sizes: refused with 413 before the body is read whole (api/web/limits.py)
    # JSON and form bodies; an entry with a 20,000-character answer fits
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # PUT /v1/shops/{shop}/settings: up to 20,000 segmenter words plus synonyms
    max_settings_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # ---- KB uploads: the file, then what reading it may take (engine.kb.ReadLimits)
    kb_max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    kb_max_rows: int = Field(default=50_000, ge=1)
    kb_max_cells: int = Field(default=1_000_000, ge=1)
    kb_max_inflated_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # ---- the multi-shop service
    # SQLite embedded by default; postgresql+psycopg://... for several replicas
    database_url: str = "sqlite:///data/kefu.db"
    # state shared by replicas (conversations, replay ids, model notices); None: in-process only
    redis_url: str | None = None
    redis_prefix: str = "kefu:"  # keys and channels; one prefix per deployment sharing a Redis
    data_dir: Path = Path("data")  # built models of every shop and version
    # ---- shops' models in memory (api/kb/registry.py): loaded on a shop's first message, least recently
    # used evicted while the loaded models exceed this many MB (Matcher.memory_bytes); 0: no budget
    model_memory_mb: float = Field(default=2048.0, ge=0)
    # at startup, load the active models of the shops this replica holds, up to the budget, in the
    # background; False: every model waits for its shop's first message (thousands of shops per replica)
    warm_up: bool = True
    # once started, move what start-up made (imports, the app, the service) out of the garbage collector's
    # reach (gc.freeze): a full collection walked those 340k objects in about 220 ms, a pause of every
    # request in the worker, each time enough new objects had survived to trigger one
    gc_freeze: bool = True
    # the event loop's lag (api/web/looplag.py): checked every this many ms (0: not watched); a wake-up
    # this many ms late or more is logged as a warning (0: never)
    loop_lag_interval_ms: float = Field(default=100.0, ge=0)
    loop_lag_warn_ms: float = Field(default=100.0, ge=0)
    # what each response's Server-Timing header says (api/stages.py): "stages" the app's time and a
    # turn's stages, "app" only the app's time, "off" no header (callers that should not see timings)
    server_timing: Literal["stages", "app", "off"] = "stages"
    # answer without the sentence encoder where a model's cascade says its other channels decide
    # (engine.cascade); off by default: on real queries its first stage answers some messages the full
    # model would only clarify, at a lower precision than the promise (README, "The dense-skip cascade")
    cascade: bool = False
    # which shops this replica serves: "i/n" holds shop s when crc32(s) % n == i (api.kb.registry.shard_of);
    # shard_shops lists shop ids held besides (or, without a shard, instead of) it; a message for another
    # shop is refused with 421 naming the shard that holds it. Unset: every shop.
    shard: str | None = None
    shard_shops: str = ""  # comma-separated shop ids
    admin_token: SecretStr | None = None  # creates shops; unset: the admin API refuses everything
    secret_key: SecretStr | None = None  # Fernet key(s) for JD credentials at rest, comma-separated
    conversation_ttl: int = Field(default=1800, ge=10)
    # seconds a conversation turn (messages, assist) reuses this process's lookup of an API key's shop and
    # of a shop's catalog revision, instead of reading them from the database on every message. A write
    # in this process drops them at once; written by another process (worker, replica), they are seen
    # within this time: a revoked key may still open the conversation routes of another process for it.
    # 0: read both on every message.
    lookup_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # threads of the sentence encoder for one message (the engine's KEFU_EMBED_QUERY_THREADS, whose own
    # default is every core: the lowest latency for one caller). A server's workers encode many messages
    # at once, and a team per message waits on itself there: 1 gave 227 req/s on /v1/match with the
    # default channels where a team of two gave 133 (2 CPUs, 2 workers). 0: every core.
    embed_query_threads: int = Field(default=1, ge=0, le=64)
    min_self_recall: float = Field(default=0.9, ge=0, le=1)
    min_cv_top1: float = Field(default=0.3, ge=0, le=1)
    # ---- JD / JOS
    jd_timestamp_window: int = Field(default=300, ge=1, description="seconds a signed JD message stays valid")
    # seconds a JD message id is remembered (replays refused); must outlast the timestamp window
    jd_message_retention: int = Field(default=3 * 86400, ge=1)
    jos_url: str = "https://api.jd.com/routerjson"
    # JD's customer-service methods (api/jd/methods.py); None: JD's name for it
    jos_evaluation_method: str | None = None  # jingdong.im.pop.evaluationlist.get
    jos_evaluation_stat_method: str | None = None  # jingdong.im.pop.evaluationstat.get
    jos_chatlog_method: str | None = None
    jos_sessionlist_method: str | None = None
    jos_unreply_method: str | None = None
    jos_avgwait_method: str | None = None
    jos_askrate_method: str | None = None
    jos_online_method: str | None = None
    jos_groupinfo_method: str | None = None
    jos_chat_push_method: str | None = None
    # ---- async JD replies (a shop's jd_reply_mode "async": api/jd/outbound.py, api/jd/queue.py)
    # the task queue: None is a SQLite file under data_dir (one host); redis://... is shared by replicas
    queue_url: str | None = None
    queue_workers: int = Field(default=2, ge=0, le=64)  # in-process worker threads; 0: a separate worker
    # a reply not sent this many seconds after JD pushed the message is not sent late: it becomes a handoff
    jd_reply_deadline: float = Field(default=30.0, gt=0, le=3600)
    jd_send_backoff: float = Field(default=0.5, gt=0, le=60)  # first retry's delay; doubled each retry
    # ---- KB builds (api/kb/builds.py): a publish enqueues a build on the huey queue `{redis_prefix}builds`
    # (same storage as the replies: KEFU_QUEUE_URL); it runs in a child process, never in a serving thread.
    # True: this service consumes the build queue itself (one waiting thread per build worker, each handing
    # its build to a child process); False: `kefu worker` processes do (a deployment that runs them)
    build_in_process: bool = True
    build_workers: int = Field(default=1, ge=1, le=16)  # builds at once per consuming process
    build_time_limit: float = Field(default=1800.0, gt=0, le=86400)  # seconds; the child is then killed
    build_retries: int = Field(default=2, ge=0, le=10)  # more attempts after the child died, not a bad KB
    build_retry_delay: float = Field(default=10.0, ge=0, le=3600)  # seconds before such a retry
    build_nice: int = Field(default=10, ge=0, le=19)  # the child lowers its CPU priority by this much
    # Linux: the child also runs under SCHED_IDLE, on CPU time no serving thread wants ...
    build_cpu_idle: bool = True
    # ... but a build is not left starving: a build that got less than this share of one CPU over 2 s is
    # raised a step (SCHED_BATCH at build_nice, then nice 5, then 0; api/kb/build_priority.py; needs
    # CAP_SYS_NICE). 0: never raised, the build waits for idle CPU however long the peak lasts
    build_min_cpu_share: float = Field(default=0.25, ge=0, le=1)
    # CPUs of their own (api/cpu_affinity.py; Linux CPU lists "1", "2-3", "0,2-3"; empty: all): serving's
    # worker processes, and builds (their children, a `kefu worker --queue builds` process). On a small
    # machine priorities do not keep builds off serving's p99; separate CPUs do (README)
    serve_cpus: str = ""
    build_cpus: str = ""
    # ---- the exchange log (api/store/exchange_log.py): replies hand their row to a buffer, one thread
    # inserts it in batches every flush_ms milliseconds or once `batch` rows wait; 0: each reply inserts its
    # row before it returns. At most `buffer` rows wait: past that a reply writes its own row (back-pressure)
    exchange_log_flush_ms: int = Field(default=200, ge=0, le=60_000)
    exchange_log_batch: int = Field(default=500, ge=1, le=5_000)
    exchange_log_buffer: int = Field(default=10_000, ge=1, le=1_000_000)
    # the chat push's fields (api.jd.methods.CHAT_PUSH_*): the waiter account the bot speaks as (a shop's
    # jd_bot_pin setting overrides it), the apps and client types, the access signature
    jd_bot_pin: str | None = None
    jd_chat_from_app: str = "im.waiter"
    jd_chat_to_app: str = "im.customer"
    jd_chat_client_type: str = "pc"
    jd_chat_ver: str = "4.3"
    jd_chat_aspid: str = "jos"
    jd_chat_accessid: str = ""
    jd_chat_source: str = "kefu"
    jd_chat_version: str = "1.0"
    evaluation_pull_interval: int = Field(default=3600, ge=0)  # seconds; 0: only on demand
    # the first pull of a shop reaches back this far; later pulls continue where the last one ended
    evaluation_backfill_days: int = Field(default=7, ge=1, le=366)
    evaluation_window_hours: int = Field(default=24, ge=1, le=24 * 31)  # one call's time window
    jos_rate_per_second: float = Field(default=10.0, gt=0)  # calls per second a pull makes at most
    # dynamic entries (orders, logistics, refunds): the JOS methods read (see api/jd/orders.py) and the time
    # a whole lookup may take before the conversation goes to a person
    jos_order_method: str = "jingdong.pop.order.get"
    jos_logistics_method: str = "jingdong.ldop.receive.trace.get"
    jos_refund_method: str = "jingdong.pop.afs.soa.refundapply.queryPageList"
    order_lookup_budget: float = Field(default=1.5, gt=0, le=30, description="seconds")
    # the JOS method that lists the shop's SKUs (商品), paged with page/pageSize; the records are the first
    # list of objects in its answer (see api.catalog.jos for the field names understood)
    jos_ware_method: str = "jingdong.sku.read.searchSkuList"
    # ---- the demo shop (`make run`): created with this id and API key if missing, KB and catalog loaded
    demo_shop: str | None = None
    demo_api_key: SecretStr | None = None
    demo_kb: Path = Path("models/demo-shop-kb.csv")
    demo_catalog: Path = Path("models/demo-catalog.csv")
    # ---- the merchant console (/console, api/console/)
    # a console session ends this many minutes after its last request (and 24 hours after login at most)
    console_session_minutes: int = Field(default=60, ge=1, le=24 * 60)
    # the session cookie is Secure: browsers keep it over HTTPS and on http://127.0.0.1 / localhost (both
    # are "potentially trustworthy" origins). False only for plain http on another host, never on the net.
    console_secure_cookie: bool = True
    # failed console logins, per shop and per client IP (a limit as for rate_limit_shop; "0" disables)
    console_login_limit: str | None = "10/minute;30/hour"
    # ---- rate limits (api/web/ratelimit.py): "50/second", "50/second;1000/minute", a bare number is per
    # minute; "0", "off" or empty disables. Shared by replicas through Redis when redis_url is set.
    rate_limit_shop: str | None = "50/second"  # per shop id in the path: /v1/shops/{shop}/, /jd/{shop}/
    rate_limit_client: str | None = "100/second"  # per client IP, every route but /healthz and /metrics
    # proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed; empty: the header is ignored
    trusted_proxies: str = ""

    @field_validator("rate_limit_shop", "rate_limit_client", "console_login_limit")
    @classmethod
    def _rate_limit(cls, v: str | None) -> str | None:
        """None when disabled; a malformed limit fails at startup, not on the first request."""
        if v is None or v.strip().lower() in {"", "0", "off", "none"}:
            return None
        text = v.strip()
        if text.isdigit():
            text = f"{text}/minute"
        try:
            items = parse_many(text)
        except ValueError as e:
            raise ValueError(f"not a rate limit: {v!r} (e.g. '50/second', '50/second;1000/minute')") from e
        if any(item.amount < 1 for item in items):
            raise ValueError(f"{v!r}: a limit must allow at least 1 request (disable it with 0)")
        return text

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        """ "i/n" with 0 <= i < n, checked at startup."""
        if v is None or not v.strip():
            return None
        try:
            i, n = (int(x) for x in v.strip().split("/"))
        except ValueError:
            raise ValueError(f"KEFU_SHARD must be 'i/n' (e.g. '0/4'), not {v!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"KEFU_SHARD {v!r}: need 0 <= i < n (shards are numbered from 0)")
        return f"{i}/{n}"

    @field_validator("serve_cpus", "build_cpus")
    @classmethod
    def _cpus(cls, v: str, info: ValidationInfo) -> str:
        from api.cpu_affinity import parse_cpus

        try:
            return ",".join(str(c) for c in parse_cpus(v))
        except ValueError as e:
            raise ValueError(f"KEFU_{(info.field_name or '').upper()} {v!r}: {e}") from None

    @property
    def serve_cpu_set(self) -> tuple[int, ...]:
        from api.cpu_affinity import parse_cpus

        return parse_cpus(self.serve_cpus)

    @property
    def build_cpu_set(self) -> tuple[int, ...]:
        from api.cpu_affinity import parse_cpus

        return parse_cpus(self.build_cpus)

    @property
    def shard_pair(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        i, n = self.shard.split("/")
        return int(i), int(n)

    @property
    def shard_shop_ids(self) -> list[str]:
        return [s.strip() for s in self.shard_shops.split(",") if s.strip()]

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        cls.networks(v)  # refuse a malformed address at startup
        return v

    @staticmethod
    def networks(text: str) -> tuple[IPNetwork, ...]:
        """Comma-separated IPs or CIDRs as networks (an IP is a /32 or /128)."""
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip())

    @property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return self.networks(self.trusted_proxies)

    @model_validator(mode="after")
    def _retention_outlasts_window(self) -> Settings:
        """A pruned message id could be replayed while its signature is still accepted: a timestamp up to
        one window ahead is accepted, and stays acceptable for two windows, so the id must outlive both."""
        if self.jd_message_retention <= 2 * self.jd_timestamp_window:
            raise ValueError(
                f"jd_message_retention ({self.jd_message_retention}s) must exceed twice "
                f"jd_timestamp_window ({self.jd_timestamp_window}s), or replays of pruned ids are accepted"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        """Accept `info` as well as `INFO`: people type both in env files."""
        return v.upper() if isinstance(v, str) else v


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
