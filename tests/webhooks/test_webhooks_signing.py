"""Our Standard Webhooks signatures verify with the reference `standardwebhooks` package."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.models.webhook import WebhookEndpoint
from app.webhooks.delivery import signing_secrets
from app.webhooks.signing import new_secret, signed_headers


def test_a_signed_event_verifies_and_a_tampered_one_does_not() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = json.dumps({"type": "job.succeeded", "data": {"id": "x"}})
    headers = signed_headers([secret], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("x", "y"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = new_secret(), new_secret()
    body = "{}"
    headers = signed_headers([new, old], "msg_2", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)


def test_the_previous_secret_signs_only_until_its_overlap_ends() -> None:
    now = datetime.now(UTC)
    endpoint = WebhookEndpoint(secret="whsec_new", previous_secret="whsec_old")
    endpoint.previous_secret_expires_at = now + timedelta(hours=1)
    assert signing_secrets(endpoint, now) == ["whsec_new", "whsec_old"]
    endpoint.previous_secret_expires_at = now - timedelta(seconds=1)
    assert signing_secrets(endpoint, now) == ["whsec_new"]
