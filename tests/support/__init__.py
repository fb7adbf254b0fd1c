"""Test helpers: session services and real embedq processes (imported as ``support``, tests/ is no package)."""
