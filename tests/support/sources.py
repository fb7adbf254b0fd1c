"""Helpers of the source tests."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import EmbedqError
from app.models.job import Job
from app.sources.schemas import SourceRequest
from app.sources.service import start_source
from support.principals import ADMIN


def refused(session: Session, settings: Settings, **body) -> EmbedqError:
    """Return the error a source posted to collection "docs" is refused with; fail if a job was made."""
    jobs_before = session.scalar(select(func.count()).select_from(Job))
    with pytest.raises(EmbedqError) as caught:
        start_source(session, "docs", SourceRequest(**body), settings, ADMIN)
    assert session.scalar(select(func.count()).select_from(Job)) == jobs_before, "a refused source made a job"
    return caught.value
