"""Streaming upload parsers: every format, fed in arbitrary pieces, with bad lines isolated."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.collections.upload_items import (
    ParsedDocument,
    RejectedLine,
    TextMode,
    UploadFormat,
    UploadFormatError,
    UploadOptions,
)
from app.collections.uploads import UploadReader


def read(body: bytes, content_type: str | None, piece: int = 7, **options) -> list:
    """Feed ``body`` in pieces of ``piece`` bytes, as a network would, and return every item."""
    reader = UploadReader(content_type, UploadOptions(**options))
    items = []
    for start in range(0, len(body), piece):
        items += reader.feed(body[start : start + piece])
    return items + list(reader.close())


def docs(items: list) -> list[tuple[str, str, dict]]:
    return [(i.external_id, i.text, i.metadata) for i in items if isinstance(i, ParsedDocument)]


def rejects(items: list) -> list[tuple[int | None, str | None, str]]:
    return [(i.line, i.document_id, i.error) for i in items if isinstance(i, RejectedLine)]


@pytest.mark.parametrize("piece", [1, 3, 64, 100_000])
def test_jsonl_lines_become_documents_whatever_the_piece_size(piece: int) -> None:
    lines = [
        {"id": "a", "text": "first doc", "metadata": {"lang": "en"}},
        {"id": 7, "text": "second ünïcode doc ✓", "source": "web"},
        {"id": "c", "text": "third", "metadata": {"lang": "fr"}, "year": 2020},
    ]
    body = ("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n").encode()
    items = read(body, "application/x-ndjson", piece)
    assert docs(items) == [
        ("a", "first doc", {"lang": "en"}),
        ("7", "second ünïcode doc ✓", {"source": "web"}),
        ("c", "third", {"year": 2020, "lang": "fr"}),
    ]
    assert [i.line for i in items] == [1, 2, 3]


def test_one_bad_jsonl_line_fails_only_its_document() -> None:
    body = b"\n".join(
        [
            b'{"id": "ok1", "text": "fine"}',
            b'{"id": "broken", "text": ',
            b'{"id": "notext"}',
            b'{"id": "latin1", "text": "caf\xe9"}',
            b'{"id": "", "text": "no id"}',
            b'["not", "an", "object"]',
            b'{"id": "blank", "text": "   "}',
            b'{"id": "nul", "text": "a\\u0000b"}',
            b'{"id": "meta", "text": "x", "metadata": [1]}',
            b'{"id": "ok2", "text": "also fine"}\r',
        ]
    )
    items = read(body, None, format=UploadFormat.JSONL)
    assert docs(items) == [("ok1", "fine", {}), ("ok2", "also fine", {})]
    errors = rejects(items)
    assert [line for line, _, _ in errors] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "line 2 is not valid JSON" in errors[0][2]
    assert errors[1][1] == "notext" and 'no "text"' in errors[1][2]
    assert "not valid UTF-8 (byte 0xe9" in errors[2][2]
    assert 'no "id"' in errors[3][2]
    assert "JSON list" in errors[4][2]
    assert "empty text" in errors[5][2] and "NUL" in errors[6][2] and "metadata" in errors[7][2]


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_non_finite_number_in_metadata_fails_its_document_not_the_batch(value: bytes) -> None:
    # Python's parser reads these; Postgres's JSON refuses them, and did so for the whole batch: a 500.
    body = (
        b'{"id": "ok1", "text": "fine"}\n{"id": "n", "text": "x", "score": ' + value + b'}\n{"id": "ok2", "text": "y"}'
    )
    items = read(body, None, format=UploadFormat.JSONL)
    assert docs(items) == [("ok1", "fine", {}), ("ok2", "y", {})]
    [(line, document_id, error)] = rejects(items)
    assert (line, document_id) == (2, "n") and "JSON numbers must be finite" in error
    array = b'[{"id": "a", "text": "t", "metadata": {"w": ' + value + b'}}, {"id": "b", "text": "u"}]'
    items = read(array, "application/json")
    assert docs(items) == [("b", "u", {})] and "must be finite" in rejects(items)[0][2]


def test_a_parquet_duration_column_is_metadata_in_seconds() -> None:
    buffer = io.BytesIO()
    table = pa.table({"id": ["x"], "text": ["t"], "took": pa.array([5_500], pa.duration("ms"))})
    pq.write_table(table, buffer)
    items = read(buffer.getvalue(), "application/vnd.apache.parquet")
    assert docs(items) == [("x", "t", {"took": 5.5})]


def test_a_jsonl_file_saved_with_a_byte_order_mark_reads_its_first_line() -> None:
    body = b'\xef\xbb\xbf{"id": "a", "text": "first"}\n{"id": "b", "text": "second"}\n'
    assert docs(read(body, "application/x-ndjson", piece=2)) == [("a", "first", {}), ("b", "second", {})]


def test_a_line_over_the_limit_is_rejected_and_the_next_one_read() -> None:
    long_line = json.dumps({"id": "huge", "text": "x" * 5000}).encode()
    body = b'{"id": "a", "text": "short"}\n' + long_line + b'\n{"id": "b", "text": "after"}'
    items = read(body, "application/jsonl", piece=100, max_line_bytes=1024)
    assert docs(items) == [("a", "short", {}), ("b", "after", {})]
    [(line, _, error)] = rejects(items)
    assert line == 2 and "longer than 1024 bytes" in error


@pytest.mark.parametrize("piece", [1, 5, 4096])
def test_csv_header_names_id_and_text_and_the_rest_is_metadata(piece: int) -> None:
    body = (
        "id,title,text,lang\r\n"
        'd1,First,"Plain text",en\r\n'
        'd2,"Second, with comma","Line one\nline two with ""quotes""",fr\r\n'
        "d3,Third,Only three fields\r\n"
        'd4,Fourth,"Straße ✓",de\r\n'
    ).encode()
    items = read(body, "text/csv; charset=utf-8", piece)
    assert docs(items) == [
        ("d1", "Plain text", {"title": "First", "lang": "en"}),
        ("d2", 'Line one\nline two with "quotes"', {"title": "Second, with comma", "lang": "fr"}),
        ("d4", "Straße ✓", {"title": "Fourth", "lang": "de"}),
    ]
    [(line, _, error)] = rejects(items)
    assert line == 5 and "has 3 fields; the header has 4" in error


def test_csv_columns_can_be_renamed_and_a_missing_one_is_refused() -> None:
    body = b"key,body\nk1,hello\n"
    assert docs(read(body, "text/csv", id_field="key", text_field="body")) == [("k1", "hello", {})]
    with pytest.raises(UploadFormatError, match="no text column"):
        read(b"id,content\n1,x\n", "text/csv")


def test_csv_bad_encoding_and_unclosed_quote_fail_their_record() -> None:
    body = b'id,text\na,"caf\xe9"\nb,fine\nc,"never closed\n'
    items = read(body, "text/csv")
    assert docs(items) == [("b", "fine", {})]
    errors = rejects(items)
    assert [line for line, _, _ in errors] == [2, 4]
    assert "UTF-8" in errors[0][2] and "unclosed quote" in errors[1][2]


@pytest.mark.parametrize("piece", [1, 9, 10_000])
def test_json_array_is_read_one_element_at_a_time(piece: int) -> None:
    body = json.dumps(
        [{"id": "a", "text": "one ✓"}, {"id": "b", "text": "two", "metadata": {"k": 1}}, {"id": "c"}],
        ensure_ascii=False,
        indent=2,
    ).encode()
    items = read(body, "application/json", piece)
    assert docs(items) == [("a", "one ✓", {}), ("b", "two", {"k": 1})]
    assert rejects(items) == [(3, "c", 'item 3 has no "text" string')]


def test_a_malformed_json_array_stops_with_a_clear_error() -> None:
    reader = UploadReader("application/json", UploadOptions())
    items = reader.feed(b'[{"id": "a", "text": "ok"}, {"id": "b", "text": }')
    assert docs(items) == [("a", "ok", {})]
    with pytest.raises(UploadFormatError, match="malformed at item 2"):
        reader.close()
    with pytest.raises(UploadFormatError, match="not closed"):
        read(b'[{"id": "a", "text": "ok"}', "application/json")
    assert read(b"[]", "application/json") == []


def test_plain_text_is_one_document_per_file_or_per_line() -> None:
    body = "first line\n\nsecond line ✓\n".encode()
    assert docs(read(body, "text/plain", document_id="notes")) == [("notes", "first line\n\nsecond line ✓\n", {})]
    by_line = read(body, "text/plain", text_mode=TextMode.LINE, document_id="notes.txt")
    assert docs(by_line) == [("notes.txt:1", "first line", {}), ("notes.txt:3", "second line ✓", {})]
    with pytest.raises(UploadFormatError, match="needs an id"):
        UploadReader("text/plain", UploadOptions())
    # Without a name, two files' line 1 were both "line:1": the second replaced the first.
    with pytest.raises(UploadFormatError, match="by line needs \\?document_id"):
        UploadReader("text/plain", UploadOptions(text_mode=TextMode.LINE))


def multipart(files: list[tuple[str, bytes, str]], boundary: str = "XyZ123") -> tuple[bytes, str]:
    parts = [b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="note"\r\n\r\nignored\r\n']
    for name, content, media_type in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("piece", [1, 13, 65_536])
def test_multipart_files_are_parsed_by_their_own_format(piece: int) -> None:
    body, content_type = multipart(
        [
            ("a.jsonl", b'{"id": "j1", "text": "from jsonl"}\n{"id": "j2", "text": "x"', "application/octet-stream"),
            ("b.csv", b"id,text,tag\nc1,from csv,t\n", "text/csv"),
            ("readme.txt", "a whole text file ✓".encode(), "text/plain"),
            ("c.md", b"markdown\r\n--not-a-boundary\r\n", "text/markdown"),
        ]
    )
    items = read(body, content_type, piece)
    assert docs(items) == [
        ("j1", "from jsonl", {}),
        ("c1", "from csv", {"tag": "t"}),
        ("readme.txt", "a whole text file ✓", {}),
        ("c.md", "markdown\r\n--not-a-boundary\r\n", {}),
    ]
    [(line, _, error)] = rejects(items)
    assert line == 2 and error.startswith("a.jsonl: line 2 is not valid JSON")


def test_unknown_formats_and_broken_envelopes_are_refused() -> None:
    with pytest.raises(UploadFormatError, match=r"pass \?format="):
        UploadReader("application/octet-stream", UploadOptions())
    with pytest.raises(UploadFormatError, match="boundary"):
        UploadReader("multipart/form-data", UploadOptions())
    body, content_type = multipart([])
    with pytest.raises(UploadFormatError, match="no file part"):
        read(body, content_type)
    body, content_type = multipart([("data.bin", b"??", "application/octet-stream")])
    with pytest.raises(UploadFormatError, match=r"cannot tell the format of data\.bin"):
        read(body, content_type)


@pytest.mark.parametrize("piece", [1, 7, 65_536])
def test_a_multipart_body_cut_off_before_its_closing_boundary_is_refused(piece: int) -> None:
    body, content_type = multipart(
        [("a.jsonl", b'{"id": "1", "text": "one"}\n{"id": "2", "text": "two"}', "text/plain")]
    )
    # Whole, the last line (held back until its part ends) is a document; cut, the part never ends, and a
    # silent success would lose it.
    assert [d[0] for d in docs(read(body, content_type, piece))] == ["1", "2"]
    cut = body[: body.rindex(b"\r\n--XyZ123--")]
    with pytest.raises(UploadFormatError, match=r"ended inside part 2, without its closing boundary '--XyZ123--'"):
        read(cut, content_type, piece)
    with pytest.raises(UploadFormatError, match="ended before its first part"):
        read(b"", content_type, piece)


def test_part_headers_in_any_bytes_are_read() -> None:
    body, content_type = multipart([("données ✓.txt", "texte ✓".encode(), "text/plain; x=ި")])
    body = body.replace(b'name="note"', b'name="\xd4\xff"')
    assert docs(read(body, content_type)) == [("données ✓.txt", "texte ✓", {})]
