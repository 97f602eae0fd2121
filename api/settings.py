"""Service configuration, read from `KEFU_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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

    # ---- the multi-shop service
    # SQLite embedded by default; postgresql+psycopg://... for several replicas
    database_url: str = "sqlite:///data/kefu.db"
    # state shared by replicas (conversations, replay ids, model notices); None: in-process only
    redis_url: str | None = None
    redis_prefix: str = "kefu:"  # keys and channels; one prefix per deployment sharing a Redis
    data_dir: Path = Path("data")  # built models of every shop and version
    admin_token: SecretStr | None = None  # creates shops; unset: the admin API refuses everything
    secret_key: SecretStr | None = None  # Fernet key(s) for JD credentials at rest, comma-separated
    conversation_ttl: int = Field(default=1800, ge=10)
    min_self_recall: float = Field(default=0.9, ge=0, le=1)
    min_cv_top1: float = Field(default=0.3, ge=0, le=1)
    # ---- JD / JOS
    jd_timestamp_window: int = Field(default=300, ge=1, description="seconds a signed JD message stays valid")
    jos_url: str = "https://api.jd.com/routerjson"
    jos_evaluation_method: str | None = None  # the JOS method that lists customer-service evaluations
    evaluation_pull_interval: int = Field(default=3600, ge=0)  # seconds; 0: only on demand
    # dynamic entries (orders, logistics, refunds): the JOS methods read (see api/jd/orders.py) and the time
    # a whole lookup may take before the conversation goes to a person
    jos_order_method: str = "jingdong.pop.order.get"
    jos_logistics_method: str = "jingdong.ldop.receive.trace.get"
    jos_refund_method: str = "jingdong.pop.afs.soa.refundapply.queryPageList"
    order_lookup_budget: float = Field(default=1.5, gt=0, le=30, description="seconds")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        """Accept `info` as well as `INFO`: people type both in env files."""
        return v.upper() if isinstance(v, str) else v


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
