"""Settings overrides for one test: environment variables that ``get_settings()`` sees at once."""

from __future__ import annotations

import pytest

from app.core.config import get_settings


class SettingsEnv:
    """Environment overrides that ``get_settings()`` sees at once; the ``settings_env`` fixture undoes them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch

    def set(self, **overrides: str) -> None:
        """Set each ``NAME=value`` in the environment; the next ``get_settings()`` reads them."""
        for name, value in overrides.items():
            self._monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    def unset(self, *names: str) -> None:
        """Remove each named variable from the environment; the next ``get_settings()`` reads without them."""
        for name in names:
            self._monkeypatch.delenv(name, raising=False)
        get_settings.cache_clear()
