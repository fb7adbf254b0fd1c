"""Commands that talk to a running embedq API: `embedq ingest`, `embedq search`, `embedq jobs`, `embedq job`.

The API is EMBEDQ_API_URL (default http://EMBEDQ_API_HOST:EMBEDQ_API_PORT) and the key EMBEDQ_API_KEY, or
``--api`` / ``--api-key``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx

from app.core.config import get_settings

_FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".txt": "text", ".md": "text",
    ".parquet": "parquet", ".pq": "parquet",
}  # fmt: skip
# A FILE argument with one of these schemes is a source the server reads itself (POST /collections/{name}/sources).
_SOURCE_SCHEMES = ("s3://", "file://", "https://", "http://")
_TERMINAL = ("succeeded", "failed", "cancelled")
_UPLOAD_PIECE = 1024 * 1024


def _default_api() -> str:
    settings = get_settings()
    return f"http://{settings.api_host}:{settings.api_port}"


api_option = click.option(
    "--api",
    "api_url",
    envvar="EMBEDQ_API_URL",
    default=_default_api,
    show_default="http://EMBEDQ_API_HOST:EMBEDQ_API_PORT",
    help="Base URL of the embedq API [env EMBEDQ_API_URL].",
)
key_option = click.option("--api-key", envvar="EMBEDQ_API_KEY", default=None, help="API key [env EMBEDQ_API_KEY].")


def _client(api_url: str, api_key: str | None, timeout: float = 60.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)


def _checked(response: httpx.Response) -> Any:
    """Return the response's JSON, or stop with the API's own explanation of what went wrong."""
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    request = response.request
    raise click.ClickException(f"{request.method} {request.url.path}: {response.status_code} {detail}")


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise click.ClickException(
            f"cannot reach the embedq API at {client.base_url} ({exc}): start it with `embedq up`, or pass --api"
        ) from exc


class ProgressLine:
    """One status line, redrawn in place on a terminal and printed every few seconds elsewhere."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.tty = sys.stdout.isatty()
        self.every_s = every_s
        self.printed_at = 0.0
        self.width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        if self.tty:
            click.echo("\r" + text.ljust(self.width), nl=False)
            self.width = len(text)
        elif force or time.monotonic() - self.printed_at >= self.every_s:
            click.echo(text)
            self.printed_at = time.monotonic()

    def done(self) -> None:
        if self.tty and self.width:
            click.echo()
        self.width = 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 60}m{whole % 60:02d}s"


# What a job's counts count, by its kind (a fine-tune's are training steps).
_UNITS = {"embeddings": "inputs", "fine_tune": "steps", "fine_tune_lora": "steps", "batch": "requests"}


def describe_progress(job: dict[str, Any]) -> str:
    """Return a job's one-line progress: documents, chunks/s and ETA for ingestion, percent otherwise."""
    counts = job["counts"]
    ingest = job.get("ingest")
    processed = counts["done"] + counts["failed"]
    line = f"{job['status']:<9} {processed}/{counts['total']} {_UNITS.get(job.get('kind', ''), 'documents')}"
    if counts["failed"]:
        line += f" ({counts['failed']} failed)"
    if ingest:
        line += f" | {ingest['chunks']['done']} chunks | {ingest['chunks_per_s']:.1f} chunks/s"
        if ingest["skipped"]:
            line += f" | {ingest['skipped']} unchanged"
        shards = ingest.get("shards")
        if shards and shards["done"] + shards["failed"] < shards["total"]:
            line += f" | {shards['done'] + shards['failed']}/{shards['total']} shards read"
        if job["status"] == "running":
            waiting = "reading the source" if shards is not None else "uploading"
            line += f" | ETA {_duration(ingest['eta_s'])}" if ingest["input_complete"] else f" | {waiting}"
    else:
        line += f" | {job['progress']:.0f}%"
    if job.get("message") and job["status"] == "running" and ingest and "index" in job["message"]:
        line += " | building the search index"
    return line


def _file_pieces(path: Path, progress: ProgressLine, total: int) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as handle:
        while piece := handle.read(_UPLOAD_PIECE):
            sent += len(piece)
            progress.show(f"uploading {path.name}: {sent / 1e6:.1f} of {total / 1e6:.1f} MB")
            yield piece


def _ensure_collection(
    client: httpx.Client, name: str, model: str | None, max_tokens: int | None, overlap_tokens: int | None
) -> dict[str, Any]:
    found = _call(client, "GET", f"/collections/{name}")
    if found.status_code == 404:
        body: dict[str, Any] = {"name": name}
        if model:
            body["model"] = model
        if max_tokens is not None:
            body["chunking"] = {"max_tokens": max_tokens, "overlap_tokens": overlap_tokens or 0}
        created = _checked(_call(client, "POST", "/collections", json=body))
        click.echo(f"created collection {name} (model {created['model']}, {created['dimension']} dimensions)")
        return created
    collection = _checked(found)
    if model and model != collection["model"]:
        raise click.ClickException(
            f"collection {name} is embedded with {collection['model']}, not {model}: drop --model, use another "
            f"collection, or `POST /collections/{name}/reembed` with the new model first"
        )
    return collection


def wait_for_job(client: httpx.Client, job_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll a job until it ends, redrawing its progress line; return its last view."""
    progress = ProgressLine()
    while True:
        job = _checked(_call(client, "GET", f"/jobs/{job_id}"))
        done = job["status"] in _TERMINAL
        progress.show(describe_progress(job), force=done)
        if done:
            progress.done()
            return job
        time.sleep(poll_s)


def _print_errors(job: dict[str, Any]) -> None:
    ingest = job.get("ingest") or {}
    errors = ingest.get("errors") or []
    for error in errors:
        parts = [
            f"id {error['document_id']}" if error.get("document_id") else "",
            f"line {error['line']}" if error.get("line") else "",
        ]
        where = " ".join(p for p in parts if p)
        click.echo(f"  failed: {where or 'upload'}: {error['error']}", err=True)
    if job["counts"]["failed"] > len(errors) and job["links"].get("errors"):
        click.echo(f"  all {job['counts']['failed']} errors: GET {job['links']['errors']}", err=True)


@click.command()
@click.argument("file")
@click.option("--collection", "-c", required=True, help="Collection to ingest into (created if missing).")
@click.option("--model", "-m", default=None, help="Model of a new collection [default: the server's].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "json", "csv", "text", "parquet"]),
    help="Default: from the file extension.",
)
@click.option("--id-field", default="id", show_default=True, help="Field or column holding each document's id.")
@click.option("--text-field", default="text", show_default=True, help="Field or column holding each document's text.")
@click.option("--credentials", default=None, help="s3:// or https:// source: a credential set the operator named.")
@click.option("--delete-missing", is_flag=True, help="s3:// source: remove documents whose object is gone.")
@click.option(
    "--text-mode",
    type=click.Choice(["file", "line"]),
    default="file",
    show_default=True,
    help="Plain text: the file is one document (its name the id), or each line is one (<name>:<line>).",
)
@click.option("--max-tokens", type=click.IntRange(min=8), default=None, help="Chunk size of a new collection.")
@click.option("--overlap-tokens", type=click.IntRange(min=0), default=None, help="Chunk overlap of a new collection.")
@click.option("--wait/--no-wait", default=False, help="Follow the job until it ends, with a progress line.")
@api_option
@key_option
def ingest(
    file: str,
    collection: str,
    model: str | None,
    fmt: str | None,
    id_field: str,
    text_field: str,
    credentials: str | None,
    delete_missing: bool,
    text_mode: str,
    max_tokens: int | None,
    overlap_tokens: int | None,
    wait: bool,
    api_url: str,
    api_key: str | None,
) -> None:
    """Ingest FILE into a collection and print its ingest job.

    FILE is a local file (JSONL, JSON, CSV, Parquet or text) streamed to the API, or a source the server's
    workers read themselves: s3://bucket/prefix/, s3://bucket/corpus/*.parquet, https://host/path/file.parquet,
    or file:///path under a root the operator allows.
    """
    if not file.startswith(_SOURCE_SCHEMES) and not Path(file).is_file():
        raise click.BadParameter(f"{file} is not a file (a source the server reads starts s3://, https:// or file://)")
    with _client(api_url, api_key, timeout=None) as client:  # type: ignore[arg-type]
        _ensure_collection(client, collection, model, max_tokens, overlap_tokens)
        if file.startswith(_SOURCE_SCHEMES):
            body: dict[str, Any] = {"uri": file, "id_field": id_field, "text_field": text_field}
            body.update({"format": fmt, "credentials": credentials, "delete_missing": delete_missing})
            job = _checked(_call(client, "POST", f"/collections/{collection}/sources", json=body))
        else:
            job = _upload(client, Path(file), collection, fmt, text_mode, id_field, text_field)
        click.echo(f"job {job['id']}: {describe_progress(job)}")
        if not wait:
            return
        job = wait_for_job(client, job["id"])
    click.echo(job.get("message") or job["status"])
    _print_errors(job)
    if job["status"] != "succeeded":
        reason = job.get("error") or f"see `embedq job {job['id']}`"
        raise click.ClickException(f"job {job['id']} {job['status']}: {reason}")


def _upload(
    client: httpx.Client, file: Path, collection: str, fmt: str | None, text_mode: str, id_field: str, text_field: str
) -> dict[str, Any]:
    """Stream a local file to POST /collections/{name}/documents; return its job."""
    fmt = fmt or _FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise click.ClickException(f"cannot tell the format of {file.name}: pass --format jsonl|json|csv|text|parquet")
    params: dict[str, str] = {"format": fmt, "text_mode": text_mode, "id_field": id_field, "text_field": text_field}
    if fmt == "text":  # the document's id, or by line the ids' prefix (<name>:<line>)
        params["document_id"] = file.name
    progress = ProgressLine()
    pieces = _file_pieces(file, progress, file.stat().st_size)
    response = _call(client, "POST", f"/collections/{collection}/documents", params=params, content=pieces)
    progress.done()
    return _checked(response)


@click.command()
@click.argument("collection")
@click.argument("query")
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata that must be equal (repeat). VALUE is read as JSON when it is (3, true, null, [1,2]), "
    "else as text; quote a number to match it as text: n='\"3\"'.",
)
@api_option
@key_option
def search(
    collection: str, query: str, top_k: int, filters: tuple[str, ...], api_url: str, api_key: str | None
) -> None:
    """Print the chunks of COLLECTION nearest to QUERY, best first."""
    metadata: dict[str, Any] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--filter")
        metadata[key] = _filter_value(value)
    body: dict[str, Any] = {"query": query, "top_k": top_k}
    if metadata:
        body["filter"] = metadata
    with _client(api_url, api_key) as client:
        result = _checked(_call(client, "POST", f"/collections/{collection}/search", json=body))
    if not result["data"]:
        click.echo("no matches")
    for hit in result["data"]:
        snippet = " ".join(hit["text"].split())
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        click.echo(f"{hit['score']:.4f}  {hit['document_id']}#{hit['chunk_index']}  {snippet}")


@click.command()
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--kind", default=None, help="embeddings, ingest, reembed, fine_tune, ...")
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@api_option
@key_option
def jobs(status: str | None, kind: str | None, limit: int, api_url: str, api_key: str | None) -> None:
    """List jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if kind:
        params["kind"] = kind
    with _client(api_url, api_key) as client:
        page = _checked(_call(client, "GET", "/jobs", params=params))
    if not page["data"]:
        click.echo("no jobs")
    for job in page["data"]:
        click.echo(f"{job['id']}  {job['kind']:<12} {job['created_at'][:19]}  {describe_progress(job)}")


@click.command()
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="Follow the job until it ends.")
@api_option
@key_option
def job(job_id: str, wait: bool, api_url: str, api_key: str | None) -> None:
    """Show one job: status, counts, rate, ETA and its first errors."""
    with _client(api_url, api_key) as client:
        view = wait_for_job(client, job_id) if wait else _checked(_call(client, "GET", f"/jobs/{job_id}"))
    click.echo(f"job {view['id']} ({view['kind']}, model {view['model']})")
    click.echo(f"  {describe_progress(view)}")
    for field in ("message", "error", "created_at", "started_at", "finished_at"):
        if view.get(field):
            click.echo(f"  {field}: {view[field]}")
    _print_errors(view)


COMMANDS = (ingest, search, jobs, job)


def _filter_value(value: str) -> Any:
    """Return a --filter VALUE as the metadata holds it: JSON where it parses (3, true), else the text itself.

    Metadata equality is typed: {"n": 3} never matches "3", so `n=3` sent as text matched nothing."""
    try:
        return json.loads(value)
    except ValueError:
        return value
