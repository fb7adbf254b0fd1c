"""HTTP routes of fine-tuning: POST /fine-tune, POST /fine-tune-lora, GET /train-status/{job_id}.

Each POST takes a JSON body, or a multipart form with the pairs as an uploaded ``file`` (TSV or JSONL)
and the other fields as form fields.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from app.core.config import Settings
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import EmbedqError, InvalidRequestError
from app.core.multipart import MultipartStream, media_type
from app.keys.auth import JOB_LIMIT_ERRORS, PrincipalDep
from app.training import service
from app.training.pairs import PairFormat, format_for_filename
from app.training.schemas import (
    FineTuneAccepted,
    FineTuneRequest,
    LoraFineTuneRequest,
    RegisteredModelOut,
    TrainStatus,
)

router = APIRouter(tags=["fine-tuning"])


class PayloadTooLargeError(EmbedqError):
    status_code = 413
    code = "payload_too_large"


@dataclass(frozen=True)
class TrainingRequest:
    """A parsed fine-tuning request: its settings and the raw pairs text with the format to read it in."""

    payload: FineTuneRequest
    text: str
    fmt: PairFormat


async def _read_request(request: Request, schema: type[FineTuneRequest], settings: Settings) -> TrainingRequest:
    limit = settings.training_max_upload_bytes
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        fields, text, fmt = await _read_form(request, limit)
    else:
        try:
            fields = await request.json()
        except ValueError as exc:
            raise InvalidRequestError(f"the body is not JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise InvalidRequestError("the body must be a JSON object")
        text, fmt = fields.get("text_content"), "auto"
    try:
        payload = schema.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequestError(
            "no training pairs: send text_content (lines `query<TAB>passage`) or upload a TSV/JSONL `file`",
            param="text_content",
        )
    if len(text) > limit:
        raise PayloadTooLargeError(
            f"the pairs are {len(text)} characters; at most {limit} (EMBEDQ_TRAINING_MAX_UPLOAD_BYTES)"
        )
    return TrainingRequest(payload, text, fmt)


async def _read_form(request: Request, limit: int) -> tuple[dict[str, Any], str | None, PairFormat]:
    form = await _complete_form(request)
    try:
        return await _form_fields(form, limit)
    finally:
        await form.close()  # the uploaded file's spooled copy (on disk past 1 MB)


async def _form_fields(form: FormData, limit: int) -> tuple[dict[str, Any], str | None, PairFormat]:
    fields: dict[str, Any] = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    modules = [m for value in form.getlist("target_modules") if isinstance(value, str) for m in _split_list(value)]
    if modules:
        fields["target_modules"] = modules
    if isinstance(fields.get("hard_negatives"), str):
        try:
            fields["hard_negatives"] = json.loads(fields["hard_negatives"])
        except ValueError as exc:
            raise InvalidRequestError(
                f'hard_negatives is not a JSON object: {exc}; send e.g. {{"mine": true, "per_pair": 2}}',
                param="hard_negatives",
            ) from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        return fields, fields.get("text_content"), "auto"
    if "text_content" in fields:
        raise InvalidRequestError("send the pairs either as text_content or as a file, not both", param="file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"{upload.filename} is over {limit} bytes (EMBEDQ_TRAINING_MAX_UPLOAD_BYTES)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"{upload.filename} is not UTF-8 text: {exc}", param="file") from exc
    return fields, text, format_for_filename(upload.filename)


async def _complete_form(request: Request) -> FormData:
    """Return the form, refusing a body cut off before its closing boundary (Starlette would return the parts
    that ended, silently without the one the body was cut in: the pairs file, or a field such as epochs)."""
    _, params = media_type(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        return await request.form(max_files=1)  # Starlette's 400 says the boundary is missing
    envelope = MultipartStream(boundary, lambda _headers: None, error=partial(EmbedqError, param="file"))

    async def receive() -> Message:
        message = await request.receive()
        if message["type"] == "http.request":
            envelope.write(message.get("body", b""))
        return message

    form = await Request(request.scope, receive).form(max_files=1)
    try:
        envelope.close()
    except EmbedqError:
        await form.close()
        raise
    return form


def _split_list(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(item) for item in json.loads(value)]
        except ValueError as exc:
            raise InvalidRequestError(f"target_modules is not a JSON list: {exc}", param="target_modules") from exc
    return [item.strip() for item in value.split(",") if item.strip()]


async def full_request(request: Request, settings: SettingsDep) -> TrainingRequest:
    return await _read_request(request, FineTuneRequest, settings)


async def lora_request(request: Request, settings: SettingsDep) -> TrainingRequest:
    return await _read_request(request, LoraFineTuneRequest, settings)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Return ``node`` with each ``$ref`` to ``defs`` replaced by its schema (these bodies add no components)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {key: _inline_refs(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, defs) for item in node]
    return node


def _body_doc(schema: type[BaseModel]) -> dict[str, Any]:
    """Document both ways to send a fine-tuning request (the body is read by a dependency, not by FastAPI)."""
    json_schema = schema.model_json_schema()
    json_schema = _inline_refs(json_schema, json_schema.pop("$defs", {}))
    form_schema = {
        "type": "object",
        "required": ["file", "model_name"],
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "TSV or JSONL pairs"},
            **{k: v for k, v in json_schema["properties"].items() if k != "text_content"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": json_schema}, "multipart/form-data": {"schema": form_schema}},
        }
    }


def _accepted(job_id: uuid.UUID, response: Response) -> FineTuneAccepted:
    response.headers["Location"] = f"/train-status/{job_id}"
    return FineTuneAccepted(job_id=str(job_id))


@router.post(
    "/fine-tune", response_model=FineTuneAccepted, openapi_extra=_body_doc(FineTuneRequest), responses=JOB_LIMIT_ERRORS
)
def fine_tune(
    body: Annotated[TrainingRequest, Depends(full_request)],
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
) -> FineTuneAccepted:
    """Queue a full fine-tune; poll `/train-status/{job_id}`; the model is served as `model_name` once completed."""
    job = service.create_training_job(session, body.payload, body.text, body.fmt, settings, principal)
    return _accepted(job.id, response)


@router.post(
    "/fine-tune-lora",
    response_model=FineTuneAccepted,
    openapi_extra=_body_doc(LoraFineTuneRequest),
    responses=JOB_LIMIT_ERRORS,
)
def fine_tune_lora(
    body: Annotated[TrainingRequest, Depends(lora_request)],
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    response: Response,
) -> FineTuneAccepted:
    """Queue a LoRA fine-tune; the adapter is served over its base as `model_name` once completed."""
    job = service.create_training_job(session, body.payload, body.text, body.fmt, settings, principal)
    return _accepted(job.id, response)


@router.get("/train-status/{job_id}", response_model=TrainStatus)
def train_status(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> TrainStatus:
    """Return a training job's status, steps, epoch, loss, evaluation and, once registered, its model alias."""
    return service.train_status(session, job_id, principal)


@router.get("/fine-tuned-models", response_model=list[RegisteredModelOut])
def fine_tuned_models(session: SessionDep, principal: PrincipalDep) -> list[RegisteredModelOut]:
    """List the model aliases fine-tuning registered for your tenant (every tenant's for an admin key)."""
    models = [
        RegisteredModelOut.model_validate(m, from_attributes=True)
        for m in service.list_registered_models(session, principal)
    ]
    # A server path is the operator's business (issue 16): tenants see their aliases without it.
    return models if principal.is_admin else [m.model_copy(update={"path": None}) for m in models]
