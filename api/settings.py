"""Service configuration, read from `KEFU_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        """Accept `info` as well as `INFO`: people type both in env files."""
        return v.upper() if isinstance(v, str) else v


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
