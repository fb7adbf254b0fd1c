"""Standard Webhooks signatures: ``whsec_`` secrets and the ``webhook-*`` headers of one attempt.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the signature is
``v1,<base64 HMAC-SHA256>`` keyed with the base64-decoded part of the secret after ``whsec_``. Several
signatures, space-separated, let a receiver accept either the old or the new secret during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32


def new_secret() -> str:
    """Return a fresh random endpoint secret, ``whsec_`` followed by base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """Return the ``v1,<base64>`` signature of one message with one secret."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{message_id}.{timestamp}.{body}".encode()
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(signing_secrets: Sequence[str], message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """Return the Standard Webhooks headers for one attempt, signed with every given secret."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, message_id, timestamp, body) for s in signing_secrets),
    }
