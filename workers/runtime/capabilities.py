"""Which encoder a model gets: the generic ``Encoder``, or one with its family's capability (BGE-M3's heads, a
cross-encoder's classifier)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.catalog.families import detect_family
from app.catalog.resolver import ResolvedModel
from app.catalog.tasks import is_cross_encoder
from workers.runtime.cross_encoder import CrossEncoderModel
from workers.runtime.encoder import Encoder, model_folder
from workers.runtime.m3 import M3Encoder


def load_encoder(model: ResolvedModel, **options: Any) -> Encoder:
    """Return ``model`` loaded by the encoder class its folder needs; ``options`` go to the encoder.

    A hub model is downloaded first, so that its folder, not only its name, decides the class.
    """
    local = replace(model, path=model_folder(model))
    if is_cross_encoder(local.name, local.path):
        return CrossEncoderModel(local, **options)
    family = detect_family(local.name, local.path, local.family)
    encoder_class = M3Encoder if family.hybrid else Encoder
    return encoder_class(local, **options)
