"""Where a source lives: its URI parsed and checked, and the fsspec filesystem that reads it.

``s3://bucket/prefix/`` lists every object under the prefix, ``s3://bucket/corpus/*.parquet`` a glob, and
``file:///path`` the same on the server's disk, only under EMBEDQ_SOURCE_FILE_ROOTS (none by default: a
tenant must never read the server's files). Nothing inside or above the artifact store is a source: it holds
every tenant's files. S3 endpoints and keys come from the settings, by credential set name; an error the store
gives back is shown without them (``app.core.redaction.without_secrets``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import fsspec
from fsspec.implementations.http import HTTPFileSystem
from fsspec.implementations.local import LocalFileSystem
from s3fs import S3FileSystem  # imported with the module: the API and the worker parent load it at start

from app.core.config import Settings, SourceCredentialSet
from app.core.errors import EmbedqError, InvalidRequestError
from app.sources.http_guard import client_factory

GLOB_CHARS = frozenset("*?[")
HTTP_SCHEMES = ("http", "https")


class SourceError(InvalidRequestError):
    """A source embedq cannot read: a bad URI, an unknown credential set, a store that does not answer, ..."""


class SourceUnavailableError(SourceError):
    """A store that did not answer (refused, reset, timed out, 5xx, SlowDown): 503, the request may be sent again."""

    status_code = 503
    code = "source_unavailable"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.headers["Retry-After"] = "30"


class SourceForbiddenError(EmbedqError):
    """A source the server may not read for anyone: outside the allowed folders, an address not public, ..."""

    status_code = 403
    code = "forbidden"


@dataclass(frozen=True)
class SourceLocation:
    """A parsed source URI: its scheme, its filesystem path (``bucket/key`` or ``/abs/path``), and its base."""

    uri: str
    scheme: str
    path: str
    is_glob: bool

    @property
    def is_http(self) -> bool:
        return self.scheme in HTTP_SCHEMES

    @property
    def base(self) -> str:
        """Return the part of the path before any glob character (the folder listed)."""
        if not self.is_glob:
            return self.path.rstrip("/")
        head = self.path[: min(self.path.index(c) for c in GLOB_CHARS if c in self.path)]
        return head.rsplit("/", 1)[0]

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0] if self.scheme == "s3" else ""

    def object_uri(self, path: str) -> str:
        """Return the URI of an object the filesystem listed at ``path`` (an http(s) object's path is its URL)."""
        return path if self.is_http else f"{self.scheme}://{path}"

    def fs_path(self, object_uri: str) -> str:
        """Return the filesystem path of the object at ``object_uri`` (``object_uri``'s inverse)."""
        return object_uri if self.is_http else object_uri[len(f"{self.scheme}://") :]

    def relative(self, path: str) -> str:
        """Return an object's path under the source's base (the id of a plain-text document; a URL's: its name)."""
        if self.is_http:  # under the folder before the URL's first pattern: {a/x.txt,b/x.txt} gives a/x.txt, b/x.txt
            parts = urlsplit(self.path)
            rest = self.path[len(f"{parts.scheme}://{parts.netloc}") :]
            cut = min((i for i in (rest.find("{"), rest.find("[")) if i >= 0), default=len(rest))
            folder = urlsplit(rest[:cut]).path.rsplit("/", 1)[0]
            file_path = urlsplit(path).path
            return file_path[len(folder) + 1 :] if file_path.startswith(folder + "/") else file_path.rsplit("/", 1)[-1]
        base = self.base.rstrip("/") + "/"
        return path[len(base) :] if path.startswith(base) else path.rsplit("/", 1)[-1]


def parse_location(uri: str) -> SourceLocation:
    """Return the location ``uri`` names; SourceError (422) for a scheme or shape embedq does not read."""
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("s3", "file", *HTTP_SCHEMES):
        raise SourceError(
            f"unsupported source URI {uri!r}: use s3://bucket/prefix/, s3://bucket/path/*.parquet, "
            "https://host/path/file.parquet or file:///path",
            param="uri",
        )
    if scheme in HTTP_SCHEMES:
        return _http_location(uri, scheme)
    if scheme == "s3":
        bucket = rest.split("/", 1)[0]
        if not bucket or any(c in bucket for c in GLOB_CHARS):
            raise SourceError(f"source URI {uri!r} names no bucket: s3://bucket/prefix/", param="uri")
        path = rest
    else:
        if not rest.startswith("/"):
            raise SourceError(f"file:// source {uri!r} must be an absolute path: file:///data/corpus/", param="uri")
        path = rest
    if "\x00" in path or any(part == ".." for part in path.split("/")):
        raise SourceError(f"source URI {uri!r} may not contain '..' or NUL", param="uri")
    return SourceLocation(uri=uri, scheme=scheme, path=path, is_glob=any(c in path for c in GLOB_CHARS))


def _http_location(uri: str, scheme: str) -> SourceLocation:
    """An http(s):// source is the files its URL names: one, or its ``{a,b}`` and ``[00-41]`` patterns' (no
    listing, no fsspec glob: "?" is a URL's own; ``app.sources.url_patterns`` expands them when listing)."""
    parts = urlsplit(uri)
    if not parts.hostname:
        raise SourceError(f"source URI {uri!r} names no host: https://host/path/file.jsonl", param="uri")
    if parts.username or parts.password:
        raise SourceError(
            "a source URL may not carry a user or password: the operator names a bearer token in a credential "
            "set (EMBEDQ_SOURCE_CREDENTIALS) and the source names the set",
            param="uri",
        )
    if "\x00" in uri or not parts.path or parts.path.endswith("/"):
        raise SourceError(f"source URI {uri!r} must name one file: https://host/path/file.parquet", param="uri")
    url = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))  # a fragment is never sent
    return SourceLocation(uri=url, scheme=scheme, path=url, is_glob=False)


def allowed_local_path(path: str, settings: Settings) -> bool:
    """Return whether a local path (symlinks resolved) lies inside one of EMBEDQ_SOURCE_FILE_ROOTS."""
    real = os.path.realpath(path)
    for root in settings.source_file_roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
            return True
    return False


def check_allowed(location: SourceLocation, settings: Settings) -> None:
    """Refuse (403) a source inside or above the artifact store, and a file:// source outside the allowed roots."""
    if _overlaps_artifact_store(location, settings):
        raise SourceForbiddenError(
            f"{location.uri} reads the artifact store (EMBEDQ_ARTIFACT_STORE), which keeps every tenant's files "
            "and models: no source may read it; name a prefix or glob outside it",
            param="uri",
        )
    if location.scheme != "file":
        return
    if not settings.source_file_roots:
        raise SourceForbiddenError(
            "file:// sources are turned off on this server (EMBEDQ_SOURCE_FILE_ROOTS is empty): use s3://",
            param="uri",
        )
    if not allowed_local_path(location.base or "/", settings):
        raise SourceForbiddenError(
            f"{location.uri} is outside the folders this server lets sources read: ask the operator, "
            "whose EMBEDQ_SOURCE_FILE_ROOTS names them",
            param="uri",
        )


def _overlaps_artifact_store(location: SourceLocation, settings: Settings) -> bool:
    """Return whether the source's base lies inside the artifact store or holds it (a listing would reach it).

    Compared by bucket and key, whatever the endpoint: a source with no credential set reads with the
    standard AWS chain, which on a fleet's pods is the artifact store's own keys.
    """
    scheme, _, rest = (settings.artifact_store or "").partition("://")
    if scheme.lower() != location.scheme or not rest:
        return False
    if location.scheme == "file":
        store, base = os.path.realpath(rest), os.path.realpath(location.base or "/")
    else:
        store, base = rest.strip("/"), location.base.strip("/")
    return store == base or store.startswith(base.rstrip("/") + "/") or base.startswith(store + "/")


def filesystem(location: SourceLocation, credentials: str | None, settings: Settings) -> fsspec.AbstractFileSystem:
    """Return the filesystem that reads ``location`` with the named credential set (None: the default one).

    One per process and set: fsspec keeps the instance (and clears its cache in a forked child), so the
    API's checks, a plan and every shard a worker reads share one S3 client and its open connections
    instead of paying for a new client (0.1-0.3 s) each.
    """
    if location.scheme == "file":
        return LocalFileSystem()
    if location.is_http:
        token = None
        if credentials is not None:
            found = _credential_set(credentials, settings)
            if found.bearer_token is None:
                raise SourceError(
                    f"credential set {credentials!r} has no bearer_token, the one credential an http(s) source sends",
                    param="credentials",
                )
            token = found.bearer_token.get_secret_value()
        return _http_filesystem(token, tuple(settings.source_http_allowed_cidrs), settings.source_timeout_s)
    endpoint, region, key, secret = settings.source_s3_endpoint_url, settings.source_s3_region, None, None
    if credentials is not None:
        found = _credential_set(credentials, settings)
        endpoint, region = found.endpoint_url, found.region
        key = found.access_key_id.get_secret_value() if found.access_key_id else None
        secret = found.secret_access_key.get_secret_value() if found.secret_access_key else None
    client_kwargs: dict[str, Any] = {"region_name": region} if region else {}
    return S3FileSystem(
        key=key,
        secret=secret,
        endpoint_url=endpoint,
        client_kwargs=client_kwargs,
        config_kwargs={
            "connect_timeout": settings.source_timeout_s,
            "read_timeout": settings.source_timeout_s,
            "retries": {"max_attempts": 3, "mode": "standard"},
        },
        use_listings_cache=False,  # a re-sync must see what changed since the last listing
    )


def _credential_set(name: str, settings: Settings) -> SourceCredentialSet:
    found = settings.source_credentials.get(name)
    if found is None:
        known = ", ".join(sorted(settings.source_credentials)) or "none are configured"
        raise SourceError(
            f"no credential set named {name!r} (known: {known}): the operator names them in EMBEDQ_SOURCE_CREDENTIALS",
            param="credentials",
        )
    return found


@cache
def _http_filesystem(token: str | None, allowed_cidrs: tuple[str, ...], timeout_s: float) -> HTTPFileSystem:
    """Return the http(s) sources' client for one token: one per process, each connection checked (``http_guard``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    return HTTPFileSystem(
        get_client=client_factory(allowed_cidrs),
        client_kwargs={"headers": headers, "timeout": timeout},
        skip_instance_cache=True,
    )


# A forked worker child must not reuse its parent's client: its session lives on the parent's event loop.
os.register_at_fork(after_in_child=_http_filesystem.cache_clear)
