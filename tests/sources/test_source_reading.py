"""Shards of local files: byte ranges cut at line boundaries read every line exactly once; row groups too."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from support.settings import SettingsEnv
from support.source_corpus import csv_bytes, documents, jsonl_bytes, parquet_bytes

from app.collections.upload_items import ParsedDocument, RejectedLine
from app.core.config import get_settings
from app.models.source import ShardKind
from app.sources.listing import ListedObject
from app.sources.reading import ShardPlan, plan_object, read_shard
from app.sources.spec import SourceFormat, SourceSpec

ANY_SPEC = SourceSpec(uri="file:///")


def read_all(path: Path, fmt: SourceFormat, spec: SourceSpec | None = None) -> tuple[list[ParsedDocument], list]:
    fs, settings = LocalFileSystem(), get_settings()
    obj = ListedObject(str(path), f"file://{path}", path.stat().st_size, fmt, None, None)
    documents_read, errors = [], []
    for shard in plan_object(fs, obj, settings):
        read = read_shard(fs, str(path), obj.uri, fmt, shard, spec or ANY_SPEC, path.name, settings)
        documents_read += [i for i in read.items if isinstance(i, ParsedDocument)]
        errors += [i for i in read.items if isinstance(i, RejectedLine)] + ([read.error] if read.error else [])
    return documents_read, errors


@pytest.mark.parametrize("target", [1024, 1500, 4096, 10**9])
def test_jsonl_byte_ranges_read_every_line_exactly_once(tmp_path: Path, settings_env: SettingsEnv, target) -> None:
    settings_env.set(EMBEDQ_SOURCE_SHARD_TARGET_BYTES=str(target))
    rows = documents("j", 300, sentences=6)  # lines of 60 to 500 bytes: ranges start mid-line and on a newline
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(jsonl_bytes(rows))
    obj = ListedObject(str(path), "", path.stat().st_size, SourceFormat.JSONL, None, None)
    shards = plan_object(LocalFileSystem(), obj, get_settings())
    assert len(shards) == (1 if target > path.stat().st_size else -(-path.stat().st_size // target))
    read, errors = read_all(path, SourceFormat.JSONL)
    assert errors == []
    assert [d.external_id for d in read] == [r["id"] for r in rows]
    assert [d.text for d in read] == [r["text"] for r in rows] and read[1].metadata == {"group": "odd"}


def test_a_range_that_begins_exactly_on_a_line_start_keeps_that_line(tmp_path: Path, settings_env: SettingsEnv) -> None:
    line = b'{"id": "a", "text": "exactly sixty-four bytes of json line here......"}\n'
    body = line + line.replace(b'"a"', b'"b"') + line.replace(b'"a"', b'"c"')
    path = tmp_path / "aligned.jsonl"
    path.write_bytes(body)
    fs, settings = LocalFileSystem(), get_settings()
    ids = []
    for start in range(0, len(body), len(line)):
        shard = ShardPlan(ShardKind.BYTES, start, min(start + len(line), len(body)))
        read = read_shard(fs, str(path), "file://x", SourceFormat.JSONL, shard, ANY_SPEC, "x", settings)
        ids.append([i.external_id for i in read.items])
    assert ids == [["a"], ["b"], ["c"]]


def test_csv_ranges_after_the_first_are_read_with_the_header(tmp_path: Path, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_SOURCE_SHARD_TARGET_BYTES="2048")
    rows = documents("c", 200, sentences=4)
    path = tmp_path / "corpus.csv"
    path.write_bytes(csv_bytes(rows))
    read, errors = read_all(path, SourceFormat.CSV, SourceSpec(uri="file:///", metadata_fields=("group",)))
    assert errors == [] and [d.external_id for d in read] == [r["id"] for r in rows]
    assert all(d.metadata == {"group": r["group"]} for d, r in zip(read, rows, strict=True))


def test_parquet_row_groups_group_up_to_the_target(tmp_path: Path, settings_env: SettingsEnv) -> None:
    rows = documents("p", 1000)
    path = tmp_path / "corpus.parquet"
    path.write_bytes(parquet_bytes(rows, row_group_size=100))
    settings_env.set(EMBEDQ_SOURCE_SHARD_TARGET_BYTES="1024")  # smaller than a row group: one shard each
    obj = ListedObject(str(path), "", path.stat().st_size, SourceFormat.PARQUET, None, None)
    shards = plan_object(LocalFileSystem(), obj, get_settings())
    assert [(s.start, s.stop) for s in shards] == [(g, g + 1) for g in range(10)]
    read, errors = read_all(path, SourceFormat.PARQUET)
    assert errors == [] and [d.external_id for d in read] == [r["id"] for r in rows]
    assert read[999].line == 1000 and read[3].metadata == {"group": "odd"}
    settings_env.set(EMBEDQ_SOURCE_SHARD_TARGET_BYTES=str(10**9))
    assert len(plan_object(LocalFileSystem(), obj, get_settings())) == 1


def test_a_truncated_parquet_file_fails_its_shard_with_the_reason(tmp_path: Path, settings_env: SettingsEnv) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(parquet_bytes(documents("b", 100), row_group_size=10))
    fs, settings = LocalFileSystem(), get_settings()
    obj = ListedObject(str(path), "file://broken", path.stat().st_size, SourceFormat.PARQUET, None, None)
    shards = plan_object(fs, obj, settings)
    body = path.read_bytes()
    path.write_bytes(body[:100] + b"\0" * (len(body) - 100))  # the footer survives, the first pages do not
    read = read_shard(fs, str(path), obj.uri, SourceFormat.PARQUET, shards[0], ANY_SPEC, "b", settings)
    assert read.error is not None and "file://broken" in read.error and "cannot be read" in read.error


def test_plain_text_objects_are_documents_named_by_their_path_under_the_base(tmp_path: Path, settings_env) -> None:
    fs, settings = LocalFileSystem(), get_settings()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "readme.md").write_text(f"the readme of {folder}")
    ids = []
    for folder in ("a", "b"):
        path = tmp_path / folder / "readme.md"
        shard = ShardPlan(ShardKind.WHOLE, 0, path.stat().st_size)
        read = read_shard(
            fs, str(path), f"file://{path}", SourceFormat.TEXT, shard, ANY_SPEC, f"{folder}/readme.md", settings
        )
        ids += [(i.external_id, i.text) for i in read.items]
    assert ids == [("a/readme.md", "the readme of a"), ("b/readme.md", "the readme of b")]


def test_a_text_object_over_the_document_limit_is_refused_without_reading_it(tmp_path: Path, settings_env) -> None:
    settings_env.set(EMBEDQ_INGEST_MAX_LINE_BYTES="4096")
    path = tmp_path / "big.txt"
    path.write_bytes(b"word " * 2000)  # 10,000 bytes
    read, errors = read_all(path, SourceFormat.TEXT)
    assert read == [] and len(errors) == 1
    assert "larger than 4096 bytes" in errors[0].error and "EMBEDQ_INGEST_MAX_LINE_BYTES" in errors[0].error


@pytest.mark.parametrize("target", [2048, 10**9])
def test_a_jsonl_line_over_the_limit_is_refused_when_a_shard_is_fed_whole(tmp_path: Path, settings_env, target) -> None:
    settings_env.set(EMBEDQ_INGEST_MAX_LINE_BYTES="4096", EMBEDQ_SOURCE_SHARD_TARGET_BYTES=str(target))
    rows = documents("j", 20, sentences=2)
    long = '{"id": "long", "text": "' + "x" * 10_000 + '"}'
    lines = jsonl_bytes(rows).decode().splitlines()
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join([*lines[:10], long, *lines[10:]]) + "\n")
    read, errors = read_all(path, SourceFormat.JSONL)
    assert [d.external_id for d in read] == [r["id"] for r in rows]  # every other line, once
    assert len(errors) == 1 and "longer than 4096 bytes" in errors[0].error


def test_a_jsonl_object_with_no_newline_is_not_read_past_the_line_limit(tmp_path: Path, settings_env) -> None:
    settings_env.set(EMBEDQ_INGEST_MAX_LINE_BYTES="4096", EMBEDQ_SOURCE_SHARD_TARGET_BYTES="2048")
    path = tmp_path / "one-line.jsonl"
    path.write_bytes(b'{"id": "x", "text": "' + b"y" * 1_000_000 + b'"}')
    reads = []

    class Counting(LocalFileSystem):
        def open(self, *args, **kwargs):  # counts the bytes each shard reads
            handle = super().open(*args, **kwargs)
            read = handle.read

            def counted(n=-1):
                data = read(n)
                reads.append(len(data))
                return data

            handle.read = counted
            return handle

    fs, settings = Counting(), get_settings()
    obj = ListedObject(str(path), f"file://{path}", path.stat().st_size, SourceFormat.JSONL, None, None)
    shard = plan_object(fs, obj, settings)[0]
    read = read_shard(fs, str(path), obj.uri, SourceFormat.JSONL, shard, ANY_SPEC, path.name, settings)
    assert [i.error for i in read.items if isinstance(i, RejectedLine)] and not read.error
    assert sum(reads) < 2048 + 4096 + 2 * 64 * 1024  # the range, the line limit, and at most two tail reads
