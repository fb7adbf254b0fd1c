"""What GET /usage answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TenantUsage(BaseModel):
    tenant: str
    jobs: int = Field(description="jobs created in the window")
    jobs_by_kind: dict[str, int] = Field(description="those jobs by kind (embeddings, ingest, reembed, fine_tune...)")
    inputs: int = Field(description="inputs of embedding jobs and documents of ingest/reembed jobs, done or failed")
    chunks: int = Field(description="chunks ingest and reembed jobs wrote")
    tokens: int = Field(description="tokens the workers encoded for these jobs")
    training_steps: int = Field(description="optimizer steps of fine-tuning jobs")


class UsageReport(BaseModel):
    object: str = "usage"
    since: datetime | None = Field(alias="from", description="start of the window (job creation time), inclusive")
    until: datetime | None = Field(alias="to", description="end of the window, exclusive")
    data: list[TenantUsage] = Field(description="one entry per tenant with jobs in the window, by tenant name")

    model_config = {"populate_by_name": True}
