"""The objects of a source: listed once, filtered by format, each with the signature a re-sync compares."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import fsspec
from fsspec.utils import glob_translate

from app.core.config import Settings
from app.core.redaction import without_secrets
from app.core.store_outages import causes, unavailable
from app.sources.http_guard import AddressRefusedError
from app.sources.locations import (
    SourceError,
    SourceForbiddenError,
    SourceLocation,
    SourceUnavailableError,
    allowed_local_path,
)
from app.sources.spec import SourceFormat, format_of_object
from app.sources.url_patterns import UrlPatternError, expand


@dataclass(frozen=True)
class ListedObject:
    """One object to read: its filesystem path, URI, size, format and signature (ETag, size, mtime)."""

    path: str
    uri: str
    size: int
    format: SourceFormat
    etag: str | None
    mtime: str | None

    def signature(self) -> dict[str, Any]:
        """Return what says the object is unchanged since a previous sync."""
        return {"etag": self.etag, "size": self.size, "mtime": self.mtime}


def _telling(exc: BaseException) -> BaseException:
    """Return the error in ``exc``'s chain that says why: fsspec's http client raises FileNotFoundError(url)
    from whatever happened (a refused address, an HTTP 401), which alone says nothing."""
    return next((e for e in causes(exc) if isinstance(e, (AddressRefusedError, aiohttp.ClientResponseError))), exc)


def store_error(location: SourceLocation, exc: BaseException, settings: Settings) -> str:
    """Return what the store said, fit for a tenant: no keys, no endpoint."""
    exc = _telling(exc)
    if isinstance(exc, aiohttp.ClientResponseError):
        detail = f"HTTP {exc.status} {exc.message}"
    else:
        detail = without_secrets(f"{type(exc).__name__}: {exc}", settings)
    return f"{location.uri} cannot be read ({detail})"


def store_failure(
    location: SourceLocation, exc: BaseException, settings: Settings, uri: str | None = None
) -> SourceError | SourceForbiddenError:
    """Return the error to raise for what the store raised: 503 if it did not answer, 403 for an address http(s)
    sources may not reach, else 422 (``uri``: the object)."""
    if isinstance(_telling(exc), AddressRefusedError):
        return SourceForbiddenError(str(_telling(exc)), param="uri")
    message = store_error(location, exc, settings)
    if uri is not None:
        message = message.replace(location.uri, uri)
    return (SourceUnavailableError if unavailable(exc) else SourceError)(message, param="uri")


def list_objects(
    fs: fsspec.AbstractFileSystem, location: SourceLocation, fmt: SourceFormat | None, settings: Settings
) -> list[ListedObject]:
    """Return the source's objects, by path; SourceError (422) if the store fails or holds too many.

    Without a ``fmt``, objects whose extension names no format are left out.
    """
    cap = settings.source_max_listed_keys
    urls = _urls(location, settings) if location.is_http else []
    try:
        if location.is_http:  # the URL's files (its patterns expanded): what a HEAD (else a GET) says of each
            found, complete = _head_all(fs, urls, settings), True
        elif location.scheme == "s3":
            found, complete = _list_s3(fs, location, cap)
        else:
            found = fs.glob(location.path, detail=True) if location.is_glob else _find_local(fs, location)
            complete = True
    except _UrlFailed as failed:  # one of a pattern's files: named in the error
        raise store_failure(location, failed.__cause__ or failed, settings, failed.url) from failed
    except Exception as exc:  # whatever the store raised (botocore, aiohttp, OS): the caller shows it, masked
        raise store_failure(location, exc, settings) from exc
    if not complete:
        raise SourceError(
            f"{location.uri} lists more than {cap} keys (EMBEDQ_SOURCE_MAX_LISTED_KEYS), matching or not: post "
            "narrower prefixes or globs",
            param="uri",
        )
    objects: list[ListedObject] = []
    for path, info in sorted(found.items()):
        if info.get("type") != "file" or path.endswith("/"):
            continue
        if location.scheme == "file" and not allowed_local_path(path, settings):
            continue  # a symlink out of the allowed folders
        object_format = fmt or format_of_object(urlsplit(path).path if location.is_http else path)
        if object_format is None:
            continue
        objects.append(_listed(location, path, info, object_format))
        if len(objects) > settings.source_max_objects:
            raise SourceError(
                f"{location.uri} holds more than {settings.source_max_objects} objects (EMBEDQ_SOURCE_MAX_OBJECTS): "
                "post narrower prefixes or globs",
                param="uri",
            )
    return objects


def _list_s3(fs: Any, location: SourceLocation, cap: int) -> tuple[dict[str, dict[str, Any]], bool]:
    """Return the objects an s3:// source names, and whether the listing ended within ``cap`` keys.

    One object, or the keys under the prefix (a glob's: its base, matched here) in pages of at most 1,000,
    stopping past ``cap``: s3fs's own find reads every key first, so a prefix of millions held a request
    thread for minutes.
    """
    path = location.path.rstrip("/")
    if not location.is_glob and "/" in path and not location.path.endswith("/") and fs.isfile(path):
        return {path: fs.info(path)}, True
    bucket, _, key = (location.base if location.is_glob else path).partition("/")
    prefix = f"{key}/" if key else ""
    matches = re.compile(glob_translate(location.path)).match if location.is_glob else None
    found: dict[str, dict[str, Any]] = {}
    listed, token = 0, None
    while True:
        page = fs.call_s3(
            "list_objects_v2",
            Bucket=bucket,
            Prefix=prefix,
            MaxKeys=min(1000, cap + 1 - listed),
            **({"ContinuationToken": token} if token else {}),
        )
        for item in page.get("Contents", []):
            listed += 1
            name = f"{bucket}/{item['Key']}"
            if matches is None or matches(name):
                found[name] = {
                    "name": name,
                    "type": "file",
                    "size": item.get("Size", 0),
                    "ETag": item.get("ETag"),
                    "LastModified": item.get("LastModified"),
                }
        if listed > cap:
            return found, False
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return found, True


class _UrlFailed(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _urls(location: SourceLocation, settings: Settings) -> list[str]:
    try:
        return expand(location.path, settings.source_max_objects)
    except UrlPatternError as exc:
        raise SourceError(f"{location.uri}: {exc} (EMBEDQ_SOURCE_MAX_OBJECTS)", param="uri") from exc


def _head_all(fs: fsspec.AbstractFileSystem, urls: list[str], settings: Settings) -> dict[str, dict[str, Any]]:
    """Return what the server says of each URL, asked EMBEDQ_SOURCE_PLAN_THREADS at a time."""

    def head(url: str) -> dict[str, Any]:
        try:
            return fs.info(url)
        except Exception as exc:
            raise _UrlFailed(url) from exc

    if len(urls) == 1:
        return {urls[0]: head(urls[0])}
    with ThreadPoolExecutor(max_workers=min(settings.source_plan_threads, len(urls))) as pool:
        return dict(zip(urls, pool.map(head, urls), strict=True))


def _find_local(fs: fsspec.AbstractFileSystem, location: SourceLocation) -> dict[str, dict[str, Any]]:
    path = location.path.rstrip("/")
    if not location.path.endswith("/") and fs.isfile(path):
        return {path: fs.info(path)}
    return fs.find(path, detail=True)


def object_signature(info: dict[str, Any]) -> dict[str, Any]:
    """Return the signature (ETag, size, mtime) of an object from what the filesystem says of it."""
    etag = info.get("ETag") or info.get("etag")
    modified = info.get("LastModified") or info.get("Last-Modified") or info.get("mtime") or info.get("created")
    if isinstance(modified, datetime):
        mtime: str | None = modified.isoformat()
    elif isinstance(modified, (int, float)):
        mtime = repr(float(modified))
    elif isinstance(modified, str):  # an HTTP Last-Modified header
        mtime = modified
    else:
        mtime = None
    return {"etag": str(etag).strip('"') if etag else None, "size": int(info.get("size") or 0), "mtime": mtime}


def same_version(planned: dict[str, Any], current: dict[str, Any]) -> bool:
    """Return whether two signatures name the same version of an object.

    By ETag and size where both have an ETag (S3: a listing and a HEAD give the modification time at different
    precisions), else by size and modification time (a local file).
    """
    if planned.get("etag") and current.get("etag"):
        return (planned["etag"], planned["size"]) == (current["etag"], current["size"])
    return (planned.get("size"), planned.get("mtime")) == (current.get("size"), current.get("mtime"))


def _listed(location: SourceLocation, path: str, info: dict[str, Any], fmt: SourceFormat) -> ListedObject:
    signature = object_signature(info)
    uri_path = os.path.normpath(path) if location.scheme == "file" else path
    return ListedObject(
        path=path,
        uri=location.object_uri(uri_path),
        size=signature["size"],
        format=fmt,
        etag=signature["etag"],
        mtime=signature["mtime"],
    )
