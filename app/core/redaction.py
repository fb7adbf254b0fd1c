"""Server paths out of text a tenant reads: an exception's message may name the state directory."""

from __future__ import annotations

from pathlib import Path

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
