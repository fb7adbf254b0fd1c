"""The one Settings object shared by the API, the workers and the CLI (env prefix ``EMBEDQ_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "embedq"


class Settings(BaseSettings):
    """Every knob of embedq; each limit has a default a single machine can live with."""

    model_config = SettingsConfigDict(env_prefix="EMBEDQ_", extra="ignore", env_file=".env")

    environment: Literal["dev", "test", "prod"] = "dev"

    # Services. Unset URLs mean "start the embedded ones" for `embedq up`; the API and workers need them set.
    database_url: str | None = None
    redis_url: str | None = None
    state_dir: Path = Field(default_factory=_default_state_dir)
    embedded_pg_port: int = Field(default=54329, ge=1, le=65535)
    embedded_redis_port: int = Field(default=63799, ge=1, le=65535)

    # Models.
    models_dir: Path | None = None
    default_model: str = DEFAULT_MODEL
    allow_hub_downloads: bool = False
    device: str = "auto"
    preload_models: list[str] = Field(default_factory=list)
    max_resident_models: int = Field(default=2, ge=1)

    # Job limits.
    max_inputs_per_job: int = Field(default=2048, ge=1)
    max_input_chars: int = Field(default=200_000, ge=1)
    job_batch_size: int = Field(default=256, ge=1, description="inputs per Celery task")
    encode_batch_size: int = Field(default=32, ge=1, description="inputs per forward pass")
    results_page_max: int = Field(default=1000, ge=1)
    jobs_page_max: int = Field(default=200, ge=1)

    # Queue.
    redis_visibility_timeout_s: int = Field(default=3600, ge=60)
    worker_concurrency: int = Field(default=1, ge=1)
    worker_proc_alive_timeout_s: float = Field(default=120.0, gt=0)
    task_max_retries: int = Field(default=8, ge=0)

    # API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    flower_port: int = Field(default=5555, ge=1, le=65535)
    api_keys: list[str] = Field(default_factory=list)
    readiness_timeout_s: float = Field(default=1.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _psycopg_driver(cls, url: str | None) -> str | None:
        """Accept plain ``postgresql://`` URLs and pin the psycopg 3 driver."""
        if url is None:
            return None
        for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        if not url.startswith("postgresql+psycopg://"):
            raise ValueError("EMBEDQ_DATABASE_URL must be a postgresql:// URL")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("EMBEDQ_REDIS_URL must be a redis:// or rediss:// URL")
        return url

    @model_validator(mode="after")
    def _derived_paths(self) -> Settings:
        if self.models_dir is None:
            self.models_dir = self.state_dir / "models"
        return self

    def require_services(self) -> tuple[str, str]:
        """Return (database_url, redis_url), or explain which one is missing and how to set it."""
        missing = [
            n for n, v in (("EMBEDQ_DATABASE_URL", self.database_url), ("EMBEDQ_REDIS_URL", self.redis_url)) if not v
        ]
        if missing:
            raise RuntimeError(
                f"{' and '.join(missing)} not set: export them, or run `embedq up` to start embedded services"
            )
        assert self.database_url and self.redis_url
        return self.database_url, self.redis_url


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide Settings, read once from the environment."""
    return Settings()
