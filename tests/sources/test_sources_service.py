"""Sources on a real S3 server (SeaweedFS) and a real Postgres, worker-side functions run in this process.

Checks that make a bad source a 4xx before any job, planning and shards (a redelivered shard changes
nothing), re-sync of changed objects only, delete_missing, and Parquet uploads.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import aiohttp
import botocore.exceptions
import pytest
from s3fs.errors import translate_boto_error
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session
from support.ingestion import drain
from support.principals import ADMIN
from support.s3 import REGION, S3Server
from support.settings import SettingsEnv
from support.source_corpus import csv_bytes, documents, jsonl_bytes, parquet_bytes
from support.sources import refused
from support.tiny_models import in_models_dir

from app.cli.embedded import find_free_port
from app.collections import service as collections
from app.collections.repository import DocumentInput
from app.collections.schemas import ChunkingSpec, CollectionCreate
from app.collections.upload_items import UploadOptions
from app.collections.upload_writer import UploadWriter
from app.collections.uploads import UploadReader
from app.core.config import Settings, get_settings
from app.core.store_outages import unavailable
from app.jobs.schemas import JobOut
from app.models.collection import Chunk, Document
from app.models.job import Job
from app.models.source import IngestShard
from app.sources.locations import filesystem, parse_location
from app.sources.planning import plan_source
from app.sources.recovery import requeue_ingest_job
from app.sources.schemas import SourceRequest
from app.sources.service import start_source
from app.sources.shard_ingest import _batches, run_shard
from app.sources.store_faults import StoreOutageError

MODEL = "tiny-sources"


@pytest.fixture(scope="module", autouse=True)
def tiny_model(session_services) -> None:
    in_models_dir(MODEL)


@pytest.fixture
def prefix(s3_server: S3Server) -> Iterator[str]:
    """Yield a fresh prefix of the test bucket, emptied after the test."""
    name = f"{s3_server.bucket}/src-{uuid.uuid4().hex[:8]}"
    yield name
    client = s3_server.client()
    if client.exists(name):
        client.rm(name, recursive=True)


@pytest.fixture
def settings(settings_env: SettingsEnv, s3_server: S3Server) -> Settings:
    credentials = {
        "corpus": {
            "endpoint_url": s3_server.endpoint_url, "region": REGION,
            "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
        }
    }  # fmt: skip
    settings_env.set(
        EMBEDQ_SOURCE_CREDENTIALS=json.dumps(credentials),
        EMBEDQ_SOURCE_SHARD_TARGET_BYTES="4096",
        EMBEDQ_INGEST_BATCH_DOCUMENTS="64",
        EMBEDQ_SOURCE_TIMEOUT_S="5",
    )
    return get_settings()


def make_collection(session: Session, settings: Settings, name: str = "docs") -> None:
    spec = ChunkingSpec(max_tokens=32, overlap_tokens=4)
    collections.create_collection(session, CollectionCreate(name=name, model=MODEL, chunking=spec), settings, ADMIN)


def put(s3_server: S3Server, path: str, body: bytes) -> None:
    with s3_server.client().open(path, "wb") as handle:
        handle.write(body)


def sync(session: Session, scope, settings: Settings, uri: str, **options) -> Job:
    """Post a source, then play the bulk queue: the plan, every shard (each twice: a redelivery), the batches."""
    job = start_source(session, "docs", SourceRequest(uri=uri, credentials="corpus", **options), settings, ADMIN)
    session.flush()
    plan_source(scope, job.id, settings)
    assert plan_source(scope, job.id, settings) == 0  # a second delivery of the plan changes nothing
    for shard in session.scalars(select(IngestShard).where(IngestShard.job_id == job.id).order_by(IngestShard.seq)):
        run_shard(scope, job.id, shard.seq, settings)
        again = run_shard(scope, job.id, shard.seq, settings)
        assert (again.written, again.unchanged, again.failed) == (0, 0, 0)
    return drain(session, scope, settings, job.id)


def upload_corpus(s3_server: S3Server, prefix: str) -> dict[str, list[dict]]:
    files = {f"{prefix}/part-{n}.parquet": documents(f"pq{n}", 120, seed=n) for n in range(2)}
    files[f"{prefix}/lines.jsonl"] = documents("jl", 80, seed=7, sentences=4)
    files[f"{prefix}/table.csv"] = documents("cv", 60, seed=8, sentences=4)
    files[f"{prefix}/_SUCCESS"] = []  # no known extension: left out
    for path, rows in files.items():
        if path.endswith(".parquet"):
            put(s3_server, path, parquet_bytes(rows, row_group_size=30))
        elif path.endswith(".jsonl"):
            put(s3_server, path, jsonl_bytes(rows))
        elif path.endswith(".csv"):
            put(s3_server, path, csv_bytes(rows))
        else:
            put(s3_server, path, b"")
    return files


def chunk_count(session: Session) -> tuple[int, int]:
    chunks = session.scalar(select(func.count()).select_from(Chunk))
    distinct = session.scalar(text("SELECT count(*) FROM (SELECT DISTINCT document_id, idx FROM chunks) c"))
    return int(chunks or 0), int(distinct or 0)


def test_a_source_is_sharded_read_once_and_resynced_by_what_changed(
    db_session: Session, scope, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    make_collection(db_session, settings)
    files = upload_corpus(s3_server, prefix)
    total = sum(len(rows) for rows in files.values())

    job = sync(db_session, scope, settings, f"s3://{prefix}/")
    assert (job.status, job.total, job.done, job.failed, job.skipped) == ("succeeded", total, total, 0, 0), job.error
    shards = db_session.scalars(select(IngestShard).where(IngestShard.job_id == job.id)).all()
    # 4 row groups per Parquet file (each a shard at 4 KiB), the JSONL and CSV files in byte ranges.
    assert sum(s.kind == "row_groups" for s in shards) == 8 and sum(s.kind == "bytes" for s in shards) > 2
    assert {s.state for s in shards} == {"done"} and {s.attempts for s in shards} == {1}
    view = JobOut.of(job).ingest
    assert view is not None and view.shards is not None
    assert (view.shards.total, view.shards.done, view.shards.failed) == (len(shards), len(shards), 0)
    assert db_session.scalar(select(func.count()).select_from(Document)) == total
    chunks, distinct = chunk_count(db_session)
    assert chunks == distinct == job.chunks_done > 0
    group = db_session.scalar(select(Document.meta).where(Document.external_id == "cv-3"))
    assert group == {"group": "odd"}

    unchanged = sync(db_session, scope, settings, f"s3://{prefix}/")
    assert (unchanged.status, unchanged.total, unchanged.shards_total) == ("succeeded", 0, 0)
    assert "4 source objects unchanged" in (unchanged.message or "")

    # A document that failed to embed (say the model broke) gets its object read again, changed or not.
    db_session.execute(update(Document).where(Document.external_id == "jl-3").values(status="failed", error="x"))
    retried = sync(db_session, scope, settings, f"s3://{prefix}/")
    jsonl_shards = sum(s.object_uri.endswith("lines.jsonl") for s in shards)
    assert (retried.status, retried.total, retried.skipped, retried.shards_total) == ("succeeded", 80, 79, jsonl_shards)
    assert db_session.scalar(select(Document.status).where(Document.external_id == "jl-3")) == "ready"

    # One Parquet file changes two documents' text: only its shards are read, only those two embedded.
    changed = [dict(r) for r in files[f"{prefix}/part-1.parquet"]]
    changed[5]["text"] += " Changed."
    changed[77]["text"] += " Changed too."
    put(s3_server, f"{prefix}/part-1.parquet", parquet_bytes(changed, row_group_size=30))
    before = {c.id for c in db_session.scalars(select(Chunk))}
    resync = sync(db_session, scope, settings, f"s3://{prefix}/")
    assert (resync.status, resync.total, resync.skipped, resync.shards_total) == ("succeeded", 120, 118, 4)
    fresh = db_session.scalars(select(Chunk).where(Chunk.id.not_in(before))).all()
    renewed = db_session.scalars(select(Document.external_id).where(Document.id.in_({c.document_id for c in fresh})))
    assert sorted(renewed) == ["pq1-5", "pq1-77"]
    assert chunk_count(db_session)[0] == chunk_count(db_session)[1]

    # An object disappears: delete_missing removes its documents, and only them.
    s3_server.client().rm(f"{prefix}/table.csv")
    pruned = sync(db_session, scope, settings, f"s3://{prefix}/", delete_missing=True)
    assert pruned.status == "succeeded" and "60 documents of vanished objects removed" in (pruned.message or "")
    assert db_session.scalar(select(func.count()).select_from(Document)) == total - 60
    assert db_session.scalar(select(func.count()).select_from(Document).where(Document.external_id.like("cv-%"))) == 0
    assert chunk_count(db_session)[0] == chunk_count(db_session)[1]

    secret = s3_server.secret_key
    for row in db_session.scalars(select(Job)):
        assert secret not in json.dumps(row.params) and s3_server.access_key not in json.dumps(row.params)


def test_a_glob_reads_only_what_it_matches(db_session: Session, scope, settings: Settings, s3_server, prefix) -> None:
    make_collection(db_session, settings)
    upload_corpus(s3_server, prefix)
    job = sync(db_session, scope, settings, f"s3://{prefix}/*.parquet")
    assert (job.status, job.total) == ("succeeded", 240)


def test_a_shard_of_a_file_broken_since_planning_fails_its_documents_not_the_job(
    db_session: Session, scope, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/good.jsonl", jsonl_bytes(documents("g", 20)))
    put(s3_server, f"{prefix}/gone.parquet", parquet_bytes(documents("x", 50), row_group_size=50))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.flush()
    plan_source(scope, job.id, settings)
    s3_server.client().rm(f"{prefix}/gone.parquet")  # gone between planning and reading
    for shard in db_session.scalars(select(IngestShard).where(IngestShard.job_id == job.id)):
        run_shard(scope, job.id, shard.seq, settings)
    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done, job.failed, job.shards_failed) == ("succeeded", 20, 1, 1)
    errors = JobOut.of(job).ingest.errors
    assert len(errors) == 1 and f"s3://{prefix}/gone.parquet" in errors[0].error and "cannot be read" in errors[0].error


def test_an_object_overwritten_since_planning_fails_its_shards_and_is_read_again_by_a_resync(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    settings_env.set(EMBEDQ_SOURCE_SHARD_TARGET_BYTES="4096")  # several byte-range shards of one object
    settings = get_settings()
    make_collection(db_session, settings)
    old, new = documents("v1", 60, sentences=4), documents("v2", 60, sentences=4)
    put(s3_server, f"{prefix}/corpus.jsonl", jsonl_bytes(old))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.flush()
    plan_source(scope, job.id, settings)
    shards = list(db_session.scalars(select(IngestShard).where(IngestShard.job_id == job.id)))
    assert len(shards) > 2
    run_shard(scope, job.id, shards[0].seq, settings)  # read as planned
    put(s3_server, f"{prefix}/corpus.jsonl", jsonl_bytes(new))  # overwritten while the job runs
    for shard in shards[1:]:
        run_shard(scope, job.id, shard.seq, settings)
    job = drain(db_session, scope, settings, job.id)
    assert job.shards_failed == len(shards) - 1
    errors = JobOut.of(job).ingest.errors
    assert errors and all("changed since the job listed it" in e.error for e in errors), errors
    ids = set(db_session.scalars(select(Document.external_id)))
    assert not any(i.startswith("v2-") for i in ids), "a shard read the new version into a job planned on the old"

    again = sync(db_session, scope, settings, f"s3://{prefix}/")  # the object was not recorded as synced
    assert again.status == "succeeded"
    assert {d["id"] for d in new} <= set(db_session.scalars(select(Document.external_id)))


def test_a_shard_whose_workers_keep_dying_fails_unread_after_its_attempts(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    settings_env.set(EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS="2")
    settings = get_settings()
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/good.jsonl", jsonl_bytes(documents("g", 20)))
    put(s3_server, f"{prefix}/deadly.jsonl", jsonl_bytes(documents("d", 20)))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.flush()
    plan_source(scope, job.id, settings)
    deadly = db_session.scalar(select(IngestShard).where(IngestShard.object_uri.endswith("deadly.jsonl")))
    # Two deliveries started and never finished: their worker was killed while it read.
    db_session.execute(update(IngestShard).where(IngestShard.seq == deadly.seq).values(attempts=2))
    db_session.commit()
    for shard in db_session.scalars(select(IngestShard).where(IngestShard.job_id == job.id)):
        run_shard(scope, job.id, shard.seq, settings)
    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done, job.failed, job.shards_failed) == ("succeeded", 20, 1, 1)
    [error] = JobOut.of(job).ingest.errors
    assert "deadly.jsonl: the file was started 2 times and never finished" in error.error, error.error
    assert not any(i.startswith("d-") for i in db_session.scalars(select(Document.external_id)))


def dead_store(settings_env: SettingsEnv, s3_server: S3Server) -> Settings:
    """Return settings whose credential set "corpus" names a port nothing listens on: a store that does not answer."""
    dead = {
        "corpus": {
            "endpoint_url": f"http://127.0.0.1:{find_free_port()}", "region": REGION,
            "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
        }
    }  # fmt: skip
    settings_env.set(EMBEDQ_SOURCE_CREDENTIALS=json.dumps(dead))
    return get_settings()


def test_a_shard_the_store_does_not_answer_is_read_again_later_and_nothing_is_lost(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    settings_env.set(EMBEDQ_SOURCE_RETRY_DELAY_S="2")
    settings = get_settings()
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/a.jsonl", jsonl_bytes(documents("a", 20)))
    put(s3_server, f"{prefix}/b.jsonl", jsonl_bytes(documents("b", 20)))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.flush()
    plan_source(scope, job.id, settings)
    shards = select(IngestShard).where(IngestShard.job_id == job.id).order_by(IngestShard.seq)
    first, second = db_session.scalars(shards)
    down = dead_store(settings_env, s3_server)
    delays = []
    for _ in range(2):  # reads 1 and 2 of 3: sent back, 2 s then 4 s later, with nothing written
        with pytest.raises(StoreOutageError) as raised:
            run_shard(scope, job.id, first.seq, down)
        delays.append(raised.value.retry_in_s)
        assert "127.0.0.1" not in str(raised.value) and "read again in" in str(raised.value)
    assert delays == [2, 4]
    db_session.expire_all()
    row = db_session.get(IngestShard, (job.id, first.seq))
    assert (row.state, row.attempts, row.error) == ("pending", 2, None)
    assert db_session.scalar(select(func.count()).select_from(Document)) == 0

    assert run_shard(scope, job.id, first.seq, settings).written == 20  # read 3: the store answers again
    for _ in range(2):
        with pytest.raises(StoreOutageError):
            run_shard(scope, job.id, second.seq, down)
    last = run_shard(scope, job.id, second.seq, down)  # read 3 of 3, still no answer: recorded, the job goes on
    assert last.failed == 1
    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done, job.failed, job.shards_failed) == ("succeeded", 20, 1, 1)
    [error] = JobOut.of(job).ingest.errors
    assert "b.jsonl" in error.error and "the store did not answer 3 reads" in error.error, error.error
    assert "127.0.0.1" not in error.error


def test_a_plan_the_store_does_not_answer_lists_again_then_fails_the_job(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/a.parquet", parquet_bytes(documents("a", 10), row_group_size=5))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.commit()
    down = dead_store(settings_env, s3_server)
    with pytest.raises(StoreOutageError) as raised:
        plan_source(scope, job.id, down, attempt=1)
    assert raised.value.retry_in_s == 10 and "listing 1 of 3" in str(raised.value)
    db_session.expire_all()
    assert db_session.get(Job, job.id).status == "running"
    assert plan_source(scope, job.id, down, attempt=3) == 0  # the last listing: the job fails, saying why
    failed = drain(db_session, scope, settings, job.id)
    assert failed.status == "failed" and "the store did not answer 3 listings" in (failed.error or ""), failed.error
    assert "127.0.0.1" not in failed.error


def test_what_the_store_says_decides_whether_a_read_is_tried_again() -> None:
    def client_error(status: int, code: str) -> Exception:
        error = botocore.exceptions.ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )
        try:  # as s3fs raises it: translated into an OSError, the ClientError its cause
            raise translate_boto_error(error)
        except OSError as exc:
            return exc

    assert unavailable(client_error(503, "SlowDown")) and unavailable(client_error(500, "InternalError"))
    assert unavailable(client_error(429, "TooManyRequests"))
    assert unavailable(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert unavailable(ConnectionResetError())
    assert not unavailable(client_error(404, "NoSuchKey")) and not unavailable(client_error(403, "AccessDenied"))
    assert not unavailable(ValueError("a truncated Parquet footer"))
    # An http(s) source's answers: 5xx and 429 are "not now", any other status an answer.
    for status, outage in ((503, True), (502, True), (429, True), (404, False), (401, False)):
        try:  # as fsspec's http client raises them: FileNotFoundError(url) from aiohttp's error
            raise FileNotFoundError("https://host/f.jsonl") from aiohttp.ClientResponseError(None, (), status=status)
        except FileNotFoundError as exc:
            assert unavailable(exc) is outage, status
    try:  # a name that does not resolve is an answer, not an outage: as botocore raises it
        try:
            socket.getaddrinfo("no-such-host.invalid", 443)
        except socket.gaierror as exc:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://no-such-host.invalid") from exc
    except botocore.exceptions.EndpointConnectionError as unresolved:
        assert not unavailable(unresolved)


def test_a_listing_stops_past_the_key_cap_instead_of_reading_the_whole_prefix(
    db_session: Session, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    make_collection(db_session, settings)
    for n in range(6):
        put(s3_server, f"{prefix}/part-{n}.jsonl", jsonl_bytes(documents(f"k{n}", 1)))
    put(s3_server, f"{prefix}/_SUCCESS", b"")  # a key without a format counts too: it was listed
    settings_env.set(EMBEDQ_SOURCE_MAX_LISTED_KEYS="6")
    for uri in (f"s3://{prefix}/", f"s3://{prefix}/*.jsonl", f"s3://{prefix}/**/*.jsonl"):
        capped = refused(db_session, get_settings(), uri=uri, credentials="corpus")
        assert capped.status_code == 422 and "more than 6 keys" in capped.message, capped.message
    settings_env.set(EMBEDQ_SOURCE_MAX_LISTED_KEYS="7")
    for uri in (f"s3://{prefix}/", f"s3://{prefix}/*.jsonl"):
        job = start_source(db_session, "docs", SourceRequest(uri=uri, credentials="corpus"), get_settings(), ADMIN)
        assert job.status == "running" and job.params["source"]["uri"] == uri


def test_bad_sources_are_refused_before_any_job(
    db_session: Session, settings_env: SettingsEnv, settings: Settings, s3_server: S3Server, prefix: str, tmp_path
) -> None:
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/a.parquet", parquet_bytes(documents("a", 10), row_group_size=5))
    secret, key = s3_server.secret_key, s3_server.access_key

    scheme = refused(db_session, settings, uri="ftp://host/corpus/")
    assert (scheme.status_code, scheme.param) == (422, "uri") and "s3://" in scheme.message
    unknown_set = refused(db_session, settings, uri=f"s3://{prefix}/", credentials="nope")
    assert unknown_set.status_code == 422 and "corpus" in unknown_set.message and secret not in unknown_set.message
    nothing = refused(db_session, settings, uri=f"s3://{prefix}/*.jsonl", credentials="corpus")
    assert nothing.status_code == 422 and "no object" in nothing.message
    columns = refused(db_session, settings, uri=f"s3://{prefix}/", credentials="corpus", text_field="body")
    assert columns.status_code == 422 and "no body column" in columns.message and "id, text, group" in columns.message
    no_bucket = refused(db_session, settings, uri="s3://no-such-bucket-here/x/", credentials="corpus")
    assert no_bucket.status_code == 422 and "cannot be read" in no_bucket.message
    wrong_secret = {
        "corpus": {"endpoint_url": s3_server.endpoint_url, "access_key_id": key, "secret_access_key": "x" * 32}
    }
    settings_env.set(EMBEDQ_SOURCE_CREDENTIALS=json.dumps(wrong_secret))
    denied = refused(db_session, get_settings(), uri=f"s3://{prefix}/", credentials="corpus")
    assert denied.status_code == 422 and key not in denied.message and s3_server.endpoint_url not in denied.message
    dead = {"corpus": {"endpoint_url": "http://127.0.0.1:9", "access_key_id": key, "secret_access_key": secret}}
    settings_env.set(EMBEDQ_SOURCE_CREDENTIALS=json.dumps(dead), EMBEDQ_SOURCE_TIMEOUT_S="2")
    unreachable = refused(db_session, get_settings(), uri=f"s3://{prefix}/", credentials="corpus")
    assert unreachable.status_code == 503 and "127.0.0.1:9" not in unreachable.message, unreachable.message
    assert unreachable.code == "source_unavailable" and unreachable.headers["Retry-After"] == "30"

    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "a.jsonl").write_bytes(jsonl_bytes(documents("f", 3)))
    (tmp_path / "secret.jsonl").write_bytes(jsonl_bytes(documents("s", 3)))
    off = refused(db_session, get_settings(), uri=f"file://{tmp_path}/allowed/")
    assert off.status_code == 403 and "EMBEDQ_SOURCE_FILE_ROOTS" in off.message
    settings_env.set(EMBEDQ_SOURCE_FILE_ROOTS=str(tmp_path / "allowed"))
    outside = refused(db_session, get_settings(), uri=f"file://{tmp_path}/")
    assert outside.status_code == 403
    dotdot = refused(db_session, get_settings(), uri=f"file://{tmp_path}/allowed/../secret.jsonl")
    assert dotdot.status_code == 422
    (tmp_path / "allowed" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    job = start_source(db_session, "docs", SourceRequest(uri=f"file://{tmp_path}/allowed/"), get_settings(), ADMIN)
    assert job.status == "running"  # the symlink out of the root is not listed (see the planning test below)


@pytest.mark.parametrize("credentials", ["corpus", None])
def test_no_source_reads_the_artifact_store_where_every_tenant_s_files_are(
    db_session: Session,
    settings_env: SettingsEnv,
    settings: Settings,
    s3_server: S3Server,
    prefix: str,
    tmp_path,
    credentials,
) -> None:
    """The artifact store on the sources' S3, and the default AWS chain holding its keys, as on a fleet's pods."""
    settings_env.set(
        EMBEDQ_ARTIFACT_STORE=f"s3://{prefix}/artifacts",
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        EMBEDQ_SOURCE_S3_ENDPOINT_URL=s3_server.endpoint_url,
        EMBEDQ_SOURCE_S3_REGION=REGION,
    )
    settings = get_settings()
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/artifacts/files/other-tenant/file-abc", jsonl_bytes(documents("secret", 3)))
    put(s3_server, f"{prefix}/corpus/a.jsonl", jsonl_bytes(documents("a", 3)))
    bucket, under = prefix.split("/", 1)
    for uri in (
        f"s3://{prefix}/artifacts/files/",  # inside
        f"s3://{prefix}/artifacts/files/other-tenant/file-abc",  # one of its objects
        f"s3://{prefix}/",  # a prefix that holds it
        f"s3://{bucket}/",  # the whole bucket
        f"s3://{bucket}/{under}/*/files/**",  # a glob reaching into it
    ):
        answer = refused(db_session, settings, uri=uri, format="jsonl", credentials=credentials)
        assert answer.status_code == 403 and "EMBEDQ_ARTIFACT_STORE" in answer.message, (uri, answer.message)
    beside = start_source(
        db_session, "docs", SourceRequest(uri=f"s3://{prefix}/corpus/", credentials=credentials), settings, ADMIN
    )
    assert beside.status == "running"  # the same bucket, outside the store: read as any source

    store = tmp_path / "state" / "artifacts"
    (store / "files").mkdir(parents=True)
    (store / "files" / "f.jsonl").write_bytes(jsonl_bytes(documents("secret", 3)))
    (tmp_path / "link").symlink_to(store)
    settings_env.set(EMBEDQ_ARTIFACT_STORE=store.as_uri(), EMBEDQ_SOURCE_FILE_ROOTS=str(tmp_path))
    for uri in (f"file://{store}/files/", f"file://{tmp_path}/", f"file://{tmp_path}/link/files/"):
        answer = refused(db_session, get_settings(), uri=uri, format="jsonl")
        assert answer.status_code == 403 and "EMBEDQ_ARTIFACT_STORE" in answer.message, (uri, answer.message)


def test_a_file_source_under_an_allowed_root_is_read_without_its_symlinks_out(
    db_session: Session, scope, settings_env: SettingsEnv, settings: Settings, tmp_path
) -> None:
    make_collection(db_session, settings)
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "a.jsonl").write_bytes(jsonl_bytes(documents("f", 12)))
    (root / "notes.txt").write_text("a plain text document, one per file")
    (tmp_path / "secret.jsonl").write_bytes(jsonl_bytes(documents("s", 3)))
    (root / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    settings_env.set(EMBEDQ_SOURCE_FILE_ROOTS=str(root))
    settings = get_settings()
    job = start_source(db_session, "docs", SourceRequest(uri=f"file://{root}/"), settings, ADMIN)
    db_session.flush()
    plan_source(scope, job.id, settings)
    for shard in db_session.scalars(select(IngestShard).where(IngestShard.job_id == job.id)):
        run_shard(scope, job.id, shard.seq, settings)
    job = drain(db_session, scope, settings, job.id)
    ids = set(db_session.scalars(select(Document.external_id)))
    assert job.status == "succeeded" and ids == {f"f-{n}" for n in range(12)} | {"notes.txt"}


def test_parquet_is_an_upload_format(db_session: Session, scope, settings: Settings) -> None:
    make_collection(db_session, settings)
    rows = documents("up", 50)
    rows[7]["text"] = ""
    body = parquet_bytes(rows, row_group_size=16)
    reader = UploadReader("application/vnd.apache.parquet", UploadOptions())
    writer = UploadWriter(db_session, "docs", settings, {"format": "parquet"}, ADMIN)
    writer.open()
    items = [item for start in range(0, len(body), 1000) for item in reader.feed(body[start : start + 1000])]
    for item in [*items, *reader.close()]:
        if writer.add(item):
            writer.flush()
    job = drain(db_session, scope, settings, writer.finish().id)
    assert (job.status, job.total, job.done, job.failed) == ("succeeded", 50, 49, 1)
    assert JobOut.of(job).ingest.errors[0].line == 8 and "empty text" in JobOut.of(job).ingest.errors[0].error
    assert db_session.scalar(select(Document.meta).where(Document.external_id == "up-3")) == {"group": "odd"}


def sent_tasks(session: Session) -> list[tuple[str, object]]:
    """Return (task name, last argument) of the tasks the session would send on commit, and forget them."""
    return [(t.name.value, t.args[-1]) for t in session.info.pop("embedq_outbox", [])]


def test_the_reaper_resends_a_lost_plan_then_only_the_pending_shards(
    db_session: Session, scope, settings: Settings, s3_server: S3Server, prefix: str
) -> None:
    make_collection(db_session, settings)
    put(s3_server, f"{prefix}/a.parquet", parquet_bytes(documents("a", 90), row_group_size=30))
    job = start_source(db_session, "docs", SourceRequest(uri=f"s3://{prefix}/", credentials="corpus"), settings, ADMIN)
    db_session.flush()
    sent_tasks(db_session)  # as if sent, then lost
    assert requeue_ingest_job(db_session, job) == 1
    assert sent_tasks(db_session) == [("ingest.plan", str(job.id))]
    plan_source(scope, job.id, settings)
    db_session.refresh(job)
    shards = db_session.scalars(select(IngestShard.seq).where(IngestShard.job_id == job.id)).all()
    run_shard(scope, job.id, shards[0], settings)
    db_session.refresh(job)
    sent_tasks(db_session)
    resent = requeue_ingest_job(db_session, job)
    sent = sent_tasks(db_session)
    assert resent == len(sent) and [s for name, s in sent if name == "ingest.shard"] == shards[1:]
    assert {name for name, _ in sent} == {"ingest.shard", "ingest.batch"}
    for seq in shards[1:]:
        run_shard(scope, job.id, seq, settings)
    job = drain(db_session, scope, settings, job.id)
    assert (job.status, job.done) == ("succeeded", 90)


def test_a_shards_documents_go_in_even_batches_within_both_limits() -> None:
    docs = [DocumentInput(f"d{i}", "x" * 10, {}, f"h{i}") for i in range(300)]
    assert [len(b) for b in _batches(docs, Settings(ingest_batch_documents=256))] == [150, 150]
    assert [len(b) for b in _batches(docs[:256], Settings(ingest_batch_documents=256))] == [256]
    # The character limit still cuts a run short.
    sizes = [len(b) for b in _batches(docs, Settings(ingest_batch_documents=256, ingest_batch_chars=1000))]
    assert sizes == [100, 100, 100]


def test_a_process_reads_each_credential_set_through_one_s3_client(settings: Settings, s3_server: S3Server) -> None:
    location = parse_location(f"s3://{s3_server.bucket}/anything/")
    client = filesystem(location, "corpus", settings)
    assert filesystem(location, "corpus", settings) is client  # a plan and its shards share its connections
    assert filesystem(location, None, settings) is not client  # the default AWS chain is another client
    assert filesystem(location, "corpus", settings).ls(s3_server.bucket) is not None
