"""`embedq batch submit requests.jsonl --wait`: run an OpenAI batch file through a running embedq API.

The file is uploaded (POST /v1/files), a batch created (POST /v1/batches) and, with --wait, followed with a
progress bar until it ends; its output and error files are then written next to the input, as
``<input>.output.jsonl`` and ``<input>.errors.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import httpx

from app.cli.client_commands import ProgressLine, _call, _client, api_option, key_option

_ENDED = ("completed", "failed", "expired", "cancelled")
_BAR = 30


def _answer(response: httpx.Response) -> Any:
    """Return the response's JSON, or stop with the API's OpenAI-shaped explanation."""
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        detail = body["error"]["message"] if "error" in body else body.get("detail", response.text)
    except (ValueError, KeyError, TypeError):
        detail = response.text
    request = response.request
    raise click.ClickException(f"{request.method} {request.url.path}: {response.status_code} {detail}")


def describe_batch(batch: dict[str, Any]) -> str:
    """Return a batch's one-line progress: a bar of the requests answered, and its status."""
    counts = batch["request_counts"]
    answered = counts["completed"] + counts["failed"]
    total = counts["total"]
    filled = round(_BAR * answered / total) if total else 0
    line = f"[{'#' * filled}{'-' * (_BAR - filled)}] {answered}/{total} requests"
    if counts["failed"]:
        line += f" ({counts['failed']} failed)"
    return f"{line} | {batch['status']}"


def _download(client: httpx.Client, file_id: str | None, target: Path) -> bool:
    if file_id is None:
        return False
    with client.stream("GET", f"/v1/files/{file_id}/content") as response:
        if not response.is_success:
            response.read()
            _answer(response)
        with target.open("wb") as out:
            for piece in response.iter_bytes():
                out.write(piece)
    return True


def outputs_of(path: Path) -> tuple[Path, Path]:
    """Return where the output and error files of the batch from ``path`` are written."""
    stem = path.name.removesuffix(path.suffix) if path.suffix else path.name
    return path.with_name(f"{stem}.output.jsonl"), path.with_name(f"{stem}.errors.jsonl")


@click.group()
def batch() -> None:
    """OpenAI batch files: upload, run and download (`embedq batch submit FILE --wait`)."""


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=False, help="Follow the batch with a progress bar, then download.")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True)
@api_option
@key_option
def submit(file: Path, wait: bool, poll_s: float, api_url: str, api_key: str | None) -> None:
    """Run FILE (JSONL of /v1/embeddings requests) as a batch; with --wait, write its output next to FILE."""
    with _client(api_url, api_key, timeout=600) as client, file.open("rb") as handle:
        uploaded = _answer(
            _call(client, "POST", "/v1/files", files={"file": (file.name, handle)}, data={"purpose": "batch"})
        )
        body = {"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
        view = _answer(_call(client, "POST", "/v1/batches", json=body))
        click.echo(f"batch {view['id']} (job {view['job_id']}): {uploaded['bytes']} bytes uploaded as {uploaded['id']}")
        if not wait:
            return
        progress = ProgressLine()
        while view["status"] not in _ENDED:
            progress.show(describe_batch(view))
            time.sleep(poll_s)
            view = _answer(_call(client, "GET", f"/v1/batches/{view['id']}"))
        progress.show(describe_batch(view), force=True)
        progress.done()
        output, errors = outputs_of(file)
        if _download(client, view.get("output_file_id"), output):
            click.echo(f"output: {output}")
        if _download(client, view.get("error_file_id"), errors):
            click.echo(f"errors: {errors}")
    for error in (view.get("errors") or {}).get("data") or []:
        where = f"line {error['line']}: " if error.get("line") else ""
        click.echo(f"  {where}{error['code']}: {error['message']}", err=True)
    if view["status"] != "completed":
        raise click.ClickException(f"batch {view['id']} ended {view['status']}")
