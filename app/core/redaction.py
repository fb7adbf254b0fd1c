"""Server paths and secrets out of text a tenant reads: an exception's message may name the state directory,
and an object store's error its endpoint or key id."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from app.core.config import Settings


def without_server_paths(text: str, settings: Settings) -> str:
    """Return ``text`` with the state, models and ONNX directories replaced by the settings that name them."""
    named = [
        (settings.models_dir, "$EMBEDQ_MODELS_DIR"),
        (settings.onnx_dir, "$EMBEDQ_ONNX_DIR"),
        (settings.state_dir, "$EMBEDQ_STATE_DIR"),
    ]
    # Longest first: the models directory usually lies inside the state directory.
    for folder, name in sorted(named, key=lambda pair: -len(str(pair[0] or ""))):
        if isinstance(folder, Path) and str(folder) not in ("", "."):
            text = text.replace(str(folder.resolve()), name).replace(str(folder), name)
    return text


# The standard AWS variables a source without a credential set is read with (botocore reads them itself).
_AWS_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def without_secrets(text: str, settings: Settings) -> str:
    """Return ``text`` with every source credential (keys and endpoints, named sets and the default) masked."""
    masked: list[tuple[str, str]] = []
    for name, found in settings.source_credentials.items():
        for secret in (found.access_key_id, found.secret_access_key, found.bearer_token):
            if secret is not None:
                masked.append((secret.get_secret_value(), "***"))
        if found.endpoint_url:
            masked += _endpoint(found.endpoint_url, f"<endpoint of credential set {name}>")
    if settings.source_s3_endpoint_url:
        masked += _endpoint(settings.source_s3_endpoint_url, "$EMBEDQ_SOURCE_S3_ENDPOINT_URL")
    masked += [(os.environ[v], "***") for v in _AWS_SECRET_VARIABLES if os.environ.get(v)]
    # Longest first, so an endpoint is masked whole before a shorter value inside it.
    for value, name in sorted(masked, key=lambda pair: -len(pair[0])):
        if len(value) >= 4:
            text = text.replace(value, name)
    return text


def _endpoint(url: str, name: str) -> list[tuple[str, str]]:
    """Return the masks of an endpoint: its URL, and its host:port alone (as connection errors show it)."""
    return [(url.rstrip("/"), name), (urlsplit(url).netloc, name)]
