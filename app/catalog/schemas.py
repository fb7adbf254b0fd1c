"""Shapes of ``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's list and model objects, plus embedq's fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class WorkerLoad(BaseModel):
    """One worker process that holds the model, as it reported the load."""

    worker: str | None = Field(description="host:pid of the worker process; null for keys that are not admin")
    precision: str
    precision_reason: str = Field(default="", description="why this precision: set, or what auto measured and chose")
    backend: str
    device: str
    load_seconds: float
    loaded_at: str


class ModelObject(BaseModel):
    """OpenAI's model object (id, object, created, owned_by) and where and how embedq loads the model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="when the model folder was written (Unix seconds); 0 if not on disk")
    owned_by: str = Field(description="the organisation part of the name, or embedq")
    alias_of: str | None = Field(default=None, description="for an EMBEDQ_MODEL_MAPPING alias: the model it names")
    source: str = Field(description="models_dir, package, hf_cache, modelscope_cache, hub, modelscope or artifact")
    path: str | None = Field(description="the model folder; null until a hub download, and for keys that are not admin")
    family: str = Field(description="e5, bge, bge-m3, gte, sentence-transformers or generic")
    dimension: int | None
    max_length: int | None = Field(description="tokens read per input; longer inputs are truncated")
    precision: str = Field(description="as configured (auto, fp32, ...); a loaded model reports what auto became")
    precision_reason: str | None = Field(
        default=None,
        description="why a loaded model runs at that precision: set explicitly, or auto's measured choice with its "
        "speed and cosine to fp32 per candidate; null while not loaded",
    )
    backend: str = Field(description="torch or onnx")
    device: str | None = Field(description="where a worker runs it; null while no worker has it loaded")
    load_seconds: float | None = Field(description="how long the last load took; null while not loaded")
    hybrid: bool = Field(description="has BGE-M3's sparse and ColBERT heads (/vectorize-hybrid, /rerank)")
    tasks: list[Literal["embed", "rerank"]] = Field(
        description="what the model serves: embed (vectors), rerank (/rerank, /v1/rerank), both for BGE-M3"
    )
    loaded: bool
    loads: list[WorkerLoad] = Field(default_factory=list)


class ModelList(BaseModel):
    """OpenAI's list object of models."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    """OpenAI's answer to deleting a fine-tuned model."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool = True
