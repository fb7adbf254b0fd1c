"""http(s):// sources on a real HTTP file server (uvicorn + Starlette's StaticFiles: HEAD, Range, ETag) and a
real Postgres, the worker-side functions run in this process: one URL sharded and read once, re-synced only
when it changed, a bearer token from a credential set, and the SSRF guard (public addresses only, redirects
included, unless the operator allows a range).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from support.http_files import http_files
from support.ingestion import drain
from support.principals import ADMIN
from support.settings import SettingsEnv
from support.source_corpus import documents, jsonl_bytes, parquet_bytes
from support.sources import refused
from support.tiny_models import in_models_dir

from app.collections import service as collections
from app.collections.schemas import ChunkingSpec, CollectionCreate
from app.core.config import Settings, get_settings
from app.models.collection import Document
from app.models.job import Job
from app.models.source import IngestShard
from app.sources.planning import plan_source
from app.sources.schemas import SourceRequest
from app.sources.service import start_source
from app.sources.shard_ingest import run_shard

MODEL = "tiny-http-sources"
TOKEN = "hub-token-" + "x" * 24


@pytest.fixture(scope="module", autouse=True)
def tiny_model(session_services) -> None:
    in_models_dir(MODEL)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("http-files")
    with http_files(root, TOKEN) as base:
        yield root, base


@pytest.fixture
def settings(settings_env: SettingsEnv) -> Settings:
    sets = {"hub": {"bearer_token": TOKEN}, "keys-only": {"access_key_id": "k" * 8, "secret_access_key": "s" * 16}}
    settings_env.set(
        EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS="127.0.0.1/32",  # the test server's; every other loopback stays refused
        EMBEDQ_SOURCE_CREDENTIALS=json.dumps(sets),
        EMBEDQ_SOURCE_SHARD_TARGET_BYTES="4096",
        EMBEDQ_INGEST_BATCH_DOCUMENTS="64",
        EMBEDQ_SOURCE_TIMEOUT_S="5",
    )
    return get_settings()


def make_collection(session: Session, settings: Settings) -> None:
    spec = ChunkingSpec(max_tokens=32, overlap_tokens=4)
    collections.create_collection(session, CollectionCreate(name="docs", model=MODEL, chunking=spec), settings, ADMIN)


def sync(session: Session, scope, settings: Settings, uri: str, **options) -> Job:
    """Post a source, then play the bulk queue: the plan, every shard (each twice: a redelivery), the batches."""
    job = start_source(session, "docs", SourceRequest(uri=uri, **options), settings, ADMIN)
    session.flush()
    plan_source(scope, job.id, settings)
    for shard in session.scalars(select(IngestShard).where(IngestShard.job_id == job.id).order_by(IngestShard.seq)):
        run_shard(scope, job.id, shard.seq, settings)
        again = run_shard(scope, job.id, shard.seq, settings)
        assert (again.written, again.unchanged, again.failed) == (0, 0, 0)
    return drain(session, scope, settings, job.id)


def test_an_http_file_is_sharded_read_once_and_synced_again_only_when_it_changed(
    db_session: Session, scope, settings: Settings, served: tuple[Path, str]
) -> None:
    root, base = served
    make_collection(db_session, settings)
    lines, table = documents("hl", 80, seed=3, sentences=4), documents("hp", 90, seed=4)
    (root / "lines.jsonl").write_bytes(jsonl_bytes(lines))
    (root / "table.parquet").write_bytes(parquet_bytes(table, row_group_size=30))

    job = sync(db_session, scope, settings, f"{base}/lines.jsonl")
    assert (job.status, job.done, job.failed) == ("succeeded", 80, 0), job.error
    assert job.shards_total > 1  # byte ranges of one URL, each read with a Range request
    parquet = sync(db_session, scope, settings, f"{base}/table.parquet?download=true")  # a query is the URL's own
    assert (parquet.status, parquet.done, parquet.shards_total) == ("succeeded", 90, 3), parquet.error
    ids = set(db_session.scalars(select(Document.external_id)))
    assert {d["id"] for d in lines + table} == ids

    unchanged = sync(db_session, scope, settings, f"{base}/lines.jsonl")
    assert (unchanged.status, unchanged.shards_total) == (
        "succeeded",
        0,
    ) and "1 source objects unchanged" in unchanged.message
    (root / "lines.jsonl").write_bytes(jsonl_bytes([{**d, "text": d["text"] + " Changed."} for d in lines[:5]]))
    changed = sync(db_session, scope, settings, f"{base}/lines.jsonl")
    assert (changed.status, changed.total, changed.shards_total) == ("succeeded", 5, 1), changed.message


def test_a_private_file_is_read_with_the_bearer_token_of_a_credential_set(
    db_session: Session, scope, settings: Settings, served: tuple[Path, str]
) -> None:
    root, base = served
    make_collection(db_session, settings)
    (root / "private" / "gated.jsonl").write_bytes(jsonl_bytes(documents("gt", 12)))
    url = f"{base}/private/gated.jsonl"

    anonymous = refused(db_session, settings, uri=url)
    assert anonymous.status_code == 422 and "HTTP 401" in anonymous.message, anonymous.message
    s3_only = refused(db_session, settings, uri=url, credentials="keys-only")
    assert s3_only.status_code == 422 and "no bearer_token" in s3_only.message
    job = sync(db_session, scope, settings, url, credentials="hub")
    assert (job.status, job.done) == ("succeeded", 12), job.error
    assert TOKEN not in json.dumps(job.params) + (job.message or "")


def test_http_sources_reach_public_addresses_only_unless_the_operator_allows_a_range(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, served: tuple[Path, str]
) -> None:
    root, base = served
    make_collection(db_session, settings)
    (root / "open.jsonl").write_bytes(jsonl_bytes(documents("op", 3)))
    port = base.rsplit(":", 1)[1]

    # Allowed: 127.0.0.1/32. A redirect to another loopback address, and a name resolving to one, are refused.
    redirect = refused(db_session, settings, uri=f"{base}/go?to=http://127.0.0.2:{port}/open.jsonl")
    assert redirect.status_code == 403 and "loopback address 127.0.0.2" in redirect.message, redirect.message
    if "::1" in {info[4][0] for info in socket.getaddrinfo("localhost", None)}:
        by_name = refused(db_session, settings, uri=f"http://localhost:{port}/open.jsonl")
        assert by_name.status_code == 403, by_name.message
        assert "localhost resolves to a loopback address ::1" in by_name.message, by_name.message

    settings_env.set(EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS="")
    strict = get_settings()
    direct = refused(db_session, strict, uri=f"{base}/open.jsonl")
    assert direct.status_code == 403 and direct.code == "forbidden"
    assert "the URL's host is a loopback address 127.0.0.1" in direct.message
    assert "EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS" in direct.message
    metadata = refused(db_session, strict, uri="http://169.254.169.254/latest/meta-data/iam.json")
    assert metadata.status_code == 403 and "link-local address 169.254.169.254" in metadata.message

    with_user = refused(db_session, strict, uri=f"http://user:pw@127.0.0.1:{port}/open.jsonl")
    assert with_user.status_code == 422 and "bearer token" in with_user.message
    folder = refused(db_session, strict, uri=f"{base}/")
    assert folder.status_code == 422 and "must name one file" in folder.message


def test_one_url_names_a_dataset_s_numbered_files_or_a_list_of_them(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, served: tuple[Path, str]
) -> None:
    root, base = served
    make_collection(db_session, settings)
    (root / "set").mkdir()
    parts = [documents(f"p{n}", 20, seed=10 + n) for n in range(3)]
    for n, rows in enumerate(parts):
        (root / "set" / f"train-{n:05d}-of-00003.parquet").write_bytes(parquet_bytes(rows, row_group_size=20))
    (root / "set" / "extra.jsonl").write_bytes(jsonl_bytes(documents("ex", 5)))

    job = sync(db_session, scope, settings, f"{base}/set/train-[00000-00002]-of-00003.parquet")
    assert (job.status, job.done, job.params["objects"]) == ("succeeded", 60, 3), job.error
    listed = sync(db_session, scope, settings, f"{base}/set/{{extra.jsonl,train-00000-of-00003.parquet}}")
    assert (listed.status, listed.done, listed.params["objects"]) == ("succeeded", 5, 2), listed.error  # 1 unchanged

    missing = refused(db_session, settings, uri=f"{base}/set/train-[00000-00003]-of-00003.parquet")
    assert missing.status_code == 422 and "train-00003-of-00003.parquet cannot be read (HTTP 404" in missing.message
    settings_env.set(EMBEDQ_SOURCE_MAX_OBJECTS="5")
    too_many = refused(db_session, get_settings(), uri=f"{base}/set/train-[0-2]-{{a,b}}.parquet")
    assert too_many.status_code == 422 and "patterns name 6 files, more than 5" in too_many.message, too_many.message
    backwards = refused(db_session, settings, uri=f"{base}/set/train-[3-1].parquet")
    assert backwards.status_code == 422 and "counts backwards" in backwards.message


def test_plain_text_files_of_a_pattern_are_documents_named_by_their_path_under_its_folder(
    db_session: Session, scope, settings: Settings, served: tuple[Path, str]
) -> None:
    root, base = served
    make_collection(db_session, settings)
    for folder in ("a", "b"):
        (root / "notes" / folder).mkdir(parents=True)
        (root / "notes" / folder / "readme.txt").write_text(f"the readme of {folder}, in a folder of its own.")
    job = sync(db_session, scope, settings, f"{base}/notes/{{a,b}}/readme.txt")
    assert (job.status, job.done) == ("succeeded", 2), job.error
    assert set(db_session.scalars(select(Document.external_id))) == {"a/readme.txt", "b/readme.txt"}
