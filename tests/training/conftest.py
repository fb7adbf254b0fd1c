"""Fixtures of the training service tests: settings that evaluate and report on tiny data, a tiny base model."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest
from support.tiny_models import make_tiny_bert

from app.core.config import Settings, get_settings


@pytest.fixture
def settings(clean_state) -> Settings:
    return get_settings().model_copy(update={"training_eval_min_pairs": 4, "training_progress_every_steps": 1})


@pytest.fixture
def tiny_base(settings: Settings) -> Iterator[str]:
    """Return the name of a tiny random BERT in the models dir, removed afterwards."""
    assert settings.models_dir is not None
    name = f"tiny-base-{uuid.uuid4().hex[:6]}"
    folder = make_tiny_bert(settings.models_dir / name)
    yield name
    shutil.rmtree(folder, ignore_errors=True)
