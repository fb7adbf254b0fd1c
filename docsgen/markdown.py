"""Markdown helpers shared by the generated reference pages."""

from __future__ import annotations

import re

_CODE_SPAN = re.compile(r"(`[^`]*`)")


def escape_text(text: str) -> str:
    """Return ``text`` safe to embed in Markdown: angle brackets outside code spans become entities.

    Docstrings say things like ``Bearer <key>``; Markdown would take ``<key>`` for an HTML tag and drop it.
    """
    parts = _CODE_SPAN.split(text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;") for part in parts)


def table_cell(text: str) -> str:
    """Return ``text`` escaped for one cell of a Markdown table (one line, no bare pipes)."""
    return escape_text(" ".join(text.split())).replace("|", "\\|")


def code(value: str) -> str:
    """Return ``value`` as an inline code span, with enough backticks to hold the backticks inside it."""
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"
